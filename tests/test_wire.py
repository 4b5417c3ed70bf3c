"""The edge -> cloud wire codec: exact round trips, bounded compression error, hostile bodies."""

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import wire


def split_tensor(seed=0, shape=(2, 160, 2, 2)):
    return np.random.default_rng(seed).normal(0, 3, shape).astype(np.float32)


def test_fp32_round_trip_is_exact_and_carries_parameters():
    x = split_tensor()
    body, n = wire.encode(x, name="stage2", parameters={"expert": "gaussian_blur", "exited": False})
    msg = wire.decode(body, str(n))
    assert msg.name == "stage2" and msg.datatype == "FP32"
    assert np.array_equal(msg.array, x)
    assert msg.parameters == {"expert": "gaussian_blur", "exited": False}
    header = json.loads(body[:n])
    assert header["inputs"][0]["parameters"]["binary_data_size"] == x.nbytes == len(body) - n


def test_fp16_and_int8_shrink_the_body_with_bounded_error():
    x = split_tensor(1)
    sizes = {}
    for c in ("fp32", "fp16", "int8"):
        body, n = wire.encode(x, name="stage2", compression=c)
        sizes[c] = len(body) - n
        y = wire.decode(body, n).array
        assert y.dtype == np.float32 and y.shape == x.shape
        if c == "fp16":
            assert np.abs(y - x).max() <= 1e-3 * np.abs(x).max() + 1e-3
        if c == "int8":
            scale = json.loads(body[:n])["inputs"][0]["parameters"]["scale"]
            assert np.abs(y - x).max() <= scale / 2 + 1e-6
    assert sizes["fp16"] * 2 == sizes["fp32"] == sizes["int8"] * 4


def test_int8_keeps_zero_exact_and_handles_constant_tensors():
    x = np.zeros((1, 4), np.float32)
    body, n = wire.encode(x, name="t", compression="int8")
    assert np.array_equal(wire.decode(body, n).array, x)
    x = np.array([[0.0, 1.0, 6.0]], np.float32)
    body, n = wire.encode(x, name="t", compression="int8")
    assert wire.decode(body, n).array[0, 0] == 0.0


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda h, raw: (h, raw[:-1]), "tensor bytes"),
        (
            lambda h, raw: ({**h, "inputs": [{**h["inputs"][0], "shape": [2, 160, 2, 3]}]}, raw),
            "binary_data_size",
        ),
        (lambda h, raw: ({**h, "inputs": [{**h["inputs"][0], "datatype": "FP64"}]}, raw), "datatype"),
        (lambda h, raw: ({**h, "inputs": [{**h["inputs"][0], "datatype": {"a": 1}}]}, raw), "datatype"),
        (lambda h, raw: ({**h, "inputs": [{**h["inputs"][0], "datatype": ["FP32"]}]}, raw), "datatype"),
        (lambda h, raw: ({**h, "inputs": [{**h["inputs"][0], "shape": [2, -160, 2, 2]}]}, raw), "shape"),
        (lambda h, raw: ({**h, "inputs": []}, raw), "exactly one"),
        (lambda h, raw: ({"outputs": h["inputs"]}, raw), "'inputs'"),
        (lambda h, raw: (h, np.full(len(raw) // 4, np.nan, np.float32).tobytes()), "NaN"),
    ],
)
def test_lying_headers_are_refused_with_a_reason(mutate, reason):
    x = split_tensor()
    body, n = wire.encode(x, name="stage2")
    header, raw = mutate(json.loads(body[:n]), body[n:])
    head = json.dumps(header).encode()
    with pytest.raises(wire.WireError, match=reason):
        wire.decode(head + raw, len(head))


@pytest.mark.parametrize("length", [None, "abc", "0", "-5", "999999", "1"])
def test_bad_header_lengths(length):
    body, _ = wire.encode(split_tensor(), name="stage2")
    with pytest.raises(wire.WireError):
        wire.decode(body, length)


def test_int8_parameters_are_checked_and_huge_shapes_refused_before_allocation():
    body, n = wire.encode(split_tensor(), name="stage2", compression="int8")
    header = json.loads(body[:n])
    header["inputs"][0]["parameters"]["scale"] = -1
    head = json.dumps(header).encode()
    with pytest.raises(wire.WireError, match="scale"):
        wire.decode(head + body[n:], len(head))
    head = json.dumps({"inputs": [{"name": "x", "shape": [10**6, 10**6], "datatype": "FP32"}]}).encode()
    with pytest.raises(wire.WireError, match="exceeds"):
        wire.decode(head + b"\0" * 16, len(head))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.one_of(st.none(), st.integers(-10, 700), st.text(max_size=8)))
def test_decoder_never_fails_with_anything_but_wire_error(body, length):
    try:
        msg = wire.decode(body, length)
    except wire.WireError:
        return
    assert msg.array.dtype == np.float32 and np.isfinite(msg.array).all()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**7) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["name", "shape", "datatype", "parameters"]), JSON_VALUES),
    st.binary(max_size=64),
)
def test_any_json_in_the_tensor_spec_fails_cleanly(spec, raw):
    head = json.dumps({"inputs": [spec]}).encode()
    try:
        msg = wire.decode(head + raw, len(head))
    except wire.WireError:
        return
    assert np.isfinite(msg.array).all()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=4),
    st.sampled_from(["fp32", "fp16", "int8"]),
    st.integers(0, 2**31 - 1),
    st.integers(0, 2000),
    st.integers(0, 255),
)
def test_mutated_valid_bodies_decode_or_fail_cleanly(shape, compression, seed, pos, value):
    x = np.random.default_rng(seed).normal(0, 2, shape).astype(np.float32)
    body, n = wire.encode(x, name="stage2", compression=compression)
    mutated = bytearray(body)
    mutated[pos % len(mutated)] = value
    try:
        msg = wire.decode(bytes(mutated), n)
    except wire.WireError:
        return
    assert msg.array.shape == tuple(msg.array.shape) and np.isfinite(msg.array).all()


# -- one focused test per check of the decoder: a body breaking exactly that check, and its reason --
X = np.arange(6, dtype=np.float32).reshape(2, 3)


class _Drop:
    """A spec value meaning "leave this key out"; its fixed repr keeps the test ids the same in
    every process (mutmut's workers select tests by id)."""

    def __repr__(self) -> str:
        return "DROP"


DROP = _Drop()
INT8 = {"datatype": "INT8", "parameters": {"binary_data_size": 6, "scale": 0.5, "zero_point": 0}}


def framed(*, raw: bytes | None = None, top: dict | None = None, **spec) -> tuple[bytes, int]:
    """A well-formed FP32 (2, 3) message, with the tensor spec's keys and the header's top-level
    keys replaced as given (DROP removes one); `raw` replaces the tensor bytes."""
    tensor = {"name": "stage2", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}}
    tensor = {k: v for k, v in {**tensor, **spec}.items() if v is not DROP}
    head = json.dumps({"inputs": [tensor], **(top or {})}).encode()  # Infinity/NaN allowed on purpose
    if raw is None:
        raw = bytes(6) if tensor.get("datatype") == "INT8" else X.tobytes()
    return head + raw, len(head)


def int8(**params) -> dict:
    return {**INT8, "parameters": {**INT8["parameters"], **params}}


def padded_to(header_bytes: int) -> tuple[bytes, int]:
    """A valid message whose JSON header is exactly `header_bytes` long (request parameters pad it)."""
    _, n = framed(top={"parameters": {"pad": ""}})
    body, n = framed(top={"parameters": {"pad": "a" * (header_bytes - n)}})
    assert n == header_bytes
    return body, n


def refused(body: bytes, length, fragment: str, **kwargs) -> None:
    with pytest.raises(wire.WireError, match=re.escape(fragment)):
        wire.decode(body, length, **kwargs)


def test_the_framing_helper_makes_valid_messages():
    """The baseline each focused test breaks in one place decodes (so a refusal is that place's)."""
    body, n = framed()
    msg = wire.decode(body, n)
    assert np.array_equal(msg.array, X) and msg.name == "stage2" and msg.parameters == {}
    body, n = framed(**INT8)
    assert np.array_equal(wire.decode(body, n).array, np.zeros((2, 3), np.float32))


def test_empty_body():
    refused(b"", 5, "empty body")


def test_missing_header_length():
    refused(framed()[0], None, "missing Inference-Header-Content-Length header")


@pytest.mark.parametrize("length", ["12a", "1.5", "", [3]])
def test_header_length_not_an_integer(length):
    refused(framed()[0], length, "Inference-Header-Content-Length is not an integer")


@pytest.mark.parametrize("length", [0, -3, "-1"])
def test_header_length_below_one(length):
    body, _ = framed()
    refused(body, length, f"Inference-Header-Content-Length {int(length)} outside 1..{len(body)}")


def test_header_length_past_the_body():
    body, _ = framed()
    refused(body, len(body) + 1, f"{len(body) + 1} outside 1..{len(body)}")


def test_header_length_over_the_cap_even_when_the_body_holds_it():
    cap = wire.MAX_HEADER_BYTES
    body, n = padded_to(cap + 1)
    assert len(body) > n
    refused(body, n, f"{cap + 1} outside 1..{cap}")
    body, n = padded_to(cap)  # exactly at the cap: accepted
    assert np.array_equal(wire.decode(body, n).array, X)


@pytest.mark.parametrize("head", [b"\xff\xfe{}", b"{nope", b'{"inputs": [}'])
def test_header_not_utf8_json(head):
    refused(head + X.tobytes(), len(head), "the inference header is not JSON")


@pytest.mark.parametrize(
    "header",
    [[], "inputs", 7, None, {"outputs": []}, {"inputs": {"name": "stage2"}}, {"inputs": "stage2"}],
    ids=["list", "string", "number", "null", "no-inputs", "inputs-object", "inputs-string"],
)
def test_header_needs_an_object_with_an_inputs_list(header):
    head = json.dumps(header).encode()
    refused(head + X.tobytes(), len(head), "the inference header needs an 'inputs' list")


@pytest.mark.parametrize("inputs", [[], "two", ["stage2"], [None]], ids=["none", "two", "string", "null"])
def test_exactly_one_input_object(inputs):
    spec = json.loads(framed()[0][: framed()[1]])["inputs"][0]
    inputs = [spec, spec] if inputs == "two" else inputs
    head = json.dumps({"inputs": inputs}).encode()
    refused(head + X.tobytes(), len(head), "exactly one input tensor is expected")


@pytest.mark.parametrize("name", [DROP, 7, "", "n" * 65, ["stage2"]])
def test_input_name_must_be_a_short_string(name):
    refused(*framed(name=name), "input 'name' must be a short string")


def test_a_64_character_name_is_accepted():
    assert wire.decode(*framed(name="n" * 64)).name == "n" * 64


@pytest.mark.parametrize("datatype", [DROP, "FP64", "fp32", "BF16", ["FP32"], {"a": 1}, 1])
def test_datatype_must_be_known(datatype):
    refused(*framed(datatype=datatype), "not supported (FP32, FP16, INT8)")


@pytest.mark.parametrize(
    "shape",
    [DROP, "2x3", {"0": 2}, [], [1] * 9, [2, 3.0], [2, True], [2, "3"], [2, 0], [2, -3], [2, None]],
    ids=["absent", "string", "object", "rank0", "rank9", "float", "bool", "str", "zero", "negative", "null"],
)
def test_shape_must_be_a_short_list_of_positive_integers(shape):
    refused(*framed(shape=shape), f"shape must be a list of 1..{wire.MAX_RANK} positive integers")


def test_rank_at_the_limit_is_accepted():
    shape = [1] * (wire.MAX_RANK - 2) + [2, 3]
    assert wire.decode(*framed(shape=shape)).array.shape == tuple(shape)


@pytest.mark.parametrize(
    "where",
    [{"parameters": []}, {"parameters": "x"}, {"top": {"parameters": [1]}}, {"top": {"parameters": 3}}],
    ids=["tensor-list", "tensor-string", "request-list", "request-number"],
)
def test_parameters_must_be_objects(where):
    refused(*framed(**where), "'parameters' must be objects")


def test_element_count_limit():
    body, n = framed()
    refused(body, n, "tensor of 6 elements exceeds the limit of 5", max_elements=5)
    assert wire.decode(body, n, max_elements=6).array.shape == (2, 3)


@pytest.mark.parametrize("declared", [20, 48, 24.0, "24", True, None, [24]])
def test_binary_data_size_must_match(declared):
    refused(*framed(parameters={"binary_data_size": declared}), "does not match shape and datatype (24)")


def test_binary_data_size_may_be_left_out():
    assert np.array_equal(wire.decode(*framed(parameters={})).array, X)


@pytest.mark.parametrize("raw", [X.tobytes()[:-1], X.tobytes() + b"\0", b""])
def test_tensor_bytes_must_match_the_header(raw):
    refused(*framed(raw=raw, parameters={}), f"body carries {len(raw)} tensor bytes, header says 24")


@pytest.mark.parametrize(
    "params",
    [
        {"scale": DROP},
        {"scale": "0.5"},
        {"scale": True},
        {"scale": None},
        {"scale": 0},
        {"scale": -0.5},
        {"scale": float("inf")},
        {"scale": float("nan")},
        {"zero_point": DROP},
        {"zero_point": 1.0},
        {"zero_point": True},
        {"zero_point": "0"},
        {"zero_point": -129},
        {"zero_point": 128},
    ],
    ids=lambda p: f"{next(iter(p))}={next(iter(p.values()))!r}",
)
def test_int8_needs_a_positive_finite_scale_and_an_int8_zero_point(params):
    spec = int8(**params)
    spec["parameters"] = {k: v for k, v in spec["parameters"].items() if v is not DROP}
    refused(*framed(**spec), "INT8 needs a positive finite 'scale' and an int8 'zero_point'")


@pytest.mark.parametrize("zero_point, scale", [(-128, 1), (127, 0.25)])
def test_int8_zero_point_and_scale_at_their_limits_are_accepted(zero_point, scale):
    body, n = framed(
        **int8(zero_point=zero_point, scale=scale), raw=np.int8([0, 1, -1, 127, -128, 5]).tobytes()
    )
    q = np.array([0, 1, -1, 127, -128, 5], np.float32).reshape(2, 3)
    np.testing.assert_array_equal(wire.decode(body, n).array, (q - zero_point) * np.float32(scale))


@pytest.mark.parametrize(
    "datatype, raw",
    [
        ("FP32", np.float32([0, 1, np.nan, 3, 4, 5]).tobytes()),
        ("FP32", np.float32([0, 1, 2, np.inf, 4, 5]).tobytes()),
        ("FP32", np.float32([-np.inf, 1, 2, 3, 4, 5]).tobytes()),
        ("FP16", np.float16([0, 1, 2, 3, 4, np.inf]).tobytes()),
        ("FP16", np.float16([0, np.nan, 2, 3, 4, 5]).tobytes()),
    ],
)
def test_non_finite_values_are_refused(datatype, raw):
    refused(*framed(datatype=datatype, parameters={}, raw=raw), "tensor holds NaN or infinity")


def test_to_float32_refuses_an_unknown_datatype():
    with pytest.raises(wire.WireError, match=re.escape("datatype 'FP64' not supported")):
        wire.to_float32(np.zeros(2, np.float64), "FP64", {})


def test_encode_refuses_unknown_compression_and_non_finite_tensors():
    with pytest.raises(wire.WireError, match="unknown compression 'bf16'"):
        wire.encode(X, name="t", compression="bf16")
    with pytest.raises(wire.WireError, match="tensor holds NaN or infinity"):
        wire.encode(np.float32([1, np.nan]), name="t")
