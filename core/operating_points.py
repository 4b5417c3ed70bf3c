"""What the edge knows about an expert's exits: accuracy against the confidence threshold.

Measured at export on the validation split (each expert on its own distortion, every level), from
every exit's confidence and class per sample, under the served rule (`core.exits.decide`). One row
per threshold `t` of `THRESHOLDS`:

- `edge_rate`, `edge_accuracy`: the share of samples a side branch answers (first to reach `t`) and
  how often those answers are right; `exits`: the same split by side branch (`rate`, `accuracy`);
- `offload_accuracy`: on the other samples, the accuracy of the answer an offload gives (the final
  exit when it reaches `t`, else the most confident exit of all);
- `stay_accuracy`: on those same samples, the accuracy of the most confident side branch (what the
  edge answers when it does not offload);
- `final_accuracy`: the final exit's own accuracy on the samples that reach it;
- `accuracy`, `accuracy_no_offload`: the whole split's accuracy with and without the offloads.

`plan` turns a table and an accuracy target into a threshold and whether offloading is needed at
all; the router (`edge_router.adaptive`) uses it per request. Everything is numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.exits import decide

THRESHOLDS = tuple(round(0.30 + 0.02 * i, 2) for i in range(35)) + (0.99, 1.0)  # 0.30 ... 0.98, 0.99, 1.0
ROW_FIELDS = (
    "edge_rate",
    "edge_accuracy",
    "offload_accuracy",
    "stay_accuracy",
    "final_accuracy",
    "accuracy",
    "accuracy_no_offload",
)


def _mean(x: np.ndarray) -> float | None:
    return round(float(x.mean()), 5) if x.size else None


def table(confidences: np.ndarray, predictions: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Rows (one per threshold) from (N, K) confidences and classes of every exit, last = final."""
    confidences, predictions = np.asarray(confidences, np.float64), np.asarray(predictions)
    labels = np.asarray(labels)
    n, k = confidences.shape
    if n == 0 or predictions.shape != (n, k) or labels.shape != (n,):
        raise ValueError("confidences, predictions (N, K) and labels (N,) must agree and not be empty")
    side_conf = confidences[:, :-1]
    best_side = np.argmax(side_conf, axis=1)
    rows = np.arange(n)
    stay_right = predictions[rows, best_side] == labels
    final_right = predictions[:, -1] == labels
    out = []
    for t in THRESHOLDS:
        d = decide(confidences, predictions, t)
        right = d.prediction == labels
        edge, cloud = d.at_edge, ~d.at_edge
        reach_final = cloud & (confidences[:, -1] >= t)
        row = {
            "threshold": t,
            "edge_rate": round(float(edge.mean()), 5),
            "edge_accuracy": _mean(right[edge]),
            "offload_accuracy": _mean(right[cloud]),
            "stay_accuracy": _mean(stay_right[cloud]),
            "final_accuracy": _mean(final_right[reach_final]),
            "accuracy": round(float(right.mean()), 5),
            "accuracy_no_offload": round(float(np.where(edge, right, stay_right).mean()), 5),
            "exits": [
                {
                    "rate": round(float((edge & (d.exit_index == j)).mean()), 5),
                    "accuracy": _mean(right[edge & (d.exit_index == j)]),
                }
                for j in range(k - 1)
            ],
        }
        out.append(row)
    return out


def validate(points: dict, side_exits: int) -> None:
    """ValueError unless `points` is a well-formed operating-point entry of a manifest."""
    rows = points.get("table")
    if not isinstance(rows, list) or not rows:
        raise ValueError("operating_points.table must be a non-empty list")
    if not isinstance(points.get("samples"), int) or points["samples"] <= 0:
        raise ValueError("operating_points.samples must be a positive count")
    last = 0.0
    for row in rows:
        t = row.get("threshold")
        if not isinstance(t, (int, float)) or not last < t <= 1:
            raise ValueError("operating_points thresholds must increase within (0, 1]")
        last = t
        for name in ROW_FIELDS:
            v = row.get(name)
            if v is not None and not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ValueError(f"operating_points {name} at {t} is not a fraction: {v!r}")
        for name in ("edge_rate", "accuracy", "accuracy_no_offload"):
            if row.get(name) is None:
                raise ValueError(f"operating_points row {t} lacks {name}")
        exits = row.get("exits")
        if not isinstance(exits, list) or len(exits) != side_exits:
            raise ValueError(f"operating_points row {t} must describe {side_exits} side exits")
        for e in exits:
            for name in ("rate", "accuracy"):
                v = e.get(name) if isinstance(e, dict) else "missing"
                if v is not None and not (isinstance(v, (int, float)) and 0 <= v <= 1):
                    raise ValueError(f"operating_points exit {name} at {t} is not a fraction: {v!r}")


@dataclass(frozen=True)
class Plan:
    """How to serve one expert for an accuracy target: the threshold, and whether to offload."""

    threshold: float
    offload: bool  # False: the edge alone is expected to meet the target at this threshold
    expected_accuracy: float
    expected_offload_rate: float
    met: bool  # False: no row reaches the target; the most accurate one is used


def plan(rows: list[dict], min_accuracy: float, *, offload_allowed: bool = True) -> Plan:
    """The cheapest way to reach `min_accuracy` on validation data.

    First the edge alone (no offload at all, the best side branch answers what no branch is sure
    of); otherwise the lowest threshold whose accuracy with offloads reaches the target (the lowest
    threshold offloads least). If nothing reaches it, the most accurate way there is (offloading
    only when it is more accurate than the edge alone).
    """
    stay = max(rows, key=lambda r: (r["accuracy_no_offload"], -r["threshold"]))
    if stay["accuracy_no_offload"] >= min_accuracy:
        return Plan(stay["threshold"], False, stay["accuracy_no_offload"], 0.0, True)
    if offload_allowed:
        reach = [r for r in rows if r["accuracy"] >= min_accuracy]
        if reach:
            best = min(reach, key=lambda r: r["threshold"])
            return Plan(best["threshold"], True, best["accuracy"], round(1 - best["edge_rate"], 5), True)
        best = max(rows, key=lambda r: (r["accuracy"], -r["threshold"]))
        if best["accuracy"] > stay["accuracy_no_offload"]:  # offloading helps, though not enough
            return Plan(best["threshold"], True, best["accuracy"], round(1 - best["edge_rate"], 5), False)
    return Plan(stay["threshold"], False, stay["accuracy_no_offload"], 0.0, False)


def row_at(rows: list[dict], threshold: float) -> dict:
    """The row of the highest tabulated threshold not above `threshold` (the first row below all)."""
    below = [r for r in rows if r["threshold"] <= threshold + 1e-9]
    return below[-1] if below else rows[0]
