"""`cloud_kserve.guard`, the check in front of KServe's decoder, in the edge's environment (it imports
no KServe). Property tests like the edge decoder's (`tests/test_wire.py`): any body either passes
as a request KServe can decode, or is refused with a one-line reason; valid requests from the
edge's wire and from tritonclient pass untouched. The live predictor is in tests/test_kserve.py."""

import asyncio
import json

import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_kserve.guard import MAX_BODY_BYTES, OipGuard, check_request
from core import wire
from tests.test_wire import JSON_VALUES

NUMPY = {"FP32": np.float32, "FP16": np.float16, "INT8": np.int8}


def kserve_would_decode(body: bytes, header_length: str | None) -> None:
    """What KServe's own decoder does with a request the guard let through: every tensor's bytes
    (or data) reshaped to its declared shape; raises where KServe would answer 500."""
    if header_length is None:
        spec = json.loads(body)["inputs"][0]
        with np.errstate(over="raise"):  # a value the datatype cannot hold is an error, not inf
            np.asarray(spec["data"], dtype=NUMPY[spec["datatype"]]).reshape(spec["shape"])
        return
    n = int(header_length)
    offset = n
    for spec in json.loads(body[:n])["inputs"]:
        size = spec.get("parameters", {}).get("binary_data_size")
        raw = body[offset : offset + size]
        offset += size
        np.frombuffer(raw, dtype=NUMPY[spec["datatype"]]).reshape(spec["shape"])
    assert offset == len(body)


def assert_clean(body: bytes, header_length) -> str | None:
    reason = check_request(body, header_length)
    if reason is None:
        kserve_would_decode(body, header_length)
    else:
        assert isinstance(reason, str) and reason and "\n" not in reason and len(reason) <= 200
    return reason


def valid_body(shape=(2, 160, 2, 2), compression="fp32", seed=0) -> tuple[bytes, str]:
    x = np.random.default_rng(seed).normal(0, 2, shape).astype(np.float32)
    body, n = wire.encode(x, name="stage2", compression=compression)
    return body, str(n)


# -- properties ------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.one_of(st.none(), st.integers(-10, 700).map(str), st.text(max_size=8)))
def test_any_bytes_pass_cleanly_or_get_a_reason(body, length):
    assert_clean(body, length)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["name", "shape", "datatype", "parameters", "data"]), JSON_VALUES),
    st.dictionaries(st.sampled_from(["id", "outputs", "parameters", "extra"]), JSON_VALUES, max_size=2),
)
def test_any_json_request_passes_cleanly_or_gets_a_reason(spec, fields):
    assert_clean(json.dumps({"inputs": [spec], **fields}).encode(), None)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=4),
    st.sampled_from(["fp32", "fp16", "int8"]),
    st.integers(0, 2**31 - 1),
    st.integers(0, 2000),
    st.binary(min_size=1, max_size=8),
    st.sampled_from(["overwrite", "insert", "truncate", "length+1", "length-1"]),
)
def test_mutated_valid_binary_bodies_pass_cleanly_or_get_a_reason(shape, compression, seed, pos, data, how):
    body, n = valid_body(tuple(shape), compression, seed)
    pos = min(pos, len(body))
    body = {
        "overwrite": body[:pos] + data + body[pos + len(data) :],
        "insert": body[:pos] + data + body[pos:],
        "truncate": body[:pos],
        "length+1": body,
        "length-1": body,
    }[how]
    n = {"length+1": str(int(n) + 1), "length-1": str(int(n) - 1)}.get(how, n)
    assert_clean(body, n)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=4),
    st.sampled_from(["FP32", "FP16"]),
    st.booleans(),
    st.booleans(),
)
def test_tritonclient_requests_pass(shape, datatype, binary, binary_outputs):
    x = np.ones(shape, dtype=NUMPY[datatype])
    tensor = triton.InferInput("stage2", list(shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput(name, binary_data=binary_outputs) for name in ("class", "confidence")
    ]
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [tensor], outputs=outputs, request_id="r1"
    )
    assert assert_clean(body, None if json_size is None else str(json_size)) is None


@pytest.mark.parametrize("compression", ["fp32", "fp16", "int8"])
def test_the_edge_wire_passes(compression):
    assert check_request(*valid_body(compression=compression)) is None
    # what the edge handler really sends: request parameters with its branch list
    x = np.zeros((1, 160, 2, 2), np.float32)
    params = {"exited": False, "branches": [[0.1, 3], [0.2, 4]], "expert": "pristine", "run_id": "r"}
    body, n = wire.encode(x, name="stage2", compression=compression, parameters=params)
    assert check_request(body, str(n)) is None


# -- the failures KServe answered with a 500 (issue 27) ---------------------------------------------
def with_shape(shape, size=None) -> tuple[bytes, str]:
    body, n = valid_body((1, 160, 2, 2))
    header = json.loads(body[: int(n)])
    header["inputs"][0]["shape"] = shape
    if size is not None:
        header["inputs"][0]["parameters"]["binary_data_size"] = size
    head = json.dumps(header).encode()
    return head + body[int(n) :], str(len(head))


MALFORMED = {
    "zero dimension": (with_shape([0, 160, 2, 2]), "shape"),
    "negative dimension": (with_shape([-1, 160, 2, 2]), "shape"),
    "element count not the bytes": (with_shape([2, 160, 2, 2], 5120), "tensor bytes"),
    "body shorter than the header says": (
        (valid_body((1, 160, 2, 2))[0][:-100], valid_body()[1]),
        "tensor bytes",
    ),
    "non-integer header length": ((valid_body()[0], "12.5"), "not an integer"),
    "a million by a million": (with_shape([10**6, 10**6], 2560), "exceeds"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_what_kserve_answered_with_500_gets_a_reason(case):
    (body, n), reason = MALFORMED[case]
    assert reason in check_request(body, n)


@pytest.mark.parametrize(
    "request_, reason",
    [
        ({"inputs": [{"name": "s", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}, "needs 4"),
        ({"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}, "datatype"),
        ({"inputs": [{"name": "s", "shape": [1], "datatype": "FP32", "data": [True]}]}, "finite numbers"),
        ({"inputs": [{"name": "s", "shape": [1], "datatype": "FP16", "data": [1e300]}]}, "finite numbers"),
        ({"inputs": [{"name": "s", "shape": [2], "datatype": "INT8", "data": [1, 1000]}]}, "-128..127"),
        ({"inputs": [{"name": "s", "shape": [1], "datatype": "INT8", "data": [1.5]}]}, "-128..127"),
        (
            {"inputs": [{"name": "s", "shape": [1], "datatype": "FP32", "data": [1]}], "outputs": "x"},
            "outputs",
        ),
        ({"inputs": []}, "exactly one"),
        ({"x": 1}, "unknown request field"),
        (
            {
                "inputs": [{"name": "s", "shape": [1], "datatype": "FP32", "data": [1]}],
                "parameters": {"a": None},
            },
            "booleans",
        ),
        (
            {
                "inputs": [
                    {"name": "s", "shape": [1], "datatype": "FP32", "data": [1], "parameters": {"a": [1]}}
                ]
            },
            "booleans",
        ),
        ([1, 2], "JSON object"),
    ],
)
def test_json_requests_of_the_wrong_structure_get_a_reason(request_, reason):
    assert reason in check_request(json.dumps(request_).encode(), None)


def test_nested_json_data_counts_every_number():
    ok = {"inputs": [{"name": "s", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]}]}
    assert check_request(json.dumps(ok).encode(), None) is None


# -- the middleware ---------------------------------------------------------------------------------
class Downstream:
    """The app behind the guard: records what it was handed and answers 200."""

    def __init__(self):
        self.calls = []

    async def __call__(self, scope, receive, send):
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.calls.append((scope["path"], body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def serve(path, body_chunks, headers, *, method="POST", guard_limit=MAX_BODY_BYTES, disconnect=False):
    app = Downstream()
    guard = OipGuard(app, max_body_bytes=guard_limit)
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(body_chunks) - 1}
        for i, c in enumerate(body_chunks)
    ]
    if disconnect:
        messages = [
            {"type": "http.request", "body": body_chunks[0], "more_body": True},
            {"type": "http.disconnect"},
        ]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(guard(scope, receive, send))
    status = sent[0]["status"] if sent else None
    return status, b"".join(m.get("body", b"") for m in sent[1:]), app.calls


def test_a_valid_request_reaches_kserve_byte_for_byte_even_in_pieces():
    body, n = valid_body()
    chunks = [body[:7], body[7:100], body[100:]]
    status, _, calls = serve("/v2/models/cloud_pristine/infer", chunks, {wire.HEADER_LENGTH: n})
    assert status == 200 and calls == [("/v2/models/cloud_pristine/infer", body)]
    status, _, calls = serve("/v2/models/m/versions/1/infer", [body], {wire.HEADER_LENGTH: n})
    assert status == 200 and calls[0][1] == body


def test_a_malformed_request_is_answered_400_and_never_reaches_kserve():
    (body, n), _ = MALFORMED["zero dimension"]
    status, answer, calls = serve("/v2/models/cloud_pristine/infer", [body], {wire.HEADER_LENGTH: n})
    assert status == 400 and calls == []
    assert "shape" in json.loads(answer)["error"] and b"\n" not in answer


def test_too_large_is_413_before_reading_and_while_reading():
    body, n = valid_body()
    status, answer, calls = serve(
        "/v2/models/m/infer", [body], {wire.HEADER_LENGTH: n, "Content-Length": "999999"}, guard_limit=1000
    )
    assert status == 413 and calls == [] and "exceeds" in json.loads(answer)["error"]
    status, _, calls = serve(
        "/v2/models/m/infer", [body[:600], body[600:]], {wire.HEADER_LENGTH: n}, guard_limit=1000
    )
    assert status == 413 and calls == []


def test_other_routes_and_methods_pass_untouched_and_a_gone_client_gets_nothing():
    status, _, calls = serve("/v2/health/ready", [b"anything"], {}, method="GET")
    assert status == 200 and calls == [("/v2/health/ready", b"anything")]
    status, _, calls = serve("/v2/models/m/infer", [b"{"], {}, disconnect=True)
    assert status is None and calls == []
