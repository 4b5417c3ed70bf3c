"""The shipped bundle: the trained models behind docs/results, tracked in models/.

Parametrised over what ships (every manifest, every checkpoint, every result file that names its
artifacts): each manifest's hashes match its files, the model files stay within the budget git
should carry, the PyTorch checkpoints load (slim experts included) and belong to the exported
runs, and each result file names exactly the shipped files it was made with and a command that
can run as written from the repository root.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from core.manifest import Manifest, export_file_hashes

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models" / "onnx"
CHECKPOINTS = ROOT / "models" / "torch"
BUDGET_MB = 60
MANIFESTS = sorted(p for p in MODELS.glob("*.json") if p.name != "export_report.json")
RESULTS_WITH_ARTIFACTS = [
    ROOT / "docs/results/accuracy_run.json",
    ROOT / "docs/results/parity.json",
    ROOT / "docs/results/classifier.json",
]
EXPERTS = (
    "pristine",
    "gaussian_blur",
    "gaussian_noise",
    "motion_blur",
    "gaussian_blur_adapt_bn",
    "gaussian_noise_adapt_bn",
)
# checkpoint -> the manifest exported from it (the conventional model is the backbone checkpoint)
CHECKPOINT_MANIFESTS = {
    "backbone.pt": "edge_conventional.json",
    "classifier.pt": "distortion_classifier.json",
    "classifier_jpeg.pt": "distortion_classifier.json",  # the network that answers JPEG bodies
    **{f"expert_{e}.pt": f"edge_{e}.json" for e in EXPERTS},
}


def test_the_bundle_is_there():
    assert MANIFESTS, "models/onnx holds no manifest: run scripts/reproduce_accuracy.sh"
    names = {p.stem for p in MANIFESTS}
    for expert in (*EXPERTS, "conventional"):
        assert {f"edge_{expert}", f"cloud_{expert}"} <= names
    assert "distortion_classifier" in names
    assert {p.name for p in CHECKPOINTS.glob("*.pt")} == set(CHECKPOINT_MANIFESTS)


def test_no_file_outside_the_manifests():
    """A stale segment of an earlier export would be shipped (and counted) without being used."""
    listed = {name for p in MANIFESTS for name in Manifest.load(p).files}
    extra = (
        {str(p.relative_to(MODELS)) for p in MODELS.rglob("*") if p.is_file()}
        - listed
        - {p.name for p in MANIFESTS}
        - {"export_report.json"}
    )
    assert not extra, f"files no manifest lists: {sorted(extra)}"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_manifest_hashes_match_files(path):
    manifest = Manifest.load(path)
    manifest.verify_files(MODELS)
    assert manifest.files, "a manifest must list its files with their hashes"


def test_model_files_within_budget():
    files = [*MODELS.rglob("*.onnx"), *CHECKPOINTS.glob("*.pt")]
    total_mb = sum(p.stat().st_size for p in files) / 2**20
    assert total_mb <= BUDGET_MB, f"{total_mb:.1f} MB of model files, budget {BUDGET_MB} MB"


def test_backbone_segments_stored_once():
    hashes = {}
    for path in MODELS.rglob("*.onnx"):
        hashes.setdefault(path.read_bytes(), []).append(path)
    duplicates = [paths for paths in hashes.values() if len(paths) > 1]
    assert not duplicates, duplicates


@pytest.mark.parametrize("name", sorted(CHECKPOINT_MANIFESTS))
def test_checkpoints_load_and_match_the_export(name):
    from training.checkpoints import load_checkpoint

    kind = "distortion_classifier" if name.startswith("classifier") else "early_exit"
    payload = load_checkpoint(CHECKPOINTS / name, kind)  # slim experts are rebuilt from backbone.pt
    manifest = Manifest.load(MODELS / CHECKPOINT_MANIFESTS[name])
    if name == "classifier_jpeg.pt":  # the manifest's second network, the one for JPEG bodies
        assert manifest.classifier_formats == ("any", "jpeg")
        assert payload["run_id"] == manifest.preprocessing["run_ids"][1]
        return
    assert payload["run_id"] == manifest.run_id, f"{name} is not the run exported to {manifest.name}"
    if kind == "early_exit":
        assert payload["backbone_hash"] == manifest.backbone_hash


@pytest.mark.parametrize("path", RESULTS_WITH_ARTIFACTS, ids=lambda p: p.name)
def test_results_name_the_shipped_artifacts(path):
    result = json.loads(path.read_text())
    artifacts = result["artifacts"]
    shipped = export_file_hashes(MODELS)
    assert artifacts["sha256"]
    assert all(shipped[name] == digest for name, digest in artifacts["sha256"].items())
    from core.manifest import sha256_file

    assert artifacts["checkpoints"]
    for name, digest in artifacts["checkpoints"].items():
        assert sha256_file(ROOT / name) == digest, name
    # the command runs as written from the repository root: every path it names is in the repo
    words = shlex.split(result["command"])
    assert words[:2] == ["python", "-m"]
    assert "model_store" not in words, "a fresh clone has no archives: name models/onnx instead"
    for word in words:
        if word.startswith(("models/", "docs/")):
            assert (ROOT / word).exists() or word.startswith("docs/results"), word


def test_parity_of_the_shipped_models():
    parity = json.loads((ROOT / "docs/results/parity.json").read_text())
    assert parity["agreement"] >= 0.999 and parity["n"] >= 1000


def test_cloud_config_is_the_edge_config_on_other_ports():
    def settings(name):
        lines = (ROOT / name).read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))

    edge, cloud = settings("config.properties"), settings("config.cloud.properties")
    ports = {
        "inference_address",
        "management_address",
        "metrics_address",
        "grpc_inference_port",
        "grpc_management_port",
    }
    assert {k: v for k, v in edge.items() if k not in ports} == {
        k: v for k, v in cloud.items() if k not in ports
    }
    assert all(edge[k] != cloud[k] for k in ports)
