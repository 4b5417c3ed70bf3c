"""What a request asks for: the query parameters of `POST /v1/classify` and the image's first checks.

`parse_query` turns the query string into `Options` (router defaults for what is left out), and
`check_image` refuses what no server should see (empty, too large, not JPEG/PNG, a broken header);
both raise `RouterError` with the HTTP status the front door answers. No HTTP or upstream here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

from core import experts, wire
from core.imaging import DEFAULT_MAX_BYTES, header_dimensions, image_format
from edge_router import adaptive

MIN_DEADLINE_MS = 50.0
MODES = ("auto", "edge_only", "cloud_only")


class RouterError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Options:
    threshold: float
    compression: str
    deadline_s: float
    expert: str | None
    mode: str
    min_accuracy: float | None = None  # an accuracy target: the threshold comes from the table
    offload: str = "fixed"  # or "adaptive": the network and the expected gain decide (adaptive.py)


@dataclass
class Defaults:
    threshold: float = 0.8
    deadline_ms: float = 2000.0
    max_body_bytes: int = DEFAULT_MAX_BYTES
    min_accuracy: float | None = None
    offload: str = "fixed"
    min_gain_per_second: float = 10.0  # accuracy points one second of offloading must buy


def parse_options(params: Mapping[str, list[str]], defaults: Defaults) -> Options:
    """Query parameters (name -> every value given) to Options; RouterError(400) on anything odd."""
    known = {"threshold", "compression", "deadline_ms", "expert", "mode", "min_accuracy", "offload"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise RouterError(400, f"unknown query parameter(s): {', '.join(repr(u[:30]) for u in unknown)}")

    def one(name: str, default: str | None = None) -> str | None:
        values = params.get(name)
        if not values:
            return default
        if len(values) > 1:
            raise RouterError(400, f"{name} given more than once")
        return values[0]

    def number(name: str, default: float, lo: float, hi: float) -> float:
        raw = one(name)
        if raw is None:
            return default
        try:
            v = float(raw)
        except ValueError:
            raise RouterError(400, f"{name} is not a number") from None
        if not lo < v <= hi:
            raise RouterError(400, f"{name} must be in ({lo:g}, {hi:g}]")
        return v

    threshold = number("threshold", defaults.threshold, 0.0, 1.0)
    deadline_ms = number("deadline_ms", defaults.deadline_ms, 0.0, 600_000.0)
    if deadline_ms < MIN_DEADLINE_MS:  # no edge can answer sooner: refuse rather than time out
        raise RouterError(400, f"deadline_ms must be at least {MIN_DEADLINE_MS:g}")
    compression = (one("compression", "fp32") or "").lower()
    if compression not in wire.COMPRESSIONS:
        raise RouterError(400, "compression must be fp32, fp16 or int8")
    mode = (one("mode", "auto") or "").lower()
    if mode not in MODES:
        raise RouterError(400, "mode must be auto, edge_only or cloud_only")
    expert = one("expert")
    if expert is not None and not experts.is_expert_name(expert):
        raise RouterError(400, "expert must be a registered expert's name (ASCII letters, digits, _ or -)")
    # a request's own threshold overrides the router's default target; its own target, the threshold
    min_accuracy = None if one("threshold") is not None else defaults.min_accuracy
    if one("min_accuracy") is not None:
        if one("threshold") is not None:
            raise RouterError(400, "give threshold or min_accuracy, not both")
        min_accuracy = number("min_accuracy", 0.0, 0.0, 1.0)
    offload = (one("offload", defaults.offload) or "").lower()
    if offload not in adaptive.POLICIES:
        raise RouterError(400, "offload must be fixed or adaptive")
    return Options(threshold, compression, deadline_ms / 1000.0, expert, mode, min_accuracy, offload)


def parse_query(query: str, defaults: Defaults) -> Options:
    """A URL query string to Options (at most 20 fields); RouterError(400) on anything odd."""
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except ValueError:
        raise RouterError(400, "too many query parameters") from None
    return parse_options(params, defaults)


def check_image(body: bytes, max_bytes: int) -> None:
    """Cheap checks before any server is bothered: size, JPEG/PNG signature, sane header."""
    if not body:
        raise RouterError(400, "empty body: POST a JPEG or PNG image")
    if len(body) > max_bytes:
        raise RouterError(413, f"image of {len(body)} bytes exceeds the limit of {max_bytes}")
    if image_format(body) is None:
        raise RouterError(415, "not a JPEG or PNG image")
    try:
        header_dimensions(body)
    except Exception as exc:  # noqa: BLE001 - any header problem is the client's
        raise RouterError(400, " ".join(str(exc).split())[:200]) from None


# -- the upstream TorchServe instances, as this module sees them -----------------------------------
