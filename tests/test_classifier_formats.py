"""A classifier with one network per body format: a JPEG body is answered by the network trained on
JPEG frames, everything else by the first one; a JPEG body encoded below the network's low-quality
band gets the band's logit offsets. Export, manifest, runtime, router and evaluation agree on the
choice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.errors import UserInputError
from core.imaging import ImageWire, encode_image
from core.manifest import Manifest, ManifestError
from tests.conftest import textured_image
from training.checkpoints import load_checkpoint, new_run_id, save_checkpoint

BLUR, NOISE = 1, 2  # indices of gaussian_blur and gaussian_noise among the four classes
# the second network's low-quality band: below JPEG quality 85 its answers turn to gaussian_blur
BAND = {"below": 85, "offsets": [0.0, 200.0, 0.0, 0.0]}


@pytest.fixture(scope="module")
def always_noise(tiny_classifier, tmp_path_factory):
    """The tiny classifier with its output bias pushed so that it always answers gaussian_noise,
    and always gaussian_blur below its low-quality band: a second network whose answers cannot be
    mistaken for the first one's, nor its band's for its own."""
    payload = load_checkpoint(tiny_classifier, "distortion_classifier")
    state = {k: v.clone() for k, v in payload["state_dict"].items()}
    bias = [k for k in state if k.startswith("head.") and k.endswith("bias")][-1]
    state[bias][NOISE] += 100.0
    out = tmp_path_factory.mktemp("jpeg_classifier") / "classifier_jpeg.pt"
    record = {"offsets": {}, "low_quality": BAND}
    save_checkpoint(out, {**payload, "state_dict": state, "run_id": new_run_id(), "route_bias": record})
    return out


@pytest.fixture(scope="module")
def two_network_export(backbone, experts, tiny_classifier, always_noise, fake_fashion_root, tmp_path_factory):
    from export import __main__ as export_cli

    out = tmp_path_factory.mktemp("exported_two_networks")
    argv = ["--backbone", str(backbone), "--experts", *experts, "--classifier", str(tiny_classifier)]
    argv += ["--classifier-jpeg", str(always_noise), "--data-root", str(fake_fashion_root)]
    argv += ["--parity-images", "4", "--operating-images", "0", "--out", str(out)]
    report = export_cli.main(export_cli.get_args_parser().parse_args(argv))
    return out, report


def test_export_writes_one_network_per_format(two_network_export, tiny_classifier, always_noise):
    folder, report = two_network_export
    manifest = Manifest.load(folder / "distortion_classifier.json")
    manifest.verify_files(folder)
    assert manifest.stages == ("classifier/classifier.onnx", "classifier/classifier_jpeg.onnx")
    assert manifest.classifier_formats == ("any", "jpeg")
    runs = [load_checkpoint(p, "distortion_classifier")["run_id"] for p in (tiny_classifier, always_noise)]
    assert manifest.preprocessing["run_ids"] == runs and manifest.run_id == runs[0]
    assert manifest.preprocessing["quality_offsets"] == {"jpeg": BAND}
    parity = {s["segment"]: s for s in report["segments"]}
    assert parity["classifier/classifier_jpeg.onnx"]["argmax_mismatches"] == 0


def test_the_body_format_picks_the_network(two_network_export, tiny_classifier):
    from edge_router.classifier import LocalClassifier
    from handlers.runtime import DistortionClassifierRuntime
    from training.eval_classifier import load_classifier

    folder = two_network_export[0]
    runtime = DistortionClassifierRuntime(Manifest.load(folder / "distortion_classifier.json"), folder)
    images = [textured_image(i, 40) for i in range(4)]
    model, _ = load_classifier(tiny_classifier)
    with torch.no_grad():
        first = torch.softmax(
            model(torch.stack([torch.from_numpy(model.config.model_input(im)) for im in images])), 1
        )
    # a mixed batch: PNG and unknown bodies go to the first network, JPEG ones to the second, in order
    png, q90, q75 = ImageWire(), ImageWire.parse("jpeg:90"), ImageWire.parse("jpeg:75")
    got = runtime.probabilities(images, [png, q90, None, q75])
    np.testing.assert_allclose(got[[0, 2]], first.numpy()[[0, 2]], atol=1e-5)
    assert got[1, NOISE] > 0.99 and got[3, BLUR] > 0.99  # q75 is below the band's quality 85
    np.testing.assert_allclose(runtime.probabilities(images), first.numpy(), atol=1e-5)
    # the router reads the wire from the body: format from the magic bytes, quality from its table
    router = LocalClassifier(folder)
    image = textured_image(7, 40)
    for wire, expected in [
        ("jpeg:90", "gaussian_noise"),
        ("jpeg:85", "gaussian_noise"),
        ("jpeg:84", "gaussian_blur"),
    ]:
        assert router.distortion(ImageWire.parse(wire).encode(image))[0] == expected, wire
    assert router.distortion(encode_image(image, "png")) == runtime.distortions([image], [png])[0]


def test_the_router_decodes_large_declared_images_off_the_loop_and_one_at_a_time(two_network_export):
    import asyncio
    import threading

    from edge_router.classifier import LocalClassifier

    router = LocalClassifier(two_network_export[0])
    router.inline_pixels, router.large_pixels = 48 * 48, 96 * 96  # the limits scaled down
    seen = []
    classify = router._distortion

    def recording(body):
        seen.append((threading.current_thread().name, router._large.locked()))
        return classify(body)

    router._distortion = recording
    flat = np.full((120, 120, 3), 90, np.uint8)  # a few hundred bytes declaring 14,400 pixels
    for image in (textured_image(1, 40), textured_image(2, 64), flat):
        body = encode_image(image, "png")
        assert asyncio.run(router(body)) == classify(body)
    (small, small_lock), (mid, mid_lock), (large, large_lock) = seen
    assert small == threading.main_thread().name and not small_lock  # on the event loop
    assert mid.startswith("classifier") and not mid_lock  # in the pool, beside another
    assert large.startswith("classifier") and large_lock  # in the pool, alone


def test_evaluation_routes_each_wire_with_its_network(tiny_classifier, always_noise):
    from training.eval_classifier import for_wire, load_classifiers

    classifiers = load_classifiers(tiny_classifier, always_noise)
    assert for_wire(classifiers, ImageWire.parse("jpeg:90:444")) is classifiers["jpeg"]
    assert for_wire(classifiers, ImageWire.parse("jpeg:85")) is classifiers["jpeg"]
    assert for_wire(classifiers, ImageWire.parse("png")) is classifiers["any"]
    # below the band: the same network with the band's offsets in its output layer
    model, payload = for_wire(classifiers, ImageWire.parse("jpeg:75"))
    assert payload is classifiers["jpeg"][1] and model is not classifiers["jpeg"][0]
    x = torch.from_numpy(model.config.model_input(textured_image(3, 40)))[None]
    with torch.no_grad():
        assert model(x).argmax().item() == BLUR and classifiers["jpeg"][0](x).argmax().item() == NOISE
    single = load_classifiers(tiny_classifier, None)
    assert for_wire(single, ImageWire.parse("jpeg:90")) is single["any"]


def test_a_jpeg_network_with_another_input_is_refused(tiny_classifier, tmp_path):
    from training.classifier import ClassifierConfig, DistortionClassifier
    from training.eval_classifier import load_classifiers

    payload = load_checkpoint(tiny_classifier, "distortion_classifier")
    config = ClassifierConfig.from_dict({**payload["config"], "input_size": 48})
    other = tmp_path / "classifier_jpeg.pt"
    state = DistortionClassifier(config).state_dict()
    save_checkpoint(other, {**payload, "config": config.to_dict(), "state_dict": state})
    with pytest.raises(UserInputError, match="input_size is 48"):
        load_classifiers(tiny_classifier, other)


@pytest.mark.parametrize(
    "formats,stages",
    [(["jpeg"], 2), (["any", "gif"], 2), (["jpeg", "jpeg"], 2), ("any", 1), (["any", "jpeg"], 1)],
)
def test_manifest_refuses_formats_that_do_not_name_each_network_once(two_network_export, formats, stages):
    d = json.loads((two_network_export[0] / "distortion_classifier.json").read_text())
    d["stages"] = d["stages"][:stages]
    d["preprocessing"]["formats"] = formats
    with pytest.raises(ManifestError, match="preprocessing.formats"):
        Manifest.from_dict(d)


@pytest.mark.parametrize(
    "bands",
    [
        {"png": BAND},  # no network is kept for png
        {"jpeg": {"below": 85}},
        {"jpeg": {"below": 101, "offsets": [0, 0, 0, 0]}},
        {"jpeg": {"below": True, "offsets": [0, 0, 0, 0]}},
        {"jpeg": {"below": 85, "offsets": [0, 0, 0]}},  # one offset short of the four classes
        {"jpeg": {"below": 85, "offsets": [0, "1", 0, 0]}},
        {"jpeg": {"below": 85, "offsets": [0, float("inf"), 0, 0]}},
        {"jpeg": {"below": 85, "offsets": [0, 0, 0, 0], "above": 95}},
        {"jpeg": [85, [0, 0, 0, 0]]},
        [BAND],
    ],
)
def test_manifest_refuses_malformed_quality_offsets(two_network_export, bands):
    d = json.loads((two_network_export[0] / "distortion_classifier.json").read_text())
    d["preprocessing"]["quality_offsets"] = bands
    with pytest.raises(ManifestError, match="quality_offsets"):
        Manifest.from_dict(d)


def test_the_band_rule():
    from core.manifest import band_offsets

    assert band_offsets(BAND, 84) == BAND["offsets"] and band_offsets(BAND, 1) == BAND["offsets"]
    assert band_offsets(BAND, 85) is None and band_offsets(BAND, 100) is None
    assert band_offsets(BAND, None) is None and band_offsets(None, 50) is None


@pytest.mark.parametrize(
    "fallbacks",
    [{"fog": "gaussian_blur"}, {"gaussian_blur": "fog"}, {"gaussian_blur": "gaussian_blur"}],
)
def test_manifest_refuses_fallbacks_outside_its_classes(two_network_export, fallbacks):
    d = json.loads((two_network_export[0] / "distortion_classifier.json").read_text())
    # the export writes the registry's table for the classifier's classes: motion blur's expert
    # falls back to Gaussian blur's
    assert d["fallbacks"] == {"motion_blur": "gaussian_blur"}
    assert Manifest.from_dict(d).fallbacks == {"motion_blur": "gaussian_blur"}
    Manifest.from_dict({**d, "fallbacks": {"gaussian_noise": "gaussian_blur"}})  # a valid table
    with pytest.raises(ManifestError, match="fallbacks must map a class to another class"):
        Manifest.from_dict({**d, "fallbacks": fallbacks})
    edge = json.loads((two_network_export[0] / "edge_pristine.json").read_text())
    with pytest.raises(ManifestError, match="edge manifest carries no fallbacks"):
        Manifest.from_dict({**edge, "fallbacks": {"gaussian_noise": "gaussian_blur"}})
