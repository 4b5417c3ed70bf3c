"""Backbone and expert training on tiny generated data: checkpoints, frozen backbone, calibration."""

import pytest
import torch

from training import train_backbone, train_expert
from training.engine import backbone_hash, load_early_exit

COMMON = ["--train-limit", "64", "--val-limit", "20", "--epochs", "1", "--batch-size", "16",
          "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def backbone(fake_fashion_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bb") / "backbone.pt"
    args = train_backbone.get_args_parser().parse_args(
        ["--data-root", str(fake_fashion_root), "--out", str(out), "--weights", "none",
         "--input-size", "32", *COMMON])
    train_backbone.main(args)
    return out


def _expert(fake_fashion_root, backbone, out, *extra):
    args = train_expert.get_args_parser().parse_args(
        ["--data-root", str(fake_fashion_root), "--backbone", str(backbone), "--out", str(out),
         "--distortion", "gaussian_noise", *COMMON, *extra])
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
    for (name, a), (_, b) in zip(before.stages.state_dict().items(), after.stages.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name  # parameters and BN buffers alike
    heads_changed = any(not torch.equal(a, b) for a, b in zip(before.heads.state_dict().values(),
                                                             after.heads.state_dict().values(),
                                                             strict=True))
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
