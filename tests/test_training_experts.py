"""Backbone and expert training on tiny generated data: checkpoints, frozen backbone, calibration."""

import json

import pytest
import torch

from tests.conftest import COMMON
from training import train_backbone, train_expert
from training.engine import backbone_hash, load_early_exit


def _expert(fake_fashion_root, backbone, out, *extra):
    args = train_expert.get_args_parser().parse_args(
        [
            "--data-root",
            str(fake_fashion_root),
            "--backbone",
            str(backbone),
            "--out",
            str(out),
            "--distortion",
            "gaussian_noise",
            *COMMON,
            *extra,
        ]
    )
    return train_expert.main(args)


def test_backbone_checkpoint(backbone):
    model, payload = load_early_exit(backbone, role="backbone")
    assert payload["exit_after"] == [3, 10, 14]
    assert len(payload["temperatures"]) == 4 and all(t > 0 for t in payload["temperatures"])
    assert payload["preprocessing"]["size"] == 32
    assert payload["backbone_hash"] == backbone_hash(model)
    assert len(payload["class_names"]) == 10


def test_expert_leaves_backbone_bitwise_unchanged(fake_fashion_root, backbone, tmp_path):
    before, _ = load_early_exit(backbone)
    _expert(fake_fashion_root, backbone, tmp_path / "expert.pt")
    after, payload = load_early_exit(tmp_path / "expert.pt", role="expert")
    for (name, a), (_, b) in zip(
        before.stages.state_dict().items(), after.stages.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name  # parameters and BN buffers alike
    heads_changed = any(
        not torch.equal(a, b)
        for a, b in zip(before.heads.state_dict().values(), after.heads.state_dict().values(), strict=True)
    )
    assert heads_changed
    assert payload["distortion"] == "gaussian_noise" and not payload["adapt_bn"]


def test_adapt_bn_moves_only_bn_statistics(fake_fashion_root, backbone, tmp_path):
    before, _ = load_early_exit(backbone)
    _expert(fake_fashion_root, backbone, tmp_path / "expert_bn.pt", "--adapt-bn")
    after, payload = load_early_exit(tmp_path / "expert_bn.pt")
    a, b = before.stages.state_dict(), after.stages.state_dict()
    stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert any(not torch.equal(a[k], b[k]) for k in stats)
    params = dict(before.stages.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in params)
    assert payload["adapt_bn"] and payload["backbone_hash"] != backbone_hash(before)


def test_slim_expert_loads_as_the_full_one(fake_fashion_root, backbone, tmp_path):
    import shutil

    from core.errors import UserInputError
    from training import slim
    from training.checkpoints import load_checkpoint

    shutil.copy(backbone, tmp_path / "backbone.pt")
    full = tmp_path / "expert_bn.pt"
    _expert(fake_fashion_root, backbone, full, "--adapt-bn")
    full_model, full_payload = load_early_exit(full)
    size_before = full.stat().st_size
    slim.main(slim.get_args_parser().parse_args(["--backbone", str(tmp_path / "backbone.pt"), str(full)]))
    assert full.stat().st_size < size_before / 5  # heads + BN statistics only
    slim_size = full.stat().st_size
    slim.main(slim.get_args_parser().parse_args(["--backbone", str(tmp_path / "backbone.pt"), str(full)]))
    assert full.stat().st_size == slim_size  # slimming twice keeps it slim
    with pytest.raises(UserInputError, match="expert checkpoint and its backbone"):
        slim.main(slim.get_args_parser().parse_args(["--backbone", str(full), str(tmp_path / "backbone.pt")]))
    model, payload = load_early_exit(full, role="expert")
    for (name, a), (_, b) in zip(full_model.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert payload["backbone_hash"] == full_payload["backbone_hash"]
    # a backbone of another run beside it is refused, not silently combined
    train_backbone.main(
        train_backbone.get_args_parser().parse_args(
            [
                "--data-root",
                str(fake_fashion_root),
                "--out",
                str(tmp_path / "backbone.pt"),
                "--weights",
                "none",
                "--input-size",
                "32",
                *COMMON,
            ]
        )
    )
    with pytest.raises(UserInputError, match="needs backbone run"):
        load_checkpoint(full, "early_exit")


def test_evaluate_writes_table_csv_and_plots(
    fake_fashion_root, backbone, experts, tiny_classifier, exported, tmp_path
):
    import csv

    from core.manifest import export_file_hashes
    from training import evaluate

    args = evaluate.get_args_parser().parse_args(
        [
            "--backbone",
            str(backbone),
            "--experts",
            *experts,
            "--classifier",
            str(tiny_classifier),
            "--models",
            str(exported[0]),
            "--data-root",
            str(fake_fashion_root),
            "--limit",
            "30",
            "--workers",
            "0",
            "--quiet",
            "--out",
            str(tmp_path),
        ]
    )
    evaluate.main(args)
    run = json.loads((tmp_path / "accuracy_run.json").read_text())
    assert run["artifacts"]["sha256"] == export_file_hashes(exported[0])
    assert set(run["artifacts"]["checkpoints"]) == {str(backbone), str(tiny_classifier), *experts}
    rows = list(csv.DictReader(open(tmp_path / "accuracy.csv")))
    # per wire: 16 cells (pristine, five levels each of blur, noise and motion blur) x 5 p_tar x
    # (conventional, oracle, routed), and motion blur's 5 cells x 5 p_tar on its fallback's expert
    per_wire = 16 * 5 * 3 + 5 * 5
    assert len(rows) == 2 * per_wire
    assert {r["model"] for r in rows} == {"conventional", "expert_oracle", "expert_routed", "expert_fallback"}
    assert {r["distortion"] for r in rows if r["model"] == "expert_fallback"} == {"motion_blur"}
    assert [r["wire"] for r in rows[::per_wire]] == ["png", "jpeg:90"] and run["wires"] == [
        "png",
        "jpeg:90",
    ]
    # the same cell on the two wires: the same images, and JPEG changes what the models see
    cell = [(r["model"], r["distortion"], r["level"], r["p_tar"]) for r in rows]
    assert cell[:per_wire] == cell[per_wire:]
    for r in rows:
        p_edge, overall = float(r["p_edge"]), float(r["overall_acc"])
        assert 0 <= p_edge <= 1 and 0 <= overall <= 1
        edge = float(r["edge_acc"]) if r["edge_acc"] else 0.0
        cloud = float(r["cloud_acc"]) if r["cloud_acc"] else 0.0
        assert overall == pytest.approx(p_edge * edge + (1 - p_edge) * cloud, abs=1e-5)
        rates = sum(float(r[f"exit_rate_{k}"]) for k in range(4))
        assert rates == pytest.approx(1.0)
    # a higher threshold never lets more samples exit at the edge
    for model in ("conventional", "expert_oracle"):
        p = [
            float(r["p_edge"])
            for r in rows
            if r["model"] == model
            and r["wire"] == "png"
            and r["distortion"] == "gaussian_noise"
            and r["level"] == "20"
        ]
        assert p == sorted(p, reverse=True)
    md = (tmp_path / "accuracy.md").read_text()
    assert "| gaussian_blur | 3 |" in md and "| motion_blur | 11 |" in md and "ECE before" in md
    assert "## Sent as png" in md and "## Sent as jpeg:90" in md
    assert (tmp_path / "accuracy_vs_level.png").stat().st_size > 1000
    assert (tmp_path / "p_edge_vs_ptar.png").stat().st_size > 1000


def test_evaluate_refuses_experts_of_another_backbone(fake_fashion_root, backbone, experts, tmp_path):
    from core.errors import UserInputError
    from training import evaluate

    other = tmp_path / "other_backbone.pt"
    train_backbone.main(
        train_backbone.get_args_parser().parse_args(
            [
                "--data-root",
                str(fake_fashion_root),
                "--out",
                str(other),
                "--weights",
                "none",
                "--input-size",
                "32",
                *COMMON,
            ]
        )
    )
    args = evaluate.get_args_parser().parse_args(
        [
            "--backbone",
            str(other),
            "--experts",
            *experts,
            "--classifier",
            "none",
            "--data-root",
            str(fake_fashion_root),
            "--limit",
            "10",
            "--out",
            str(tmp_path),
        ]
    )
    with pytest.raises(UserInputError, match="another backbone run"):
        evaluate.main(args)
