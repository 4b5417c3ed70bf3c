"""The distortion classifier: architecture, a tiny training run, evaluation output."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import UserInputError
from core.imaging import ImageWire, encode_image
from tests.conftest import tiny_classifier_args
from training import eval_classifier, train_classifier
from training.classifier import ClassifierConfig, DistortionClassifier
from training.photos import (
    HELDOUT_SOURCES,
    OPENCV_DOC_HTML,
    PHOTOS,
    PhotoCrops,
    PhotoFrames,
    available_photos,
    group_of,
    is_heldout,
)


@pytest.mark.parametrize("size,flat", [(64, 49), (224, 729), (32, 9)])
@pytest.mark.parametrize(
    "spectra", [("luma",), ("luma", "chroma"), ("luma", "chroma", "luma_native", "anisotropy")]
)
@pytest.mark.parametrize("bottleneck", [1, 4])
def test_architecture_follows_input_size(size, flat, spectra, bottleneck):
    model = DistortionClassifier(ClassifierConfig(input_size=size, spectra=spectra, bottleneck=bottleneck))
    # 27 x 27 = 729 at 224 px with CollabAR's 1-channel bottleneck; one map per bottleneck channel
    assert model.head[-1].in_features == flat * bottleneck
    out = model(torch.rand(5, len(spectra), size, size))
    assert out.shape == (5, 4)  # pristine, Gaussian blur, Gaussian noise, motion blur
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d"]
    assert model.features[5].out_channels == bottleneck


def test_config_from_before_the_bottleneck_option_is_collabar_s():
    old = ClassifierConfig(bottleneck=4).to_dict()
    del old["bottleneck"]
    assert ClassifierConfig.from_dict(old).bottleneck == 1
    with pytest.raises(ValueError, match="bottleneck"):
        DistortionClassifier(ClassifierConfig(bottleneck=0))


def test_config_spectra_round_trip_and_legacy_default():
    config = ClassifierConfig(input_size=32, spectra=["luma", "chroma"])
    assert config.spectra == ("luma", "chroma")
    assert ClassifierConfig.from_dict(config.to_dict()) == config
    legacy = config.to_dict()
    del legacy["spectra"]  # a checkpoint from before the chroma spectrum
    assert ClassifierConfig.from_dict(legacy).spectra == ("luma",)
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert config.model_input(image).shape == (2, 32, 32)
    for bad in ((), ("luma", "luma"), ("hue",)):
        with pytest.raises(ValueError, match="spectra"):
            ClassifierConfig(spectra=bad)


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="too small"):
        DistortionClassifier(ClassifierConfig(input_size=8))


@pytest.fixture(scope="module")
def tiny_checkpoint(fake_fashion_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "classifier.pt"
    args = tiny_classifier_args(
        fake_fashion_root, out, epochs=6, samples_per_epoch=640, extra=("--lr", "3e-3", "--dropout", "0")
    )
    payload = train_classifier.main(args)
    return out, payload


def test_training_learns_and_checkpoint_records_config(tiny_checkpoint):
    path, payload = tiny_checkpoint
    assert path.is_file()
    assert payload["class_names"] == ["pristine", "gaussian_blur", "gaussian_noise", "motion_blur"]
    assert payload["config"]["input_size"] == 32
    assert payload["config"]["spectra"] == ["luma", "chroma", "luma_native", "anisotropy"]
    assert len(payload["history"]) >= 1 and payload["run_id"]
    # 4 balanced classes: chance is 1/4; at least 12 of the 20 validation images right happens by
    # chance about once in 1,000 runs (binomial), and blur and noise leave clear marks in the spectrum
    assert payload["val_accuracy"] >= 0.6


def test_evaluation_writes_the_documented_json(tiny_checkpoint, fake_fashion_root, tmp_path):
    path, payload = tiny_checkpoint
    out = tmp_path / "classifier.json"
    args = eval_classifier.get_args_parser().parse_args(
        [
            "--checkpoint",
            str(path),
            "--data-root",
            str(fake_fashion_root),
            "--photo-crops",
            "0",
            "--workers",
            "0",
            "--quiet",
            "--json",
            str(out),
        ]
    )
    result = eval_classifier.main(args)
    saved = json.loads(out.read_text())
    assert saved["run_id"] == payload["run_id"] and list(saved["wires"]) == ["png", "jpeg:90"]
    for wire, got in saved["wires"].items():
        assert got["accuracy"] == result["wires"][wire]["accuracy"] and 0 <= got["accuracy"] <= 1
        assert got["n"] == 60
        assert set(got["per_level"]) == {"pristine", "gaussian_blur", "gaussian_noise", "motion_blur"}
        assert list(got["per_level"]["gaussian_noise"]) == ["5", "10", "20", "30", "40"]
        assert list(got["per_level"]["motion_blur"]) == ["7", "11", "15", "21", "27"]
        matrix = got["confusion"]["matrix"]
        assert len(matrix) == 4 and all(len(row) == 4 for row in matrix)
        assert sum(map(sum, matrix)) == 60
        assert sum(matrix[k][k] for k in range(4)) / 60 == pytest.approx(got["accuracy"])
    assert saved["command"].startswith("python -m ")  # the command that made the file


def test_photo_pool_split_is_by_group():
    for _, rel in PHOTOS:
        if "left" in rel or "right" in rel:
            assert is_heldout(rel) == is_heldout(rel.replace("left", "right"))
    assert group_of("data/aloeL.jpg") == group_of("data/aloeR.jpg")


def test_a_held_out_source_is_never_trained_on():
    held_sources = [rel for package, rel in PHOTOS if package in HELDOUT_SOURCES]
    assert held_sources  # the tutorials' photos
    train = {p.name for p in available_photos("train")}
    assert not train & {Path(rel).name for rel in held_sources}
    installed = {Path(rel).name for rel in held_sources if (OPENCV_DOC_HTML / rel).is_file()}
    assert installed <= {p.name for p in available_photos("heldout")}


def test_photo_crops_when_photos_are_installed():
    if not available_photos("train") or not available_photos("heldout"):
        pytest.skip("opencv-doc / scikit-image photos not installed")
    train = {p.name for p in available_photos("train")}
    held = {p.name for p in available_photos("heldout")}
    assert not train & held
    crops = PhotoCrops("heldout", 10, size=48, seed=1)
    a = crops.image(3)
    assert a.shape == (48, 48, 3)
    assert (crops.image(3) == a).all()


def test_whole_frame_evaluation_reports_every_condition_and_photo(tiny_checkpoint):
    if not available_photos("heldout"):
        pytest.skip("opencv-doc / scikit-image photos not installed")
    model, _ = eval_classifier.load_classifier(tiny_checkpoint[0])
    frames = PhotoFrames("heldout", size=model.config.image_size)
    got = eval_classifier.evaluate_frames(model, frames, seed=1, quiet=True)
    conditions = [f"{name} {level:g}" for _, name, level in eval_classifier.cells(list(model.config.classes))]
    # pristine, then five levels each of Gaussian blur, Gaussian noise and motion blur
    assert len(conditions) == 16 and list(got["routing"]) == conditions
    assert all(sum(counts.values()) == len(frames) for counts in got["routing"].values())
    assert set(got["per_photo"]) == set(got["files"]) and len(got["files"]) == len(frames)
    for photo in got["files"]:
        assert list(got["per_photo"][photo]) == conditions
    # the per-condition accuracy is the share of photos routed to the condition's own expert
    noise5 = got["routing"]["gaussian_noise 5"]["gaussian_noise"] / len(frames)
    assert got["per_level"]["gaussian_noise"]["5"] == pytest.approx(noise5)
    as_jpeg = eval_classifier.evaluate_frames(
        model, frames, seed=1, quiet=True, wire=ImageWire.parse("jpeg:75")
    )
    assert as_jpeg["wire"] == "jpeg:75" and got["wire"] == "png"
    assert list(as_jpeg["routing"]) == conditions


def colour_source(n: int, size: int) -> type:
    """A tiny image source of `n` textured colour images of `size` px (no object labels)."""
    from tests.conftest import textured_image

    class Colour:
        classes = ("x",)

        def __len__(self):
            return n

        def image(self, i):
            return textured_image(i, size)

        def label(self, i):
            return 0

    return Colour


def test_jpeg_round_trip_is_drawn_per_sample_and_reproducible():
    """A share of the samples arrive as a device's JPEG would bring them (a drawn quality and chroma
    subsampling); the rest are untouched, and the draw is the same for the same (seed, epoch,
    index)."""
    from core.imaging import decode_image, encode_image
    from training.datasets import DistortedDataset, DistortionPolicy, distorted_image

    Colour = colour_source(40, 48)

    config = ClassifierConfig(input_size=32, image_size=32)
    policy = DistortionPolicy(fixed=("gaussian_noise", 10), seed=3)
    plain = DistortedDataset.for_classifier(Colour(), config, policy)
    every = DistortedDataset.for_classifier(Colour(), config, policy, wire=ImageWire.parse("jpeg:90"))
    mixed = DistortedDataset(
        Colour(),
        size=32,
        policy=policy,
        representation="spectrum",
        spectrum_size=32,
        spectra=config.spectra,
        jpeg_fraction=0.5,
        jpeg_quality=(70, 80),
        jpeg_444_fraction=0.5,
    )
    image, _, _ = distorted_image(Colour(), 0, 32, policy)
    expected = config.model_input(decode_image(encode_image(image, "jpeg", jpeg_quality=90)))
    np.testing.assert_array_equal(every[0][0].numpy(), expected)
    np.testing.assert_array_equal(plain[0][0].numpy(), config.model_input(image))
    changed = [not np.array_equal(mixed[i][0].numpy(), plain[i][0].numpy()) for i in range(40)]
    assert 10 <= sum(changed) <= 30  # about half, drawn per sample
    assert [not np.array_equal(mixed[i][0].numpy(), plain[i][0].numpy()) for i in range(40)] == changed
    wires = [mixed.wire_of(i) for i in range(40)]
    assert [not w.lossless for w in wires] == changed  # what changed is what crossed a JPEG wire
    jpegs = [w for w in wires if not w.lossless]
    assert {w.subsampling for w in jpegs} == {"420", "444"} and all(70 <= w.quality <= 80 for w in jpegs)
    i = changed.index(True)
    sent = distorted_image(Colour(), i, 32, policy)[0]
    np.testing.assert_array_equal(mixed[i][0].numpy(), config.model_input(wires[i].round_trip(sent)))
    with pytest.raises(ValueError, match="jpeg_fraction"):
        DistortedDataset(Colour(), size=32, policy=policy, jpeg_fraction=1.5)
    with pytest.raises(ValueError, match="jpeg_quality"):
        DistortedDataset(Colour(), size=32, policy=policy, jpeg_fraction=0.5, jpeg_quality=(90, 60))
    with pytest.raises(ValueError, match="exclude each other"):
        DistortedDataset(Colour(), size=32, policy=policy, wire=ImageWire.parse("png"), jpeg_fraction=0.5)


def test_fine_tuning_starts_from_the_init_checkpoint(tiny_checkpoint, fake_fashion_root, tmp_path):
    path, payload = tiny_checkpoint
    args = tiny_classifier_args(
        fake_fashion_root, tmp_path / "tuned.pt", epochs=1, samples_per_epoch=64, extra=("--init", str(path))
    )
    tuned = train_classifier.main(args)
    assert tuned["init"] == {"checkpoint": str(path), "run_id": payload["run_id"]}
    assert tuned["run_id"] != payload["run_id"] and tuned["jpeg_fraction"] == 0.5
    assert (
        tuned["jpeg_quality"] == [60, 98] and tuned["config"]["bottleneck"] == payload["config"]["bottleneck"]
    )
    luma_only = ("--init", str(path), "--spectra", "luma")
    other = tiny_classifier_args(
        fake_fashion_root, tmp_path / "x.pt", epochs=1, samples_per_epoch=64, extra=luma_only
    )
    with pytest.raises(UserInputError, match="do not begin --spectra"):
        train_classifier.main(other)


def test_a_spectrum_added_at_the_end_starts_silent():
    """--init into a network with one more input spectrum: the first convolution keeps the
    channels it knew and the new channel's weights start at zero, so the grown network answers
    exactly as the old one did until training teaches it the new input."""
    from training.classifier import widened

    torch.manual_seed(0)
    old = DistortionClassifier(ClassifierConfig(input_size=32, spectra=("luma", "chroma"))).eval()
    grown = ClassifierConfig(input_size=32, spectra=("luma", "chroma", "luma_native"))
    new = DistortionClassifier(grown).eval()
    new.load_state_dict(widened(old.state_dict(), new.state_dict()))
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(new(x), old(x[:, :2]))
    assert (new.features[0].weight[:, 2] == 0).all()


def test_a_hidden_layer_grown_from_a_linear_network_starts_silent(tmp_path):
    """--init a linear network into one with a hidden layer: the hidden layer's output starts at
    zero, so the grown network answers exactly as the old one did; once that output is non-zero it
    counts in the logits (wired in), and the ONNX export carries it."""
    from export.segments import check_parity, export_module
    from training.classifier import widened

    torch.manual_seed(0)
    old = DistortionClassifier(ClassifierConfig(input_size=32, bottleneck=2)).eval()
    new = DistortionClassifier(ClassifierConfig(input_size=32, bottleneck=2, hidden=8)).eval()
    new.load_state_dict(widened(old.state_dict(), new.state_dict()))
    x = torch.rand(4, 4, 32, 32)  # the four default spectra
    torch.testing.assert_close(new(x), old(x))
    with torch.no_grad():
        new.mixer[-1].bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0]))
    torch.testing.assert_close(new(x), old(x) + torch.tensor([0.0, 5.0, 0.0, 0.0]))
    # the routing bias moves the sum, as the export's offsets expect
    torch.testing.assert_close(
        new.with_logit_offsets([1.0, 0.0, 0.0, 0.0])(x), new(x) + torch.tensor([1.0, 0, 0, 0])
    )
    export_module(new, x[:2], tmp_path / "c.onnx", input_name="spectrum", output_name="logits")
    report, _ = check_parity(new, tmp_path / "c.onnx", x, is_logits=True, segment="c")
    assert report.max_abs_diff < 1e-4
    assert ClassifierConfig.from_dict(new.config.to_dict()).hidden == 8
    legacy = old.config.to_dict()
    del legacy["hidden"]  # a checkpoint from before the option
    assert ClassifierConfig.from_dict(legacy).hidden == 0 and old.mixer is None
    with pytest.raises(ValueError, match="hidden"):
        DistortionClassifier(ClassifierConfig(hidden=-1))


def test_init_grows_a_hidden_layer_but_never_resizes_one(tiny_checkpoint, fake_fashion_root, tmp_path):
    path, _ = tiny_checkpoint

    def train(init, hidden, out):
        extra = ("--init", str(init), "--hidden", str(hidden))
        return train_classifier.main(
            tiny_classifier_args(fake_fashion_root, out, epochs=1, samples_per_epoch=64, extra=extra)
        )

    grown = train(path, 8, tmp_path / "h8.pt")
    assert grown["config"]["hidden"] == 8 and "mixer.2.weight" in grown["state_dict"]
    with pytest.raises(UserInputError, match="hidden layer has 8 units, this run's 4"):
        train(tmp_path / "h8.pt", 4, tmp_path / "h4.pt")


def test_a_type_added_at_the_end_keeps_the_trained_rows(fake_fashion_root, tmp_path):
    from training.classifier import widened

    # a classifier from before motion blur was routed: the three types it was trained on
    path = tmp_path / "three.pt"
    three = ("--classes", "pristine,gaussian_blur,gaussian_noise")
    payload = train_classifier.main(
        tiny_classifier_args(fake_fashion_root, path, epochs=1, samples_per_epoch=64, extra=three)
    )
    assert payload["class_names"] == ["pristine", "gaussian_blur", "gaussian_noise"]
    old = payload["state_dict"]
    fresh = {
        k: torch.full((v.shape[0] + 1, *v.shape[1:]), 7.0) if k.startswith("head.") else v
        for k, v in old.items()
    }
    grown = widened(old, fresh)
    for key, value in old.items():
        assert torch.equal(grown[key][: value.shape[0]], value)  # what it knew stays where it was
        if key.startswith("head."):
            assert grown[key].shape[0] == value.shape[0] + 1 and (grown[key][-1] == 7.0).all()
    classes = ",".join(payload["config"]["classes"])
    for listed, match in (
        (f"{classes},motion_blur", None),
        ("pristine,gaussian_noise,gaussian_blur,motion_blur", "do not begin --classes"),
        ("pristine,fog", "unknown distortion type 'fog'"),
        ("gaussian_blur,pristine", "pristine first"),
    ):
        extra = ("--init", str(path), "--classes", listed)
        args = tiny_classifier_args(
            fake_fashion_root, tmp_path / "w.pt", epochs=1, samples_per_epoch=64, extra=extra
        )
        if match is None:
            assert train_classifier.main(args)["class_names"] == listed.split(",")
        else:
            with pytest.raises(UserInputError, match=match):
                train_classifier.main(args)


def test_whole_frames_are_resized_as_the_router_resizes_them():
    if not available_photos("heldout"):
        pytest.skip("opencv-doc / scikit-image photos not installed")
    from core.imaging import resize

    frames = PhotoFrames("heldout", size=48)
    assert len(frames) == len(available_photos("heldout")) and frames.name(0) == frames.files[0].name
    assert (frames.image(0) == resize(frames._images[0], 48)).all()  # the whole picture, squashed
    views = PhotoCrops("heldout", 40, size=48, seed=3, frame_fraction=1.0)
    whole = [resize(im, 48) for im in views._images]
    for i in range(8):  # every view is one photo's whole frame, flipped or not
        v = views.image(i)
        w = whole[i % len(whole)]
        assert (v == w).all() or (
            v == resize(np.ascontiguousarray(views._images[i % len(whole)][:, ::-1]), 48)
        ).all()
    crops = PhotoCrops("heldout", 40, size=48, seed=3, frame_fraction=0.0)
    assert sum((crops.image(i) == whole[i % len(whole)]).all() for i in range(8)) < 8


def _cli(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)


def test_cli_wrong_checkpoint_files(tmp_path, tiny_checkpoint):
    junk = tmp_path / "junk.pt"
    junk.write_text("this is not a checkpoint")
    r = _cli("training.eval_classifier", "--checkpoint", str(junk))
    assert r.returncode == 2 and "not a readable checkpoint" in r.stderr and "Traceback" not in r.stderr
    other = tmp_path / "other.pt"
    torch.save({"kind": "expert", "state_dict": {}}, other)
    r = _cli("training.eval_classifier", "--checkpoint", str(other))
    assert r.returncode == 2 and "expected distortion_classifier" in r.stderr


def test_cli_unreadable_image_in_dataset(tmp_path):
    root = tmp_path / "ds" / "cls"
    root.mkdir(parents=True)
    for i in range(10):
        (root / f"{i}.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (root / "ok.png").write_bytes(encode_image(torch.zeros(8, 8, 3, dtype=torch.uint8).numpy()))
    r = _cli(
        "training.distort",
        "--data",
        str(tmp_path / "ds"),
        "--split",
        "train",
        "--distortion-type",
        "gaussian_blur",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and ".jpg" in r.stderr


def test_lossless_only_levels_never_cross_a_jpeg_wire():
    """Weak noise on a detailed photo is not sent as JPEG in training (the encoder hides it); every
    other level is, in the drawn share."""
    from training.datasets import DistortedDataset, DistortionPolicy

    Colour = colour_source(60, 40)

    def wires(level):
        ds = DistortedDataset(
            Colour(),
            size=32,
            policy=DistortionPolicy(fixed=("gaussian_noise", level), seed=5),
            jpeg_fraction=1.0,
            lossless_only=(("gaussian_noise", 5), ("gaussian_noise", 10)),
        )
        return [ds.wire_of(i, ("gaussian_noise", level)) for i in range(len(ds))]

    assert all(w.lossless for w in wires(5)) and all(w.lossless for w in wires(10))
    assert not any(w.lossless for w in wires(20))
    with pytest.raises(ValueError, match="not a level of gaussian_noise"):
        DistortedDataset(Colour(), size=32, policy=DistortionPolicy(), lossless_only=(("gaussian_noise", 7),))


def test_only_the_photo_views_keep_weak_noise_lossless(fake_fashion_root, monkeypatch):
    import numpy as np

    from training import photos

    class FakePhotos(photos.PhotoCrops):
        def __post_init__(self):
            self._images = [np.full((40, 40, 3), 100, np.uint8)]

    monkeypatch.setattr(train_classifier, "PhotoCrops", FakePhotos)
    args = tiny_classifier_args(fake_fashion_root, Path("unused.pt"), epochs=1, samples_per_epoch=64)
    args.photo_fraction = 0.5
    train_classifier._check_args(args)
    train_parts, _, val = train_classifier.build_datasets(args)
    fashion, photo_views = train_parts
    assert fashion.lossless_only == frozenset() and fashion.jpeg_fraction == 0.5
    assert photo_views.lossless_only == {("gaussian_noise", 5.0), ("gaussian_noise", 10.0)}
    assert [part.lossless_only for part in val.datasets] == [fashion.lossless_only, photo_views.lossless_only]
