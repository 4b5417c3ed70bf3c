"""training.route_bias: offsets that lower the misroute cost without giving up labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.distortions import DISTORTION_CLASSES
from core.errors import UserInputError
from training import route_bias

CLASSES = ["pristine", "gaussian_blur", "gaussian_noise"]
COSTS = {  # points lost when each expert answers the condition instead of its own
    "pristine 0": np.array([0.0, 0.1, 0.6]),
    "gaussian_noise 20": np.array([7.0, 8.0, 0.0]),
}


def _logits(p_noise_of_noisy: list[float], p_noise_of_clean: list[float]) -> tuple[np.ndarray, list[str]]:
    rows, conditions = [], []
    for p, condition in [(p, "gaussian_noise 20") for p in p_noise_of_noisy] + [
        (p, "pristine 0") for p in p_noise_of_clean
    ]:
        rows.append(np.log([1 - p - 0.01, 0.01, p]))
        conditions.append(condition)
    return np.array(rows), conditions


def test_a_doubtful_noisy_frame_goes_to_the_noise_expert_when_no_label_is_lost():
    # noisy frames at p(noise) 0.40 / 0.45 are called clean; clean frames sit at p(noise) <= 0.1
    logits, conditions = _logits([0.40, 0.45, 0.9, 0.9], [0.05, 0.1, 0.08, 0.02])
    grid = route_bias.parse_grid("-1:2:0.25")
    offsets, after, before = route_bias.best_offsets(
        logits, conditions, COSTS, grid, classes=CLASSES, tolerance=1e-9, max_label_loss=0.0
    )
    assert before == pytest.approx(7.0 * 2 / 8) and after == 0.0
    assert offsets[0] == 0 and offsets[2] > 0  # towards noise, and no further than needed
    assert offsets[2] == min(o for o in grid if (logits[:2] + [0, 0, o]).argmax(1).tolist() == [2, 2])


def test_the_label_constraint_holds_back_the_cheap_misroutes():
    # a clean frame at p(noise) 0.45 would go to the noise expert with the offset the cost asks for
    logits, conditions = _logits([0.40], [0.45, 0.05, 0.05, 0.05])
    grid = route_bias.parse_grid("-1:2:0.25")
    free, _, _ = route_bias.best_offsets(
        logits, conditions, COSTS, grid, classes=CLASSES, tolerance=1e-9, max_label_loss=100.0
    )
    held, _, _ = route_bias.best_offsets(
        logits, conditions, COSTS, grid, classes=CLASSES, tolerance=1e-9, max_label_loss=0.0
    )
    assert (logits[1] + free).argmax() == 2  # unconstrained: the clean frame is given up (0.6 points)
    assert (logits + held).argmax(1)[1:].tolist() == [0, 0, 0, 0]  # constrained: every clean label kept
    flat = route_bias.best_offsets(
        logits[1:], conditions[1:], COSTS, grid, classes=CLASSES, tolerance=1e-9, max_label_loss=0.0
    )
    assert flat[0].tolist() == [0.0, 0.0, 0.0]  # nothing to gain: the network stays as it was


def test_costs_come_from_a_misroute_result(tmp_path):
    path = tmp_path / "misroute.json"
    path.write_text(
        json.dumps({"accuracy": {"gaussian_noise 20": dict(zip(CLASSES, (0.79, 0.78, 0.865), strict=True))}})
    )
    costs = route_bias.misroute_costs(str(path), CLASSES)
    np.testing.assert_allclose(costs["gaussian_noise 20"], [7.5, 8.5, 0.0])
    with pytest.raises(UserInputError, match="not a misroute result"):
        route_bias.misroute_costs(str(tmp_path / "missing.json"), CLASSES)
    for bad in ("1:0:0.5", "0:1:0", "a:b:c"):
        with pytest.raises(UserInputError, match="--grid"):
            route_bias.parse_grid(bad)


def test_the_shipped_jpeg_network_records_its_bias():
    from pathlib import Path

    from training.checkpoints import load_checkpoint

    path = Path(__file__).resolve().parent.parent / "models/torch/classifier_jpeg.pt"
    payload = load_checkpoint(path, "distortion_classifier")
    record, shipped_classes = payload["route_bias"], payload["config"]["classes"]
    assert shipped_classes == list(DISTORTION_CLASSES)  # the shipped network answers every routed type
    assert record["command"].startswith("python -m training.route_bias")
    assert record["mean_cost_points"]["after"] <= record["mean_cost_points"]["before"]
    assert set(record["offsets"]) == set(shipped_classes) and record["offsets"]["pristine"] == 0.0
    band = record["low_quality"]  # JPEG bodies below a quality: offsets of their own, on top
    assert band["below"] == 85 and len(band["offsets"]) == len(shipped_classes)
    fit = record["low_quality_fit"]
    assert fit["wires"] and all(int(w.split(":")[1]) < band["below"] for w in fit["wires"])
    assert all(int(w.split(":")[1]) >= band["below"] for w in record["wires"])


def test_wires_below_the_quality_form_their_own_band():
    from core.cli import parse_wires

    wires = parse_wires(["jpeg:90", "jpeg:75", "png", "jpeg:85:444", "jpeg:84:444"])
    baked, low = route_bias.split_bands(wires, 85)
    assert [str(w) for w in baked] == ["jpeg:90", "png", "jpeg:85:444"]
    assert [str(w) for w in low] == ["jpeg:75", "jpeg:84:444"]
    assert route_bias.split_bands(wires, 0) == (wires, [])


def test_a_band_alone_is_refused(tmp_path):
    args = route_bias.get_args_parser().parse_args(
        ["--checkpoint", "x.pt", "--out", str(tmp_path / "y.pt"), "--wires", "jpeg:60", "jpeg:75"]
    )
    with pytest.raises(UserInputError, match="at least one at or above"):
        route_bias.main(args)
