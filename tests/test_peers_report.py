"""benchmarks.peers.report: the ratios the project tracks, over several runs of every contender."""

from __future__ import annotations

import pytest

from benchmarks.peers.report import median_run, ratios, summarise_ratios


def contender(p50: float, peak: float, *, paths=("edge_exit", "offload"), same=16) -> dict:
    out = {
        p: {
            "single": {"p50_ms": p50 * (k + 1), "p99_ms": 2 * p50, "n": 200},
            "levels": [
                {"concurrency": 1, "throughput_rps": peak / 2, "p99_ms": 3.0, "errors": 0},
                {"concurrency": 4, "throughput_rps": peak / (k + 1), "p99_ms": 5.0, "errors": 1},
            ],
        }
        for k, p in enumerate(paths)
    }
    out["agreement"] = {p: {"same": same, "of": 16} for p in paths}
    return out


def run(stack_p50: float, minimal_p50: float, eager_peak: float) -> dict:
    return {
        "224": {
            "minimal": contender(minimal_p50, 160.0),
            "this_stack": contender(stack_p50, 120.0),
            "torchserve_eager": contender(30.0, eager_peak, paths=("whole_network",)),
        }
    }


def test_the_eager_ratio_compares_the_whole_network_on_both_sides():
    r = ratios(run(12.0, 8.0, 40.0))
    # this stack's offload path (peak 120 / 2 = 60 answers/s) against the eager whole network
    assert r["throughput_vs_torchserve_eager_224"] == 1.5
    assert r["offload_p50_vs_torchserve_eager_224"] == pytest.approx(24.0 / 30.0, abs=0.01)
    assert r["edge_exit_p50_vs_minimal_224"] == 1.5 and r["throughput_vs_minimal_224"] == 0.75


def test_every_ratio_is_the_median_of_its_runs_with_the_spread():
    runs = [run(12.0, 8.0, 40.0), run(12.0, 4.0, 30.0), run(12.0, 6.0, 60.0)]
    summary = summarise_ratios(runs)
    assert summary["ratio_runs"]["edge_exit_p50_vs_minimal_224"] == [1.5, 3.0, 2.0]
    assert summary["ratios"]["edge_exit_p50_vs_minimal_224"] == 2.0  # not the best run (1.5)
    assert summary["ratio_spread"]["edge_exit_p50_vs_minimal_224"] == [1.5, 3.0]
    assert summary["ratios"]["throughput_vs_torchserve_eager_224"] == 1.5  # 1.5, 2.0, 1.0


def test_the_median_run_keeps_the_shape_and_sums_the_counts():
    runs = [run(12.0, 8.0, 40.0), run(10.0, 4.0, 30.0), run(14.0, 6.0, 60.0)]
    runs[1]["224"]["minimal"]["agreement"]["offload"]["same"] = 15
    med = median_run(runs)["224"]
    assert med["minimal"]["edge_exit"]["single"]["p50_ms"] == 6.0
    assert med["this_stack"]["offload"]["single"]["p50_ms"] == 24.0
    assert med["this_stack"]["edge_exit"]["single"]["n"] == 600
    assert med["torchserve_eager"]["whole_network"]["levels"][1]["throughput_rps"] == 40.0
    assert med["minimal"]["edge_exit"]["levels"][1]["errors"] == 3
    assert med["minimal"]["offload"]["levels"][0]["concurrency"] == 1
    assert med["minimal"]["agreement"]["offload"] == {"same": 47, "of": 48}
