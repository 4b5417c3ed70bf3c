"""The cloud segments on KServe's ModelServer (`python -m cloud_kserve`), a real process on loopback.

It runs from `.venv-kserve` (made by `make test`), the edge's environment stays free of KServe. A
request built by `tritonclient`'s own HTTP request generator (binary tensor extension) must get the
class the reference runtime gives for the same tensor; a malformed one a 4xx with a one-line reason
(`cloud_kserve.guard`), never a 5xx.
"""

import json
import random
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.lib.live_parts import KSERVE_PYTHON, wait_until_ready
from benchmarks.reliability.fuzz import fuzz_cloud_case, fuzz_oip_json_case
from core import wire
from core.manifest import Manifest
from export.archive import extract
from handlers.runtime import CloudExpert
from handlers.service import MANIFEST_NAME
from tests.test_kserve_guard import MALFORMED

ROOT = Path(__file__).resolve().parent.parent
MODEL = "cloud_gaussian_noise"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture(scope="module")
def predictor(model_store, tmp_path_factory):
    if not KSERVE_PYTHON.is_file():
        pytest.fail(f"{KSERVE_PYTHON} missing: `make test` (or `make kserve`) creates it")
    port = free_port()
    log = (tmp_path_factory.mktemp("kserve") / "kserve.log").open("w")
    proc = subprocess.Popen(
        [str(KSERVE_PYTHON), "-m", "cloud_kserve", "--model-store", str(model_store), "--port", str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_ready(f"{base}/v2/health/ready", proc=proc, timeout=90)
        except RuntimeError as exc:
            pytest.fail(f"{exc}; see {log.name}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def reference(model_store, tmp_path_factory):
    folder = extract(model_store / f"{MODEL}.mar", tmp_path_factory.mktemp("ref") / MODEL)
    manifest = Manifest.load(folder / MANIFEST_NAME)
    return manifest, CloudExpert(manifest, folder)


def split(manifest: Manifest, n: int = 3) -> np.ndarray:
    return np.random.default_rng(7).normal(size=(n, *manifest.input.shape[1:])).astype(np.float32)


def outputs(body: bytes) -> dict:
    answer = json.loads(body)
    return {o["name"]: o["data"] for o in answer["outputs"]} | {"parameters": answer["parameters"]}


@pytest.mark.parametrize("datatype", ["FP32", "FP16"])
def test_tritonclient_binary_request_gets_the_reference_class(predictor, reference, datatype):
    manifest, expert = reference
    x = split(manifest)
    sent = x.astype(np.float16) if datatype == "FP16" else x
    tensor = triton.InferInput(manifest.input.name, list(x.shape), datatype)
    tensor.set_data_from_numpy(sent, binary_data=True)
    body, json_size = triton.InferenceServerClient.generate_request_body([tensor])
    status, _, answer = call(
        f"{predictor}/v2/models/{MODEL}/infer",
        body,
        {wire.HEADER_LENGTH: str(json_size), "Content-Type": "application/octet-stream"},
    )
    assert status == 200, answer
    got = outputs(answer)
    _, ref_class = expert.run_batch(sent.astype(np.float32))
    assert got["class"] == [int(c) for c in ref_class]
    assert got["parameters"]["run_id"] == manifest.run_id and got["parameters"]["exit"] == 3


def test_the_edge_wire_int8_and_json_requests(predictor, reference):
    manifest, expert = reference
    x = split(manifest, 2)
    body, n = wire.encode(x, name=manifest.input.name, compression="int8")
    status, _, answer = call(f"{predictor}/v2/models/{MODEL}/infer", body, {wire.HEADER_LENGTH: str(n)})
    assert status == 200, answer
    ref = wire.decode(body, n).array  # what the cloud sees after de-quantisation
    assert outputs(answer)["class"] == [int(c) for c in expert.run_batch(ref)[1]]
    plain = {
        "inputs": [
            {
                "name": manifest.input.name,
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    status, _, answer = call(
        f"{predictor}/v2/models/{MODEL}/infer",
        json.dumps(plain).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 200 and outputs(answer)["class"] == [int(c) for c in expert.run_batch(x)[1]]


def test_metadata_health_and_metrics(predictor, reference):
    manifest, _ = reference
    status, _, body = call(f"{predictor}/v2/models/{MODEL}")
    meta = json.loads(body)
    assert status == 200 and meta["inputs"][0]["name"] == manifest.input.name
    assert meta["inputs"][0]["shape"] == [-1, *manifest.input.shape[1:]]
    assert {o["name"] for o in meta["outputs"]} == {"class", "confidence"}
    assert call(f"{predictor}/v2/health/live")[0] == 200
    assert call(f"{predictor}/v2/health/ready")[0] == 200
    assert call(f"{predictor}/v2/models/{MODEL}/ready")[0] == 200
    status, _, text = call(f"{predictor}/metrics")
    assert status == 200 and b"# TYPE" in text


def test_bad_requests_get_a_4xx_and_the_server_goes_on(predictor, reference):
    manifest, _ = reference
    url = f"{predictor}/v2/models/{MODEL}/infer"
    wrong, n = wire.encode(np.zeros((1, 3, 2, 2)), name=manifest.input.name)
    cases = [
        (wrong, {wire.HEADER_LENGTH: str(n)}),  # wrong shape
        (b"\x00" * 40, {wire.HEADER_LENGTH: "10"}),  # not JSON
        (json.dumps({"inputs": []}).encode(), {"Content-Type": "application/json"}),
    ]
    for body, headers in cases:
        status, _, answer = call(url, body, headers)
        assert 400 <= status < 500, (status, answer)
    assert call(f"{predictor}/v2/models/no_such_model/infer", wrong, {wire.HEADER_LENGTH: str(n)})[0] == 404
    assert call(f"{predictor}/v2/health/ready")[0] == 200


@pytest.mark.parametrize("case", list(MALFORMED))
def test_what_kserve_answered_with_500_is_a_400_with_a_one_line_reason(predictor, case):
    (body, n), reason = MALFORMED[case]
    status, headers, answer = call(f"{predictor}/v2/models/{MODEL}/infer", body, {wire.HEADER_LENGTH: n})
    assert status == 400 and headers["content-type"] == "application/json", (status, answer)
    assert reason in json.loads(answer)["error"] and b"\n" not in answer


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**31 - 1))
def test_fuzzed_tensors_get_a_4xx_or_an_answer_never_a_5xx(predictor, seed):
    """The reliability benchmark's cloud-tensor fuzz (`benchmarks.reliability.fuzz`), a case per seed."""
    body, n = fuzz_cloud_case(random.Random(seed), (160, 2, 2))
    status, _, answer = call(f"{predictor}/v2/models/{MODEL}/infer", body, {wire.HEADER_LENGTH: n})
    assert status == 200 or (400 <= status < 500 and "error" in json.loads(answer)), (status, answer)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**31 - 1))
def test_fuzzed_json_requests_get_a_400_with_a_reason_or_an_answer(predictor, seed):
    """The fuzz's malformed JSON requests: KServe's schema would answer some with a 422 and a
    multi-line detail; the guard answers a one-line reason first."""
    body = fuzz_oip_json_case(random.Random(seed), (160, 2, 2))
    status, _, answer = call(
        f"{predictor}/v2/models/{MODEL}/infer", body, {"Content-Type": "application/json"}
    )
    assert status == 200 or (status == 400 and "error" in json.loads(answer)), (status, answer)
