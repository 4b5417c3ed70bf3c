"""Confidence, temperature scaling and the early-exit rule: the one implementation.

The rule of the GLOBECOM 2021 prototype, decided per sample (never `.item()` on a batch):
an exit's confidence is the max softmax of its temperature-scaled logits; the first side branch
whose confidence reaches `p_tar` answers at the edge; if none does, the sample is offloaded and
the final exit answers when its confidence reaches `p_tar`; if that one is also below `p_tar`,
the most confident exit of all answers.

Used by the PyTorch evaluation (on logits it computed), by the in-process ONNX pipeline, the edge
runtime (`exit_here`, one side branch at a time, with masks) and the router (final decision after
the cloud). `confident` is the one comparison with the threshold: change the rule there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def softmax(logits: np.ndarray, temperature: float | np.ndarray = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature`, in float64 for stable confidences."""
    z = np.asarray(logits, dtype=np.float64) / np.asarray(temperature, dtype=np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def confidence_and_class(logits: np.ndarray, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(max softmax probability, argmax class) per row."""
    p = softmax(logits, temperature)
    return p.max(axis=-1), p.argmax(axis=-1)


def confident(confidence: np.ndarray, p_tar: float | np.ndarray) -> np.ndarray:
    """Boolean mask: the exit's confidence reaches `p_tar` (inclusive; per-sample thresholds
    broadcast against the confidences)."""
    return np.asarray(confidence, dtype=np.float64) >= np.asarray(p_tar, dtype=np.float64)


def exit_here(
    logits: np.ndarray, temperature: float, p_tar: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One exit over a batch of (N, C) logits: (confidence, class, answers-here mask) per sample,
    the confidence taken at the exit's temperature and compared with each sample's `p_tar`."""
    conf, cls = confidence_and_class(logits, temperature)
    return conf, cls, confident(conf, p_tar)


@dataclass(frozen=True)
class ExitDecision:
    """Per-sample outcome of the exit rule over a batch (arrays of length N)."""

    exit_index: np.ndarray  # which exit answered (0..K-1, K-1 = final)
    prediction: np.ndarray  # class answered
    confidence: np.ndarray  # confidence of the answering exit
    at_edge: np.ndarray  # True when a side branch reached p_tar (no offload)


def decide(confidences: np.ndarray, predictions: np.ndarray, p_tar: float) -> ExitDecision:
    """Apply the exit rule to (N, K) confidences and predictions of all K exits (last = final)."""
    confidences = np.asarray(confidences, dtype=np.float64)
    predictions = np.asarray(predictions)
    n, k = confidences.shape
    reached = confident(confidences, p_tar)
    side = reached[:, :-1]
    at_edge = side.any(axis=1)
    first_side = np.argmax(side, axis=1)  # index of the first True (0 where none: masked below)
    most_confident = np.argmax(confidences, axis=1)
    final = k - 1
    exit_index = np.where(at_edge, first_side, np.where(reached[:, final], final, most_confident))
    rows = np.arange(n)
    return ExitDecision(
        exit_index=exit_index,
        prediction=predictions[rows, exit_index],
        confidence=confidences[rows, exit_index],
        at_edge=at_edge,
    )


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al., 2017)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(confidence[mask].mean() - correct[mask].mean())
    return float(ece)
