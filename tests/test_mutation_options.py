"""`edge_router.options` where its mutants showed it unpinned (docs/results/mutation.md): the exact
400/413/415 reasons a client reads, the query-string parser's settings (blank values, fields
without '=', the 20-field cap) and the limits of the numeric parameters at their ends.
"""

from __future__ import annotations

import pytest

from core.imaging import encode_image
from edge_router.options import Defaults, RouterError, check_image, parse_query
from tests.conftest import textured_image

IMAGE = encode_image(textured_image(0, 8))


def refused(query: str) -> tuple[int, str]:
    with pytest.raises(RouterError) as info:
        parse_query(query, Defaults())
    return info.value.status, str(info.value)


@pytest.mark.parametrize(
    "query, message",
    [
        ("compression=bf16", "compression must be fp32, fp16 or int8"),
        ("compression=", "compression must be fp32, fp16 or int8"),
        ("mode=fast", "mode must be auto, edge_only or cloud_only"),
        ("expert=../etc", "expert must be a registered expert's name (ASCII letters, digits, _ or -)"),
        ("threshold=0.5&min_accuracy=0.8", "give threshold or min_accuracy, not both"),
        ("offload=sometimes", "offload must be fixed or adaptive"),
        ("threshold=", "threshold is not a number"),  # blank values are kept, and refused
        ("threshold", "threshold is not a number"),  # a field without '=' too (not strict parsing)
        ("deadline_ms=0.5", "deadline_ms must be at least 50"),
        ("deadline_ms=0", "deadline_ms must be in (0, 600000]"),
        ("deadline_ms=600000.5", "deadline_ms must be in (0, 600000]"),
        ("q" * 40 + "=1", f"unknown query parameter(s): {'q' * 30!r}"),
        ("&".join(["threshold=0.5"] * 21), "too many query parameters"),
        ("&".join(["threshold=0.5"] * 20), "threshold given more than once"),  # 20 fields: parsed
    ],
)
def test_query_refusals_have_their_exact_reason(query, message):
    assert refused(query) == (400, message)


@pytest.mark.parametrize(
    "query, field, value",
    [
        ("threshold=1", "threshold", 1.0),
        ("deadline_ms=50", "deadline_s", 0.05),
        ("deadline_ms=600000", "deadline_s", 600.0),
    ],
)
def test_numbers_at_the_ends_of_their_ranges_are_accepted(query, field, value):
    assert getattr(parse_query(query, Defaults()), field) == value


def check(body: bytes, max_bytes: int = 10_000) -> tuple[int, str]:
    with pytest.raises(RouterError) as info:
        check_image(body, max_bytes)
    return info.value.status, str(info.value)


def test_image_refusals_have_their_exact_reason():
    assert check(b"") == (400, "empty body: POST a JPEG or PNG image")
    assert check(IMAGE, len(IMAGE) - 1) == (
        413,
        f"image of {len(IMAGE)} bytes exceeds the limit of {len(IMAGE) - 1}",
    )
    assert check(b"GIF89a" + bytes(40)) == (415, "not a JPEG or PNG image")
    assert check(IMAGE[:20]) == (400, "truncated PNG header")
    assert check(b"\xff\xd8\xff\xe0\x00\x01") == (400, "corrupt JPEG segment length")


def test_an_image_of_exactly_the_limit_passes():
    check_image(IMAGE, len(IMAGE))
