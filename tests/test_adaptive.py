"""Offload when it pays: the operating-point tables, the accuracy-target plan, the link estimate and
the per-request offload rule (core.operating_points, edge_router.adaptive), without servers."""

import dataclasses
import json

import numpy as np
import pytest

from core import operating_points as op
from core.manifest import Manifest, ManifestError
from edge_router import adaptive
from edge_router.adaptive import LinkEstimate, decide_offload
from edge_router.options import Defaults, RouterError, parse_query
from tests.test_decisions import (
    CATALOGUE,
    IMAGE,
    OPTIONS,
    Decider,
    FakeUpstream,
    classifier,
    cloud_reply,
    manifests,
    split_reply,
)

# four samples, three side exits + the final one; labels 0
CONF = np.array(
    [
        [0.95, 0.2, 0.2, 0.2],  # branch 0 sure and right
        [0.5, 0.9, 0.2, 0.3],  # branch 1 sure at 0.9, wrong
        [0.4, 0.5, 0.6, 0.99],  # only the final exit is sure, right
        [0.3, 0.6, 0.7, 0.5],  # nobody sure: most confident is branch 2, right
    ]
)
PRED = np.array([[0, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]])
LABELS = np.zeros(4, dtype=int)


def row(rows, t):
    return next(r for r in rows if r["threshold"] == t)


def test_table_counts_what_the_served_rule_does():
    rows = op.table(CONF, PRED, LABELS)
    assert [r["threshold"] for r in rows] == list(op.THRESHOLDS)
    r = row(rows, 0.9)
    assert r["edge_rate"] == 0.5 and r["edge_accuracy"] == 0.5  # samples 0 (right) and 1 (wrong)
    assert r["offload_accuracy"] == 1.0  # sample 2 by the final exit, sample 3 by branch 2
    assert r["stay_accuracy"] == 0.5  # best side branch: sample 2 -> branch 2 (wrong), 3 -> branch 2
    assert r["final_accuracy"] == 1.0  # only sample 2 reaches the final exit at 0.9
    assert r["accuracy"] == 0.75 and r["accuracy_no_offload"] == 0.5
    assert [e["rate"] for e in r["exits"]] == [0.25, 0.25, 0.0] and r["exits"][2]["accuracy"] is None
    op.validate({"samples": 4, "table": rows}, 3)


@pytest.mark.parametrize(
    "bad, why",
    [
        ({"samples": 4, "table": []}, "non-empty"),
        ({"samples": 0, "table": [{}]}, "positive count"),
        ({"samples": 4, "table": [{"threshold": 1.5}]}, "increase within"),
        ({"samples": 4, "table": [{"threshold": 0.5, "edge_rate": 2.0}]}, "not a fraction"),
    ],
)
def test_malformed_tables_are_refused(bad, why):
    with pytest.raises(ValueError, match=why):
        op.validate(bad, 3)


def test_manifest_carries_and_checks_the_table():
    edge, cloud = manifests("pristine")
    assert edge.operating_points["samples"] > 1000  # the shipped models have their tables
    again = Manifest.from_dict(json.loads(edge.to_json()))
    assert again.operating_points == edge.operating_points
    broken = json.loads(edge.to_json())
    broken["operating_points"]["table"][3]["accuracy"] = 7
    with pytest.raises(ManifestError, match="not a fraction"):
        Manifest.from_dict(broken)
    with pytest.raises(ManifestError, match="carries no operating points"):
        dataclasses.replace(cloud, operating_points=edge.operating_points).validate()


def synthetic_rows(stay, offload):
    """Rows where the edge alone reaches `stay` and offloading raises accuracy with the threshold."""
    out = []
    for t in op.THRESHOLDS:
        edge_rate = 1 - t / 2
        out.append(
            {
                "threshold": t,
                "edge_rate": edge_rate,
                "accuracy": offload * t,
                "accuracy_no_offload": stay,
                "offload_accuracy": 0.9,
                "stay_accuracy": 0.8,
            }
        )
    return out


def test_the_plan_takes_the_edge_alone_when_it_is_enough():
    p = op.plan(synthetic_rows(stay=0.9, offload=0.95), 0.85)
    assert p.offload is False and p.met and p.expected_offload_rate == 0.0


def test_the_plan_takes_the_lowest_threshold_that_meets_the_target():
    rows = synthetic_rows(stay=0.7, offload=1.0)
    p = op.plan(rows, 0.8)
    assert p.offload and p.met and p.threshold == 0.8  # accuracy = t here: the first t >= 0.8
    assert p.expected_offload_rate == pytest.approx(0.4)
    higher = op.plan(rows, 0.9)
    assert higher.threshold == 0.9 and higher.expected_offload_rate > p.expected_offload_rate


def test_an_unreachable_target_gets_the_most_accurate_way():
    p = op.plan(synthetic_rows(stay=0.7, offload=0.8), 0.95)
    assert not p.met and p.offload and p.threshold == 1.0 and p.expected_accuracy == 0.8
    p = op.plan(synthetic_rows(stay=0.85, offload=0.8), 0.95)  # offloading only loses here
    assert not p.met and not p.offload and p.expected_accuracy == 0.85


def test_the_link_estimate_follows_offloads_probes_and_a_changed_link():
    link = LinkEstimate()
    assert link.expected_s(0.0) is None
    for i in range(10):
        link.observe_probe(0.002, now=i * 0.1)
        link.observe_offload(0.012, now=i * 0.1 + 0.05)
    assert link.expected_s(1.0) == pytest.approx(0.012, abs=0.004)
    assert link.overhead_s == pytest.approx(0.010, abs=0.002)  # transfer + compute beyond the RTT
    # the link becomes paris; no offload runs (the router stops offloading), probes see it
    for k in range(6):
        link.observe_probe(0.216, now=10 + k)
    assert 0.21 < link.expected_s(16.0) < 0.30
    # a timed-out offload: at least what it took; one cut off before the estimate changes nothing
    before = (link.offload_s, link.deviation_s)
    link.observe_offload(0.005, now=16.5, censored=True)
    assert (link.offload_s, link.deviation_s) == before
    link.observe_offload(0.15, now=16.6, censored=True)
    assert link.offload_s >= 0.15


def test_an_estimate_from_probes_includes_the_first_overhead_in_full():
    link = LinkEstimate()
    link.observe_probe(0.2, now=0.0)
    link.observe_offload(0.26, now=0.5)  # 60 ms of transfer and compute beyond the round trip
    assert link.overhead_s == pytest.approx(0.06)
    link.observe_probe(0.2, now=10.0)  # the last offload is stale: the estimate is built from probes
    assert link.expected_s(10.0) >= 0.26


def test_decisions_for_a_sample_the_edge_was_unsure_of():
    rows = json.loads(manifests("pristine")[0].to_json())["operating_points"]
    r = op.row_at(rows["table"], 0.8)
    gain = r["offload_accuracy"] - r["stay_accuracy"]
    common = {"points": rows, "threshold": 0.8, "target": None, "min_gain_per_second": 10.0}
    fixed = decide_offload(policy="fixed", expected_s=5.0, time_left_s=1.0, **common)
    assert fixed.offload and fixed.reason == "fixed"
    late = decide_offload(policy="adaptive", expected_s=0.22, time_left_s=0.14, **common)
    assert not late.offload and late.reason == "predicted_deadline"
    assert late.expected_ms == 220.0 and late.time_left_ms == 140.0
    unknown = decide_offload(policy="adaptive", expected_s=None, time_left_s=1.0, **common)
    assert unknown.offload and unknown.reason == "unknown_link"
    assert gain > 0  # the shipped pristine expert gains from offloading at 0.8
    near = decide_offload(policy="adaptive", expected_s=0.01, time_left_s=1.0, **common)
    assert near.offload and near.reason == "worth_it" and near.expected_gain == pytest.approx(gain)
    slow = decide_offload(policy="adaptive", expected_s=100 * gain / 10.0 + 0.05, time_left_s=60.0, **common)
    assert not slow.offload and slow.reason == "not_worth_it"
    blur = json.loads(manifests("gaussian_blur")[0].to_json())["operating_points"]
    assert op.row_at(blur["table"], 0.8)["offload_accuracy"] < op.row_at(blur["table"], 0.8)["stay_accuracy"]
    no_gain = decide_offload(
        **{**common, "points": blur}, policy="adaptive", expected_s=0.01, time_left_s=1.0
    )
    assert not no_gain.offload and no_gain.reason == "no_gain"
    plan = op.Plan(0.9, False, 0.9, 0.0, True)
    enough = decide_offload(**{**common, "target": plan}, policy="adaptive", expected_s=0.01, time_left_s=1.0)
    assert not enough.offload and enough.reason == "edge_meets_target"


class EstimatingUpstream(FakeUpstream):
    def __init__(self, expected_s, *script):
        super().__init__(*script)
        self.expected = expected_s

    def expected_offload_s(self, model):
        assert model == "cloud_gaussian_blur"
        return self.expected


def run(upstream, defaults=None, **options):
    import asyncio
    from dataclasses import replace

    decider = Decider(lambda: CATALOGUE, classifier(), upstream, defaults or Defaults())
    return asyncio.run(decider.answer(IMAGE, replace(OPTIONS, **options)))


def test_a_predicted_late_offload_answers_at_once_from_the_edge():
    up = EstimatingUpstream(0.3, split_reply((0.3, 0.5, 0.6), (1, 2, 3)), cloud_reply())
    out = run(up, offload="adaptive", deadline_s=0.15)
    assert [c.role for c in up.calls] == ["edge"]  # the cloud was never asked
    assert out["degraded"] and out["degraded_reason"] == "predicted_deadline"
    assert out["offloaded"] is False and (out["exit"], out["class"]) == (2, 3)  # the best branch
    assert out["offload_decision"]["reason"] == "predicted_deadline"
    assert out["offload_decision"]["expected_ms"] == 300.0
    # the same request under the fixed rule waits for the cloud
    fixed = run(EstimatingUpstream(0.3, split_reply(), cloud_reply()), deadline_s=0.15)
    assert fixed["offloaded"] and fixed["offload_decision"]["reason"] == "fixed"


def test_an_accuracy_target_sets_the_threshold_from_the_table():
    points = manifests("gaussian_blur")[0].operating_points
    want = op.plan(points["table"], 0.85)
    up = EstimatingUpstream(0.01, split_reply(), cloud_reply())
    out = run(up, min_accuracy=0.85)
    assert up.calls[0].headers["X-Exit-Threshold"] == repr(want.threshold)
    assert out["threshold"] == want.threshold and out["target"]["min_accuracy"] == 0.85
    assert out["target"]["offload"] is want.offload
    if not want.offload:
        reason = "edge_meets_target" if want.met else "edge_is_best"
        assert out["offload_decision"]["reason"] == reason and len(up.calls) == 1


def test_an_offload_under_a_target_decides_the_final_exit_at_the_plans_threshold(monkeypatch):
    """A target the edge alone cannot meet: the plan offloads, and the final-exit rule runs at the
    plan's threshold, not the router's default (0.8)."""
    plan = op.Plan(0.99, True, 0.9, 0.5, True)
    monkeypatch.setattr(adaptive, "target_plan", lambda points, min_accuracy: plan)
    # no branch reaches 0.99 (no edge exit); the final exit answers 0.9
    up = EstimatingUpstream(0.01, split_reply((0.3, 0.85, 0.95), (1, 2, 3)), cloud_reply(7, 0.9))
    out = run(up, min_accuracy=0.99)
    assert up.calls[0].headers["X-Exit-Threshold"] == "0.99" and out["offloaded"]
    # at 0.99 nobody reaches the threshold: the most confident exit (branch 2, 0.95) answers; at
    # the default 0.8 the first branch past it (branch 1, 0.85) would have answered instead
    assert (out["exit"], out["class"]) == (2, 3) and out["threshold"] == 0.99


def test_query_parameters_of_the_new_modes():
    d = Defaults(min_accuracy=0.9, offload="adaptive")
    got = parse_query("", d)
    assert (got.min_accuracy, got.offload) == (0.9, "adaptive")
    assert parse_query("threshold=0.7", d).min_accuracy is None  # the request's own threshold wins
    assert parse_query("min_accuracy=0.8&offload=fixed", d).min_accuracy == 0.8
    for query, why in [
        ("min_accuracy=0.8&threshold=0.7", "not both"),
        ("min_accuracy=2", "must be in"),
        ("offload=sometimes", "fixed or adaptive"),
    ]:
        with pytest.raises(RouterError, match=why) as exc:
            parse_query(query, d)
        assert exc.value.status == 400


def test_policies_and_reasons_are_listed():
    assert adaptive.POLICIES == ("fixed", "adaptive") and "predicted_deadline" in adaptive.REASONS
