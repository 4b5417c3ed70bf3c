"""`core.wire` where its mutants showed it unpinned (docs/results/mutation.md): each refusal's exact
reason (the focused tests in test_wire match a fragment), a rank-1 tensor, the encoder's compact
and strict JSON, and INT8 quantisation at its edges.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from core import wire
from tests.test_wire import DROP, framed, int8


def reason(body: bytes, length, **kwargs) -> str:
    with pytest.raises(wire.WireError) as info:
        wire.decode(body, length, **kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    "message, expected",
    [
        ((b"", 3), "empty body"),
        ((b"{nope" + bytes(24), 5), "the inference header is not JSON"),
        (framed(top={"inputs": "x"}), "the inference header needs an 'inputs' list"),
        ((b'{"inputs": [1, 2]}', 18), "exactly one input tensor is expected"),
        (framed(name=""), "input 'name' must be a short string"),
        (framed(datatype="FP64"), "datatype 'FP64' not supported (FP32, FP16, INT8)"),
        (framed(datatype="Q" * 30), f"datatype {'Q' * 20!r} not supported (FP32, FP16, INT8)"),
        (framed(parameters=[]), "'parameters' must be objects"),
        (framed(**int8(zero_point=128)), "INT8 needs a positive finite 'scale' and an int8 'zero_point'"),
        (framed(raw=np.float32([np.nan, 0, 0, 0, 0, 0]).tobytes()), "tensor holds NaN or infinity"),
    ],
)
def test_each_refusal_has_its_exact_reason(message, expected):
    assert reason(*message) == expected


def test_to_float32_names_an_unknown_datatype_exactly():
    with pytest.raises(wire.WireError) as info:
        wire.to_float32(np.zeros(2, np.float32), "Q" * 30, {})
    assert str(info.value) == f"datatype {'Q' * 20!r} not supported (FP32, FP16, INT8)"


def test_a_rank_one_tensor_is_accepted():
    body, n = framed(shape=[6], parameters=DROP)
    np.testing.assert_array_equal(wire.decode(body, n).array, np.arange(6, dtype=np.float32))


def test_the_header_is_compact_json():
    body, n = wire.encode(np.zeros((1, 2), np.float32), name="stage2", parameters={"a": [1, 2]})
    head = body[:n]
    assert b" " not in head and json.loads(head)["parameters"] == {"a": [1, 2]}


def test_request_parameters_must_be_strict_json():
    with pytest.raises(ValueError):
        wire.encode(np.zeros(2, np.float32), name="x", parameters={"bad": float("nan")})


def test_encoding_refuses_values_beyond_float32():
    with np.errstate(over="ignore"), pytest.raises(wire.WireError) as info:
        wire.encode(np.array([1e39, 0.0]), name="x")
    assert str(info.value) == "tensor holds NaN or infinity"


@pytest.mark.parametrize("x, scale", [([2.0, 5.1], 5.1 / 255.0), ([-5.1, -2.0], 5.1 / 255.0)])
def test_int8_range_always_includes_zero(x, scale):
    q, s, zero_point = wire.quantize_int8(np.float32(x))
    assert s == pytest.approx(scale, rel=1e-6)
    restored = s * (q.astype(np.float64) - zero_point)
    np.testing.assert_allclose(restored, np.float32(x), atol=s / 2 + 1e-6)


def test_int8_of_a_zero_tensor_has_scale_one():
    q, scale, zero_point = wire.quantize_int8(np.zeros(3, np.float32))
    assert scale == 1.0 and zero_point == -128 and (q == -128).all()


def test_int8_rounding_at_the_top_is_clipped_not_wrapped():
    # scale 1, zero point 126 (125.5 rounds to even), and 1.5 rounds up to 2: 128 must clip to 127
    q, scale, zero_point = wire.quantize_int8(np.float32([-253.5, 1.5]))
    assert (scale, zero_point) == (1.0, 126)
    np.testing.assert_array_equal(q, [-128, 127])
