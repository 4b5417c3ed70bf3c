"""docs/adding-a-distortion.md followed on tiny data with a toy type, then plugged into a running edge.

The only source written is the guide's step 1, the registry entry (here on a copy of the registry,
restored after the module); everything else is the guide's commands: the expert, the classifier
with the type as a class (fine-tuned from the classifier without it), the export, the archives and
the registration. Live: with the first experts served and the router up, a frame of the new type
falls back to the Gaussian-blur expert as the classifier's manifest says (and the answer says so);
the new expert, registered through the management API, answers without a restart; unregistered
again, the fallback returns.
"""

import numpy as np
import pytest
import requests
import torch

from benchmarks.lib.live import LiveSystem
from core import distortions
from core.experts import archive_name
from core.imaging import encode_image
from core.manifest import Manifest
from edge_router import register
from export import __main__ as export_cli
from export import archive
from tests.conftest import COMMON, textured_image, tiny_classifier_args, wait_for
from training import evaluate, train_classifier, train_expert
from training.checkpoints import load_checkpoint, save_checkpoint
from training.classifier import ClassifierConfig, DistortionClassifier

pytestmark = pytest.mark.integration

TOY = "checker"
# the experts served before the toy's
BASE = ("pristine", "gaussian_blur", "gaussian_noise", "motion_blur")


def checker(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """The toy: a checkerboard of `level`-pixel squares, +-40 levels, at a random phase."""
    dy, dx = rng.integers(0, int(level), size=2)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    board = (((yy + dy) // int(level) + (xx + dx) // int(level)) % 2) * 80 - 40
    return np.clip(image.astype(np.int16) + board[..., None], 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def toy_type():
    """Step 1 of the guide: the registry entry, with its fallback."""
    saved = dict(distortions.REGISTRY)
    distortions.register(TOY, levels=(2, 4), fallback="gaussian_blur")(checker)
    yield TOY
    distortions.REGISTRY.clear()
    distortions.REGISTRY.update(saved)


@pytest.fixture(scope="module")
def toy_store(toy_type, fake_fashion_root, backbone, experts, tiny_classifier, tmp_path_factory):
    """Steps 3-5 of the guide: the expert, the classifier, the export and the archives."""
    work = tmp_path_factory.mktemp("toy_guide")
    expert = work / f"expert_{TOY}.pt"
    argv = ["--data-root", str(fake_fashion_root), "--backbone", str(backbone), "--distortion", TOY]
    train_expert.main(train_expert.get_args_parser().parse_args([*argv, "--out", str(expert), *COMMON]))
    classes = ",".join((*distortions.DISTORTION_CLASSES, TOY))
    classifier = work / "classifier.pt"
    extra = ["--classes", classes, "--init", str(tiny_classifier)]
    train_classifier.main(
        tiny_classifier_args(fake_fashion_root, classifier, epochs=1, samples_per_epoch=64, extra=extra)
    )
    always_toy(classifier)
    exported = work / "exported"
    argv = ["--backbone", str(backbone), "--experts", *experts, str(expert), "--classifier", str(classifier)]
    argv += ["--data-root", str(fake_fashion_root), "--parity-images", "4", "--out", str(exported)]
    export_cli.main(export_cli.get_args_parser().parse_args(argv))
    store = work / "store"
    archive.main(
        archive.get_args_parser().parse_args(["--exported", str(exported), "--model-store", str(store)])
    )
    # step 7: the accuracy experiment over the classifier's classes, the toy's cells included
    argv = ["--backbone", str(backbone), "--experts", *experts, str(expert), "--classifier", str(classifier)]
    argv += ["--data-root", str(fake_fashion_root), "--limit", "12", "--wires", "png", "--workers", "0"]
    argv += ["--out", str(work / "results"), "--quiet"]
    rows = evaluate.main(evaluate.get_args_parser().parse_args(argv))
    return exported, store, rows


def always_toy(path) -> None:
    """Not a guide step: the tiny classifier, trained for seconds, is pushed to always answer the
    toy (its output bias, the mechanism `training.route_bias` uses), so that every request of the
    live test takes the path under test: routing to a type's expert or to its fallback."""
    payload = load_checkpoint(path, "distortion_classifier")
    model = DistortionClassifier(ClassifierConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    offsets = torch.zeros(len(model.config.classes))
    offsets[model.config.classes.index(TOY)] = 1000.0
    save_checkpoint(path, {**payload, "state_dict": model.with_logit_offsets(offsets).state_dict()})


def test_the_guide_makes_a_classifier_that_knows_the_type_and_its_fallback(toy_store, tiny_classifier):
    exported, store, rows = toy_store
    manifest = Manifest.load(exported / "distortion_classifier.json")
    assert manifest.class_names == (*distortions.DISTORTION_CLASSES, TOY)
    # the toy's fallback beside the one motion blur, a class before the toy, already declared
    assert manifest.fallbacks == {"motion_blur": "gaussian_blur", TOY: "gaussian_blur"}
    assert Manifest.load(exported / f"edge_{TOY}.json").distortion == TOY
    assert {f"{role}_{TOY}.mar" for role in ("edge", "cloud")} <= {p.name for p in store.iterdir()}
    # fine-tuned from the classifier without the type: what it knew is where it was
    old = load_checkpoint(tiny_classifier, "distortion_classifier")
    assert old["config"]["classes"] == list(distortions.DISTORTION_CLASSES)
    # step 7: the evaluation covers the toy's levels, the fallback's expert beside its own
    toy_rows = {(r["model"], r["level"]) for r in rows if r["distortion"] == TOY}
    for level in (2, 4):
        assert {("conventional", level), ("expert_routed", level), ("expert_fallback", level)} <= toy_rows
    # fallback rows for the types with a fallback only: the toy and motion blur
    assert {r["distortion"] for r in rows if r["model"] == "expert_fallback"} == {TOY, "motion_blur"}


@pytest.fixture(scope="module")
def edge_without_the_toy(toy_store, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("toy_run")
    models = {role: [archive_name(role, d) for d in BASE] for role in ("edge", "cloud")}
    live = LiveSystem(
        toy_store[1],
        run_dir,
        edge_models=models["edge"],
        cloud_models=models["cloud"],
        router_options=["--deadline-ms", "10000", "--refresh-s", "0.5"],
    )
    with live:
        yield live


def _answer(live) -> dict:
    body = encode_image(textured_image(7, 48), "png")
    r = requests.post(f"{live.url}/v1/classify", data=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _served(live) -> set:
    return set(requests.get(f"{live.url}/v1/experts", timeout=10).json()["experts"])


def test_a_new_type_plugs_into_a_running_edge_and_falls_back_when_removed(edge_without_the_toy):
    live = edge_without_the_toy
    args = ["--run-dir", str(live.run_dir)]
    for role, inst in live.insts.items():
        args += [f"--{role}-url", inst.inference_url, f"--{role}-management-url", inst.management_url]
    parser = register.get_args_parser()
    fallback = {"from": TOY, "reason": f"no expert registered for {TOY}"}

    before = _answer(live)
    assert (before["distortion"], before["expert"], before["fallback"]) == (TOY, "gaussian_blur", fallback)

    register.main(parser.parse_args(["add", TOY, *args]))  # the guide's step 6
    assert wait_for(lambda: TOY in _served(live))
    plugged = _answer(live)
    assert (plugged["distortion"], plugged["expert"]) == (TOY, TOY) and "fallback" not in plugged

    register.main(parser.parse_args(["remove", TOY, *args]))
    assert wait_for(lambda: TOY not in _served(live))
    after = _answer(live)
    assert (after["expert"], after["fallback"]) == ("gaussian_blur", fallback)
