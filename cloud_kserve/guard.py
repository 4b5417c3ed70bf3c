"""A guard in front of KServe's Open Inference Protocol decoder: malformed inference requests get
a 400 (413 when too large) with a one-line JSON reason before KServe parses them.

Why: KServe 0.21 decodes a binary request (`Inference-Header-Content-Length` framing) with
`InferRequest.from_bytes`, which trusts the header: a zero or negative dimension, a shape whose
element count does not match the bytes, a body shorter than its header says, a non-integer header
length or a shape of a million by a million end in a numpy `ValueError`, and KServe answers 500.
Its JSON path answers 422 with pydantic's multi-line detail for a body of the wrong structure.
TorchServe's cloud handler answers all of these with a 400 (`core.wire.decode`).

The guard is an ASGI middleware on the `/v2/models/<name>[/versions/<v>]/infer` routes only. It
reads the body (bounded by `max_body_bytes`), checks it with the rules the cloud handler applies
(`check_request`: the binary framing with `core.wire.decode`, a JSON request with the same limits
on its one tensor), and then hands KServe the very same bytes: a valid request, from the edge's
`core.wire` or from `tritonclient`, gets exactly what it got without the guard. Pure Python and
the standard ASGI interface, no KServe import: the property tests run it in the edge's
environment, and the live tests run it inside the predictor.
"""

from __future__ import annotations

import json
import math
import re

from core import wire

INFER_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer/?$")
MAX_BODY_BYTES = wire.MAX_HEADER_BYTES + wire.MAX_ELEMENTS * 4
MAX_JSON_BODY_BYTES = 64 * 1024 * 1024  # numbers as text: ~20 bytes per FP32 value
REQUEST_KEYS = {"id", "inputs", "outputs", "parameters"}
TENSOR_TYPES = ("FP32", "FP16", "INT8")  # what the cloud segments take (`cloud_kserve.predictor`)
FLOAT_MAX = {"FP32": 3.4e38, "FP16": 65504.0}  # a larger JSON number would become infinity


class Rejected(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


def one_line(text: str, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


def check_request(body: bytes, header_length: str | None) -> str | None:
    """None for a well-formed inference request, else the one-line reason it is refused."""
    try:
        if header_length is not None:
            check_binary(body, header_length)
        else:
            check_json(body)
    except wire.WireError as exc:
        return one_line(exc)
    return None


def check_binary(body: bytes, header_length: str) -> None:
    """The binary tensor extension: exactly the framing `core.wire.decode` accepts, plus the
    request-level fields KServe reads (`id`, `outputs`)."""
    wire.decode(body, header_length)  # WireError with the reason
    check_request_fields(json.loads(body[: int(header_length)]))


def check_json(body: bytes) -> None:
    """A JSON request: one tensor with `data`, within the binary framing's limits."""
    if not body:
        raise wire.WireError("empty body")
    if len(body) > MAX_JSON_BODY_BYTES:
        raise wire.WireError(f"a JSON request of {len(body)} bytes exceeds {MAX_JSON_BODY_BYTES}")
    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise wire.WireError(
            f"not JSON; a binary tensor request needs the {wire.HEADER_LENGTH} header"
        ) from None
    check_request_fields(request)
    check_json_parameters(request)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise wire.WireError("exactly one input tensor is expected")
    spec = inputs[0]
    name, shape, datatype, data = (spec.get(k) for k in ("name", "shape", "datatype", "data"))
    if not isinstance(name, str) or not name or len(name) > 64:
        raise wire.WireError("input 'name' must be a short string")
    if not isinstance(datatype, str) or datatype not in TENSOR_TYPES:
        raise wire.WireError(f"datatype {str(datatype)[:20]!r} not supported ({', '.join(TENSOR_TYPES)})")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= wire.MAX_RANK
        or not all(type(d) is int and d > 0 for d in shape)
    ):
        raise wire.WireError(f"shape must be a list of 1..{wire.MAX_RANK} positive integers")
    count = math.prod(shape)
    if count > wire.MAX_ELEMENTS:
        raise wire.WireError(f"tensor of {count} elements exceeds the limit of {wire.MAX_ELEMENTS}")
    if not isinstance(data, list):
        raise wire.WireError("input 'data' must be a list of numbers")
    values = flat_numbers(data, limit=count, largest=FLOAT_MAX.get(datatype))
    if values != count:
        raise wire.WireError(f"'data' holds {values} numbers, shape {shape} needs {count}")


def check_request_fields(request) -> None:
    """The request object's own fields, as KServe reads them."""
    if not isinstance(request, dict):
        raise wire.WireError("the request must be a JSON object")
    unknown = set(request) - REQUEST_KEYS
    if unknown:
        raise wire.WireError(f"unknown request field {sorted(unknown)[0][:30]!r}")
    if not isinstance(request.get("id", ""), str):
        raise wire.WireError("'id' must be a string")
    if not isinstance(request.get("parameters", {}), dict):
        raise wire.WireError("'parameters' must be objects")
    outputs = request.get("outputs", [])
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict)
        and isinstance(o.get("name"), str)
        and isinstance(o.get("parameters", {}), dict)
        and set(o) <= {"name", "parameters"}
        for o in outputs
    ):
        raise wire.WireError("'outputs' must be a list of {name, parameters} objects")


def check_json_parameters(request: dict) -> None:
    """A JSON request's `parameters` (request, inputs, outputs): KServe validates them against its
    schema (booleans, numbers, strings) and answers anything else with a 422 and a multi-line
    detail. Not applied to the binary framing, which KServe does not validate that way and whose
    request parameters carry the edge's branch list (`core.wire`)."""
    check_parameters(request.get("parameters", {}))
    for key in ("inputs", "outputs"):
        for item in request.get(key, []) if isinstance(request.get(key), list) else []:
            if isinstance(item, dict):
                check_parameters(item.get("parameters", {}))


def check_parameters(parameters) -> None:
    """An OIP `parameters` object of booleans, numbers or strings."""
    if not isinstance(parameters, dict) or not all(
        isinstance(k, str) and isinstance(v, (bool, int, float, str)) for k, v in parameters.items()
    ):
        raise wire.WireError("'parameters' must be objects of booleans, numbers or strings")


def flat_numbers(data: list, *, limit: int, largest: float | None) -> int:
    """How many numbers a nested list holds (WireError for anything else: floats up to `largest`
    in magnitude, or with `largest` None INT8's integers -128..127); stops counting past `limit`."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if largest is None:
            if type(item) is not int or not -128 <= item <= 127:
                raise wire.WireError("INT8 'data' must hold integers in -128..127")
        elif type(item) not in (int, float) or not abs(item) <= largest:  # (NaN fails too)
            raise wire.WireError(f"input 'data' must hold finite numbers only, up to {largest:g}")
        count += 1
        if count > limit:
            break
    return count


class OipGuard:
    """ASGI middleware: `check_request` on every inference request before the app sees it."""

    def __init__(self, app, max_body_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not INFER_PATH.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await self.read_body(headers, receive)
        except Rejected as exc:
            await reject(send, exc.status, str(exc))
            return
        if body is None:  # the client went away
            return
        reason = check_request(body, headers.get(wire.HEADER_LENGTH.lower()))
        if reason is not None:
            await reject(send, 400, reason)
            return
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def read_body(self, headers: dict, receive) -> bytes | None:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise Rejected(413, f"a body of {declared} bytes exceeds {self.max_body_bytes}")
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                raise Rejected(413, f"a body over {self.max_body_bytes} bytes")
            if not message.get("more_body", False):
                return bytes(body)


async def reject(send, status: int, reason: str) -> None:
    payload = json.dumps({"error": one_line(reason)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
