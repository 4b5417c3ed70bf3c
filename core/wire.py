"""The edge -> cloud wire: one tensor in the Open Inference Protocol's binary framing.

A body is a JSON header followed by the raw little-endian tensor bytes; the header's length travels
in the HTTP header `Inference-Header-Content-Length` (KServe v2 / Triton binary tensor extension),
so the cloud segment stays servable by Triton or KServe unchanged. Header example:

    {"inputs": [{"name": "stage2", "shape": [1, 160, 2, 2], "datatype": "FP16",
                 "parameters": {"binary_data_size": 1280}}],
     "parameters": {...free-form request parameters...}}

Compression is the datatype: FP32 (exact), FP16, or INT8 with an affine per-tensor scale and
zero point carried in the input's `parameters`. Never JSON lists of numbers, never pickle.

The decoder trusts nothing: header length, JSON shape, datatype, dimensions, byte counts and
finiteness are all checked against explicit limits before any array is built, and every failure is
a `WireError` (a 400 at the servers).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from core.errors import UserInputError

HEADER_LENGTH = "Inference-Header-Content-Length"
CONTENT_TYPE = "application/octet-stream"
COMPRESSIONS = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
_NUMPY = {"FP32": np.dtype("<f4"), "FP16": np.dtype("<f2"), "INT8": np.dtype("i1")}
MAX_HEADER_BYTES = 16 * 1024
MAX_ELEMENTS = 64 * 1024 * 1024 // 4  # 64 MiB of FP32
MAX_RANK = 8


class WireError(UserInputError):
    """A body that is not a well-formed tensor message."""


@dataclass
class TensorMessage:
    name: str
    array: np.ndarray  # always float32 after decoding
    datatype: str  # as sent: FP32, FP16, INT8
    parameters: dict = field(default_factory=dict)  # request-level parameters


def encode(
    array: np.ndarray, *, name: str, compression: str = "fp32", parameters: dict | None = None
) -> tuple[bytes, int]:
    """(body, header length) for a float array; `compression` fp32, fp16 or int8."""
    if compression not in COMPRESSIONS:
        raise WireError(f"unknown compression {compression!r} (fp32, fp16 or int8)")
    datatype = COMPRESSIONS[compression]
    x = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(x).all():
        raise WireError("tensor holds NaN or infinity")
    tensor_params: dict = {}
    if datatype == "INT8":
        payload, scale, zero_point = quantize_int8(x)
        tensor_params.update(scale=scale, zero_point=zero_point)
    else:
        payload = x.astype(_NUMPY[datatype])
    raw = payload.tobytes()
    tensor_params["binary_data_size"] = len(raw)
    header = {
        "inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype, "parameters": tensor_params}]
    }
    if parameters:
        header["parameters"] = parameters
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return head + raw, len(head)


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Affine per-tensor quantisation to int8: x ~ scale * (q - zero_point)."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)  # keep 0 exactly representable
    scale = (hi - lo) / 255.0 or 1.0
    zero_point = int(round(-128 - lo / scale))
    q = np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)
    return q, scale, zero_point


def decode(
    body: bytes, header_length: int | str | None, *, max_elements: int = MAX_ELEMENTS
) -> TensorMessage:
    """Parse and validate one tensor message; raises WireError with a one-line reason."""
    if not body:
        raise WireError("empty body")
    if header_length is None:
        raise WireError(f"missing {HEADER_LENGTH} header")
    try:
        n = int(header_length)
    except (TypeError, ValueError):
        raise WireError(f"{HEADER_LENGTH} is not an integer") from None
    if not 0 < n <= min(MAX_HEADER_BYTES, len(body)):
        raise WireError(f"{HEADER_LENGTH} {n} outside 1..{min(MAX_HEADER_BYTES, len(body))}")
    try:
        header = json.loads(bytes(body[:n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError("the inference header is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise WireError("the inference header needs an 'inputs' list")
    if len(header["inputs"]) != 1 or not isinstance(header["inputs"][0], dict):
        raise WireError("exactly one input tensor is expected")
    spec = header["inputs"][0]
    name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
    params = spec.get("parameters", {})
    request_params = header.get("parameters", {})
    if not isinstance(name, str) or not name or len(name) > 64:
        raise WireError("input 'name' must be a short string")
    if not isinstance(datatype, str) or datatype not in _NUMPY:  # (a list or dict is unhashable)
        raise WireError(f"datatype {str(datatype)[:20]!r} not supported (FP32, FP16, INT8)")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= MAX_RANK
        or not all(type(d) is int and d > 0 for d in shape)
    ):
        raise WireError(f"shape must be a list of 1..{MAX_RANK} positive integers")
    if not isinstance(params, dict) or not isinstance(request_params, dict):
        raise WireError("'parameters' must be objects")
    count = math.prod(shape)
    if count > max_elements:
        raise WireError(f"tensor of {count} elements exceeds the limit of {max_elements}")
    size = count * _NUMPY[datatype].itemsize
    declared = params.get("binary_data_size", size)
    if type(declared) is not int or declared != size:
        raise WireError(f"binary_data_size {declared!r} does not match shape and datatype ({size})")
    if len(body) - n != size:
        raise WireError(f"body carries {len(body) - n} tensor bytes, header says {size}")
    raw = np.frombuffer(bytes(body[n:]), dtype=_NUMPY[datatype]).reshape(shape)
    return TensorMessage(
        name=name, array=to_float32(raw, datatype, params), datatype=datatype, parameters=request_params
    )


def to_float32(raw: np.ndarray, datatype: str, params: dict) -> np.ndarray:
    """A received tensor as float32: FP16 widened, INT8 de-quantised with the input's `scale` and
    `zero_point`; WireError for a bad quantisation or a non-finite value. Shared by `decode` and
    the servers that parse the framing themselves (the KServe predictor)."""
    if datatype not in _NUMPY:
        raise WireError(f"datatype {str(datatype)[:20]!r} not supported (FP32, FP16, INT8)")
    if datatype == "INT8":
        scale, zero_point = params.get("scale"), params.get("zero_point")
        if (
            not isinstance(scale, (int, float))
            or isinstance(scale, bool)
            or not math.isfinite(scale)
            or scale <= 0
            or type(zero_point) is not int
            or not -128 <= zero_point <= 127
        ):
            raise WireError("INT8 needs a positive finite 'scale' and an int8 'zero_point'")
        return (raw.astype(np.float32) - zero_point) * np.float32(scale)
    array = raw.astype(np.float32)
    if not np.isfinite(array).all():
        raise WireError("tensor holds NaN or infinity")
    return array
