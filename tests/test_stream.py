"""benchmarks.stream's bookkeeping: rows per wire, routing share, gaps and the CSV check (no server)."""

import csv

import pytest

from benchmarks.stream import add_gaps, compare_with_expected, summarise
from core.errors import UserInputError


def record(wire, label, answer_class, routed, *, status=200, exit_=0, offloaded=False):
    return {
        "wire": wire,
        "label": label,
        "status": status,
        "latency_ms": 5.0,
        "bytes_sent": 900 if wire == "png" else 400,
        "routed_distortion": routed,
        "class": answer_class,
        "exit": exit_,
        "expert": routed,
        "offloaded": offloaded,
        "degraded": False,
        "offloaded_bytes": 0,
    }


def test_rows_count_accuracy_routing_and_errors():
    cell = [
        record("jpeg:90", 1, 1, "gaussian_noise", exit_=1),
        record("jpeg:90", 2, 0, "pristine", exit_=3, offloaded=True),
        record("jpeg:90", 3, 3, "gaussian_noise"),
        record("jpeg:90", 4, None, None, status=0),
    ]
    row = summarise(cell, wire="jpeg:90", distortion="gaussian_noise", level=20)
    assert (row["n"], row["errors"]) == (4, 1)
    assert row["accuracy"] == pytest.approx(2 / 3) and row["routed_right"] == pytest.approx(2 / 3)
    assert row["offload_rate"] == pytest.approx(1 / 3) and row["exit_share"]["3"] == pytest.approx(1 / 3)
    assert row["expert"] == "gaussian_noise" and row["mean_bytes"] == 400
    # level 0 of any type is a pristine image: its right expert is the pristine one
    pristine = summarise([record("png", 1, 1, "pristine")], wire="png", distortion="gaussian_blur", level=0)
    assert pristine["routed_right"] == 1.0


def test_gap_is_against_the_first_wire_on_the_same_cell():
    rows = [
        {"wire": "png", "distortion": "pristine", "level": 0, "accuracy": 0.90},
        {"wire": "png", "distortion": "gaussian_noise", "level": 20, "accuracy": 0.80},
        {"wire": "jpeg:90", "distortion": "pristine", "level": 0, "accuracy": 0.89},
        {"wire": "jpeg:90", "distortion": "gaussian_noise", "level": 20, "accuracy": 0.85},
    ]
    add_gaps(rows)
    assert "gap_points" not in rows[0] and "gap_points" not in rows[1]
    assert rows[2]["gap_points"] == pytest.approx(-1.0) and rows[3]["gap_points"] == pytest.approx(5.0)


def test_expected_accuracy_is_read_from_the_row_of_the_same_wire(tmp_path):
    path = tmp_path / "accuracy.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(
            f, fieldnames=["model", "wire", "distortion", "level", "p_tar", "n", "overall_acc"]
        )
        w.writeheader()
        for wire, acc in (("png", "0.850000"), ("jpeg:90", "0.500000")):
            w.writerow(
                {"model": "expert_routed", "wire": wire, "distortion": "gaussian_noise", "level": "20"}
                | {"p_tar": "0.8", "n": "5000", "overall_acc": acc}
            )
    rows = [
        {
            "wire": "png",
            "distortion": "gaussian_noise",
            "level": 20.0,
            "n": 100,
            "errors": 0,
            "accuracy": 0.84,
        },
        {
            "wire": "jpeg:90",
            "distortion": "gaussian_noise",
            "level": 20.0,
            "n": 100,
            "errors": 0,
            "accuracy": 0.84,
        },
    ]
    compare_with_expected(rows, str(path), model="expert_routed", p_tar=0.8)
    assert rows[0]["expected_accuracy"] == 0.85 and rows[0]["within_3se"]
    assert rows[1]["expected_accuracy"] == 0.5 and not rows[1]["within_3se"]  # 34 points off: caught
    rows.append({**rows[0], "wire": "jpeg:75"})
    with pytest.raises(UserInputError, match="no row for expert_routed, jpeg:75"):
        compare_with_expected(rows, str(path), model="expert_routed", p_tar=0.8)
