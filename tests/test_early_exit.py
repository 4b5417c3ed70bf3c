"""The early-exit MobileNetV2: placement of the exits, stages, equality with torchvision."""

import pytest
import torch
import torchvision

from core.errors import UserInputError
from training.early_exit import (
    NUM_EXITS,
    EarlyExitMobileNetV2,
    ExitConfig,
    conv_macs_per_block,
    describe,
    place_exits,
)


def test_exits_where_cumulative_macs_cross_25_50_75_percent():
    features = torchvision.models.mobilenet_v2().features
    macs = conv_macs_per_block(features, 224)
    exits = place_exits(macs, (0.25, 0.5, 0.75))
    assert exits == (3, 10, 14)
    total = sum(macs)
    for e, f in zip(exits, (0.25, 0.5, 0.75), strict=True):
        assert sum(macs[: e + 1]) / total >= f > sum(macs[:e]) / total


@pytest.mark.parametrize(
    "size,shapes",
    [
        (224, [[24, 56, 56], [64, 14, 14], [160, 7, 7], [1280, 7, 7]]),
        (64, [[24, 16, 16], [64, 4, 4], [160, 2, 2], [1280, 2, 2]]),
    ],
)
def test_boundaries_and_shapes(size, shapes):
    rows = describe(ExitConfig(input_size=size))
    assert [r["shape"] for r in rows] == shapes
    assert [r["blocks"] for r in rows] == [
        "features[0..3]",
        "features[4..10]",
        "features[11..14]",
        "features[15..18]",
    ]
    assert rows[-1]["macs_fraction"] == pytest.approx(1.0)


def test_final_exit_equals_torchvision_with_same_weights():
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2(num_classes=10).eval()
    model = EarlyExitMobileNetV2(ExitConfig(num_classes=10)).eval()
    model.load_torchvision_state(reference.state_dict())
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        expected = reference(x)
    assert len(logits) == NUM_EXITS
    torch.testing.assert_close(logits[-1], expected, rtol=0, atol=1e-5)
    # every block of torchvision's features runs, none dropped
    assert sum(len(s) for s in model.stages) == len(reference.features)


def test_stages_are_separately_callable():
    model = EarlyExitMobileNetV2(ExitConfig(num_classes=7)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = model(x)
        h = x
        for i in range(NUM_EXITS):
            h = model.forward_stage(i, h)
            torch.testing.assert_close(model.forward_head(i, h), full[i])
    assert all(t.shape == (2, 7) for t in full)


def test_explicit_exit_indices_and_errors():
    model = EarlyExitMobileNetV2(ExitConfig(exit_after=(2, 9, 14)))
    assert model.exit_after == (2, 9, 14)
    with pytest.raises(UserInputError, match="3 increasing block indices"):
        EarlyExitMobileNetV2(ExitConfig(exit_after=(9, 2, 14)))
    with pytest.raises(UserInputError, match="two branches after one block"):
        place_exits([1] * 4 + [100] + [1] * 4, (0.25, 0.5, 0.75))


def test_config_roundtrip():
    c = ExitConfig(num_classes=5, exit_after=(3, 10, 14))
    assert ExitConfig.from_dict(c.to_dict()) == c
