"""The edge -> cloud wire codec: exact round trips, bounded compression error, hostile bodies."""

import json

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
