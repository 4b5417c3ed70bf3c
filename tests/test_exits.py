"""The exit rule, softmax with temperature and ECE."""

import numpy as np
import pytest

from core.exits import (
    confidence_and_class,
    confident,
    decide,
    exit_here,
    expected_calibration_error,
    softmax,
)


def test_softmax_temperature():
    logits = np.array([[2.0, 0.0, 0.0]])
    assert softmax(logits).sum() == pytest.approx(1.0)
    assert softmax(logits, 2.0)[0, 0] < softmax(logits, 1.0)[0, 0] < softmax(logits, 0.5)[0, 0]
    conf, cls = confidence_and_class(np.array([[0.0, 5.0], [3.0, 1.0]]))
    assert list(cls) == [1, 0] and (conf > 0.5).all()


def test_rule_per_sample():
    conf = np.array(
        [
            [0.9, 0.1, 0.1, 0.1],  # first branch answers
            [0.5, 0.85, 0.95, 0.2],  # second branch is the first to reach 0.8
            [0.1, 0.2, 0.3, 0.85],  # offloaded, final reaches p_tar
            [0.6, 0.7, 0.3, 0.5],  # nobody reaches: the most confident (branch 1) answers
        ]
    )
    pred = np.array([[1, 2, 3, 4]] * 4)
    d = decide(conf, pred, 0.8)
    assert list(d.exit_index) == [0, 1, 3, 1]
    assert list(d.prediction) == [1, 2, 4, 2]
    assert list(d.at_edge) == [True, True, False, False]
    np.testing.assert_allclose(d.confidence, [0.9, 0.85, 0.85, 0.7])


def test_threshold_is_inclusive():
    d = decide(np.array([[0.8, 0.0, 0.0, 0.0]]), np.zeros((1, 4), int), 0.8)
    assert d.at_edge[0] and d.exit_index[0] == 0


def test_ece():
    conf = np.full(1000, 0.9)
    assert expected_calibration_error(conf, np.arange(1000) % 10 != 0) == pytest.approx(0.0)
    assert expected_calibration_error(conf, np.zeros(1000)) == pytest.approx(0.9)


def test_temperature_scaling_fixes_overconfidence():
    from training.calibration import calibrate_exits, fit_temperature

    rng = np.random.default_rng(0)
    # labels drawn from softmax(z): z is calibrated at T = 1, so 3 * z needs T = 3
    z = rng.normal(0, 2, (6000, 5))
    p = softmax(z)
    labels = (p.cumsum(axis=1) < rng.random((6000, 1))).sum(axis=1)
    assert fit_temperature(3 * z, labels) == pytest.approx(3.0, rel=0.1)
    report = calibrate_exits([3 * z, z], labels)
    assert report["ece_after"][0] < 0.3 * report["ece_before"][0]
    assert report["ece_after"][0] < 0.03


def sigmoid_confidence(margin: float, temperature: float) -> float:
    """The rule written out for two classes: max softmax of (margin, 0) / T, not via core.exits."""
    return 1.0 / (1.0 + np.exp(-abs(margin) / temperature))


def test_confident_is_inclusive_and_takes_per_sample_thresholds():
    conf = np.array([0.5, 0.5, 0.8, 0.79])
    assert list(confident(conf, 0.5)) == [True, True, True, True]
    assert list(confident(conf, np.array([0.5, 0.6, 0.8, 0.8]))) == [True, False, True, False]


def test_exit_here_is_inclusive_at_the_threshold():
    # equal logits give a confidence of exactly 0.5 at any temperature: it must exit at p_tar 0.5
    conf, cls, here = exit_here(np.zeros((2, 2)), 3.0, np.array([0.5, 0.5000001]))
    assert list(conf) == [0.5, 0.5] and list(cls) == [0, 0]
    assert list(here) == [True, False]


def test_exit_here_applies_the_temperature():
    logits = np.array([[2.0, 0.0], [0.0, 1.0]])
    for temperature, expected in ((2.0, [False, False]), (0.5, [True, True])):
        conf, cls, here = exit_here(logits, temperature, 0.8)
        want = [sigmoid_confidence(2.0, temperature), sigmoid_confidence(1.0, temperature)]
        np.testing.assert_allclose(conf, want, rtol=1e-12)
        assert list(cls) == [0, 1] and list(here) == expected
    # at T = 1 the two rows fall on either side of 0.8 (0.881 and 0.731): T decides both ways
    assert list(exit_here(logits, 1.0, 0.8)[2]) == [True, False]


def test_decide_on_temperature_scaled_confidences():
    """Per exit temperatures change which exit answers: the pipeline's confidences are taken at
    each exit's temperature before the rule (here T = 2, 0.5, 1, 1; p_tar 0.8)."""
    margins = np.array([[2.0, 1.0, 0.1, 0.1], [1.0, 0.5, 3.0, 0.1]])
    temperatures = [2.0, 0.5, 1.0, 1.0]
    pairs = [
        confidence_and_class(np.stack([margins[:, k], np.zeros(2)], axis=1), t)
        for k, t in enumerate(temperatures)
    ]
    conf = np.stack([c for c, _ in pairs], axis=1)
    pred = np.stack([p for _, p in pairs], axis=1)
    want = [[sigmoid_confidence(m, t) for m, t in zip(row, temperatures, strict=True)] for row in margins]
    np.testing.assert_allclose(conf, want, rtol=1e-12)
    d = decide(conf, pred, 0.8)
    # row 0: branch0 0.731 < 0.8 at T = 2 (0.881 at T = 1), branch1 0.881 at T = 0.5 answers;
    # row 1: branch0 0.622, branch1 0.731 (0.622 at T = 1), branch2 0.953 answers
    assert list(d.exit_index) == [1, 2] and list(d.at_edge) == [True, True]


def test_decide_is_inclusive_at_a_later_side_branch():
    # (at the final exit `>=` and `>` agree: a final at p_tar is then the most confident exit)
    d = decide(np.array([[0.1, 0.6, 0.1, 0.9]]), np.array([[0, 1, 2, 3]]), 0.6)
    assert d.exit_index[0] == 1 and d.at_edge[0]
