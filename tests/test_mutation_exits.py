"""`core.exits` beyond the rule's own tests: what its mutants showed unpinned (docs/results/mutation.md).

Expected values are written out here (softmax by hand on small logits, ECE bin by bin), not taken
from the module under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.exits import confidence_and_class, decide, expected_calibration_error, softmax


def test_softmax_is_stable_for_large_logits():
    # exp(1000) overflows: only a shift by the row's own maximum keeps these finite
    p = softmax(np.array([[1000.0, 0.0], [0.0, 1000.0]]))
    assert np.isfinite(p).all()
    np.testing.assert_array_equal(p, [[1.0, 0.0], [0.0, 1.0]])


def test_softmax_shifts_each_row_by_its_own_maximum():
    # a shift by the batch's maximum would underflow the second row to 0 / 0
    p = softmax(np.array([[1000.0, 0.0], [0.0, np.log(3.0)]]))
    np.testing.assert_allclose(p, [[1.0, 0.0], [0.25, 0.75]])


def test_softmax_and_confidence_take_one_row_of_logits():
    np.testing.assert_allclose(softmax(np.array([0.0, np.log(3.0)])), [0.25, 0.75])
    conf, cls = confidence_and_class(np.array([np.log(3.0), 0.0]))
    assert np.ndim(conf) == 0 and float(conf) == pytest.approx(0.75) and int(cls) == 0


def test_softmax_over_the_last_axis_of_a_stack_of_batches():
    logits = np.array([[[0.0, np.log(3.0)], [np.log(4.0), 0.0], [0.0, 0.0]]])  # 1 x 3 x 2
    p = softmax(logits)
    np.testing.assert_allclose(p, [[[0.25, 0.75], [0.8, 0.2], [0.5, 0.5]]])
    conf, cls = confidence_and_class(logits)
    np.testing.assert_allclose(conf, [[0.75, 0.8, 0.5]])
    np.testing.assert_array_equal(cls, [[1, 0, 0]])


def test_confidence_and_class_default_to_temperature_one():
    conf, cls = confidence_and_class(np.array([[np.log(3.0), 0.0]]))
    assert conf[0] == pytest.approx(0.75) and cls[0] == 0


def test_decide_reports_confidences_in_float64():
    d = decide(np.float32([[0.1, 0.2, 0.3, 0.4]]), np.array([[0, 1, 2, 3]]), 0.35)
    assert d.confidence.dtype == np.float64


def ece_by_hand(confidence, correct, bins):
    """ECE written out: bin b holds the confidences in (b / bins, (b + 1) / bins], bin 0 also 0."""
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [
            (c, k) for c, k in zip(confidence, correct, strict=True) if lo < c <= hi or (b == 0 and c == 0)
        ]
        if members:
            conf = np.mean([c for c, _ in members])
            acc = np.mean([k for _, k in members])
            total += len(members) / len(confidence) * abs(conf - acc)
    return total


@pytest.mark.parametrize(
    "confidence, correct",
    [
        ([0.0, 0.1, 0.3, 0.55, 0.6, 0.95, 1.0], [0, 1, 1, 0, 1, 1, 1]),
        ([0.25, 0.5, 0.75, 1.0], [1, 0, 1, 0]),  # on the bin edges of 4 bins: (lo, hi] bins
        ([0.05, 0.2, 0.9], [1, 1, 0]),
    ],
)
@pytest.mark.parametrize("bins", [4, 10])
def test_ece_bins_as_written_out(confidence, correct, bins):
    got = expected_calibration_error(np.array(confidence), np.array(correct), bins=bins)
    assert got == pytest.approx(ece_by_hand(confidence, correct, bins), abs=1e-12)


def test_ece_defaults_to_15_bins():
    confidence = np.array([0.03, 0.05, 0.5, 0.52])  # 1/16 < 0.05 < 1/15 < 0.5 < 8/15 < 0.52
    correct = np.array([1, 0, 1, 0])
    assert expected_calibration_error(confidence, correct) == pytest.approx(
        ece_by_hand(confidence, correct, 15), abs=1e-12
    )
    assert expected_calibration_error(confidence, correct) != pytest.approx(
        ece_by_hand(confidence, correct, 16), abs=1e-6
    )


def test_ece_of_a_single_bin_and_of_many():
    # every sample in one bin: |mean confidence - accuracy|; spread over bins: their weighted sum
    assert expected_calibration_error(np.array([0.9, 0.9]), np.array([1, 0])) == pytest.approx(0.4)
    assert expected_calibration_error(np.array([0.1, 0.9]), np.array([0, 1])) == pytest.approx(0.1)
