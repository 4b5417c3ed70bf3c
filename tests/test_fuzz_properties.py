"""Property-based tests of everything that parses untrusted input: images, manifests, router
queries and bodies. Each must either succeed or fail with its own clear error, never crash."""

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import UserInputError
from core.imaging import Preprocessing, decode_image, encode_image
from core.manifest import Manifest, ManifestError
from edge_router.options import Defaults, RouterError, check_image, parse_query
from tests.conftest import textured_image

PNG = encode_image(textured_image(1, 24), "png")
JPEG = encode_image(textured_image(2, 24), "jpeg")


def mutated(seed_bytes):
    return st.tuples(st.integers(0, len(seed_bytes)), st.binary(max_size=40), st.integers(0, 3)).map(
        lambda t: {
            0: seed_bytes[: t[0]],
            1: seed_bytes[: t[0]] + t[1] + seed_bytes[t[0] :],
            2: seed_bytes[: t[0]] + t[1] + seed_bytes[t[0] + len(t[1]) :],
            3: t[1] + seed_bytes,
        }[t[2]]
    )


@settings(max_examples=250, deadline=None)
@given(st.one_of(st.binary(max_size=2000), mutated(PNG), mutated(JPEG)))
def test_image_decoding_and_preprocessing_fail_cleanly(data):
    try:
        image = decode_image(data)
    except UserInputError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    x = Preprocessing(size=32).model_input(image)
    assert x.shape == (3, 32, 32) and np.isfinite(x).all()


@settings(max_examples=250, deadline=None)
@given(st.one_of(st.binary(max_size=400), mutated(PNG), mutated(JPEG)))
def test_router_body_check_fails_with_a_4xx(data):
    try:
        check_image(data, 10_000)
    except RouterError as exc:
        assert 400 <= exc.status < 500 and "\n" not in str(exc)


QUERY_KEYS = st.sampled_from(
    ["threshold", "compression", "deadline_ms", "expert", "mode", "x", "", "threshold"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(QUERY_KEYS, st.text(max_size=12)), max_size=6), st.text(max_size=30))
def test_router_query_parsing_fails_with_a_400(pairs, raw_tail):
    from urllib.parse import urlencode

    for query in (urlencode(pairs), raw_tail):
        try:
            options = parse_query(query, Defaults())
        except RouterError as exc:
            assert exc.status == 400 and "\n" not in str(exc)
            continue
        assert 0 < options.threshold <= 1 and options.deadline_s > 0
        assert options.compression in ("fp32", "fp16", "int8") and options.mode in (
            "auto",
            "edge_only",
            "cloud_only",
        )


def valid_manifest() -> dict:
    return {
        "schema_version": 1,
        "role": "cloud",
        "name": "x",
        "distortion": None,
        "class_names": ["a", "b"],
        "preprocessing": {"size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]},
        "stages": ["s.onnx"],
        "exits": [{"index": 3, "name": "final", "file": "f.onnx", "temperature": 1.0, "threshold": 0.8}],
        "input": {"name": "stage2", "shape": [None, 4], "dtype": "FP32"},
        "output": {"name": "logits", "shape": [None, 2], "dtype": "FP32"},
        "backbone_hash": "h",
        "run_id": "r",
        "files": {"s.onnx": "0" * 64, "f.onnx": "0" * 64},
    }


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(valid_manifest())), JSON)
def test_manifest_loader_refuses_any_malformed_field_cleanly(field, value):
    d = valid_manifest()
    assert Manifest.from_dict(d).name == "x"
    d[field] = value
    try:
        m = Manifest.from_dict(json.loads(json.dumps(d)))
    except ManifestError:
        return
    assert m.role in ("edge", "cloud", "classifier")
