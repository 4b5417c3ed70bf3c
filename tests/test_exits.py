"""The exit rule, softmax with temperature and ECE."""

import numpy as np
import pytest

from core.exits import (
    confidence_and_class,
    decide,
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
