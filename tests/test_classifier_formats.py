"""A classifier with one network per body format: a JPEG body is answered by the network trained on
JPEG frames, everything else by the first one. Export, manifest, runtime, router and evaluation
agree on the choice."""

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

NOISE = 2  # index of gaussian_noise among the classes


@pytest.fixture(scope="module")
def always_noise(tiny_classifier, tmp_path_factory):
    """The tiny classifier with its output bias pushed so that it always answers gaussian_noise:
    a second network whose answers cannot be mistaken for the first one's."""
    payload = load_checkpoint(tiny_classifier, "distortion_classifier")
    state = {k: v.clone() for k, v in payload["state_dict"].items()}
    bias = [k for k in state if k.startswith("head.") and k.endswith("bias")][-1]
    state[bias][NOISE] += 100.0
    out = tmp_path_factory.mktemp("jpeg_classifier") / "classifier_jpeg.pt"
    save_checkpoint(out, {**payload, "state_dict": state, "run_id": new_run_id()})
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
    got = runtime.probabilities(images, ["png", "jpeg", None, "jpeg"])
    np.testing.assert_allclose(got[[0, 2]], first.numpy()[[0, 2]], atol=1e-5)
    assert (got[[1, 3]].argmax(axis=1) == NOISE).all() and (got[[1, 3], NOISE] > 0.99).all()
    np.testing.assert_allclose(runtime.probabilities(images), first.numpy(), atol=1e-5)
    router = LocalClassifier(folder)
    image = textured_image(7, 40)
    assert router.distortion(ImageWire.parse("jpeg:90").encode(image))[0] == "gaussian_noise"
    png = router.distortion(encode_image(image, "png"))
    assert png == runtime.distortions([image], ["png"])[0]


def test_evaluation_routes_each_wire_with_its_network(tiny_classifier, always_noise):
    from training.eval_classifier import for_wire, load_classifiers

    classifiers = load_classifiers(tiny_classifier, always_noise)
    assert for_wire(classifiers, ImageWire.parse("jpeg:75")) is classifiers["jpeg"]
    assert for_wire(classifiers, ImageWire.parse("jpeg:90:444")) is classifiers["jpeg"]
    assert for_wire(classifiers, ImageWire.parse("png")) is classifiers["any"]
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
