"""`edge_router.decisions` where its mutants showed it unpinned (docs/results/mutation.md): timings
on a fake clock, the exact reasons and keys of answers, confidences at the ends of [0, 1], the
final-exit rule at the request's threshold, accuracy targets without a table, and the adaptive
offload's inputs. Fakes and manifests come from test_decisions.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace

import pytest

from edge_router import decisions
from edge_router.decisions import Decider, Reply, UpstreamTimeout, UpstreamUnreachable, degraded_kind
from edge_router.discovery import Catalogue
from edge_router.options import RouterError
from tests.test_decisions import (
    CATALOGUE,
    IMAGE,
    NAMES,
    OPTIONS,
    FakeUpstream,
    answer,
    classifier,
    cloud_reply,
    edge_exit,
    json_reply,
    refusal,
    split_reply,
)


class Clock:
    """perf_counter for `edge_router.decisions`: moves only when a fake step says so."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


class TimedUpstream(FakeUpstream):
    """FakeUpstream whose calls take `seconds` (by role) on the fake clock."""

    def __init__(self, clock, seconds, *script):
        super().__init__(*script)
        self.clock, self.seconds = clock, seconds

    async def post(self, role, model, body, headers, timeout_s):
        reply = await super().post(role, model, body, headers, timeout_s)
        self.clock.now += self.seconds[role]
        return reply


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(decisions, "time", SimpleNamespace(perf_counter=c.perf_counter))
    return c


def timed_classifier(clock, seconds):
    async def classify(body):
        clock.now += seconds
        return "gaussian_blur", {"gaussian_blur": 1.0}

    return classify


def test_timings_are_milliseconds_rounded_to_the_microsecond(clock):
    up = TimedUpstream(clock, {"edge": 0.2501234, "cloud": 0.5001234}, split_reply(), cloud_reply(7, 0.9))
    out = answer(up, timed_classifier(clock, 0.1251234))
    assert out["timings_ms"] == {
        "classifier_ms": 125.123,
        "edge_ms": 250.123,
        "cloud_ms": 500.123,
        "total_ms": 875.37,
    }
    assert all(type(v) is float for v in out["timings_ms"].values())


def test_a_degraded_offload_is_timed_too(clock):
    up = TimedUpstream(clock, {"edge": 0.25, "cloud": 0.0101234}, split_reply(), json_reply(500, error="x"))
    out = answer(up, timed_classifier(clock, 0.0))
    assert out["degraded"] is True and out["timings_ms"]["cloud_ms"] == 10.123


def test_cloud_only_is_timed_and_answers_every_field(clock):
    reply = json_reply(exit=3, exit_name="final", **{"class": 2}, class_name=NAMES[2], confidence=0.8)
    up = TimedUpstream(clock, {"cloud": 0.5001234}, reply)
    out = asyncio.run(Decider(lambda: CATALOGUE, None, up).answer(IMAGE, replace(OPTIONS, mode="cloud_only")))
    assert out == {
        "expert": "conventional",
        "distortion": None,
        "distortion_probabilities": None,
        "threshold": None,
        "offloaded": True,
        "offloaded_bytes": len(IMAGE),
        "compression": "image",
        "degraded": False,
        "exit": 3,
        "exit_name": "final",
        "class": 2,
        "class_name": NAMES[2],
        "confidence": 0.8,
        "timings_ms": {"cloud_ms": 500.123, "total_ms": 500.123},
    }


def test_cloud_only_reasons_name_the_cloud():
    exc = refusal(FakeUpstream(Reply(200, {}, b"<html>")), mode="cloud_only")
    assert (exc.status, str(exc)) == (502, "cloud returned no JSON")


def test_an_offload_answers_with_the_final_exits_confidence():
    out = answer(FakeUpstream(split_reply(), cloud_reply(7, 0.9)))
    assert (out["exit"], out["class"], out["confidence"]) == (3, 7, 0.9)


def test_the_final_exit_rule_runs_at_the_requests_threshold():
    # an edge that offloads although branches 0 and 1 reach 0.8: the rule takes the first of them,
    # where a rule without the threshold would fall back to the most confident (branch 1)
    out = answer(FakeUpstream(split_reply((0.9, 0.95, 0.1), (1, 2, 3)), cloud_reply(7, 0.5)))
    assert (out["exit"], out["class"], out["confidence"]) == (0, 1, 0.9)


@pytest.mark.parametrize("conf", [0.0, 1.0])
def test_confidences_at_the_ends_of_0_1_are_served(conf):
    out = answer(FakeUpstream(split_reply(), cloud_reply(7, conf)))
    assert out["degraded"] is False and out["class"] == (7 if conf == 1.0 else 3)
    out = answer(FakeUpstream(split_reply((conf, 0.5, 0.6)), cloud_reply(7, 0.9)))
    assert out["degraded"] is False and out["exit"] == (0 if conf == 1.0 else 3)


def test_a_long_cloud_confidence_is_cut_in_the_reason():
    conf = -1.2345678901234567e-05
    out = answer(FakeUpstream(split_reply(), cloud_reply(7, conf)))
    assert out["degraded_reason"] == f"cloud answered confidence {str(conf)[:20]}"


@pytest.mark.parametrize(
    "cloud_step, reason",
    [
        (("slow", 5.0, None), "cloud did not answer within the deadline"),
        (UpstreamUnreachable("refused"), "cloud unreachable: refused"),
        (json_reply(500, error="worker died"), "cloud answered 500: worker died"),
        (json_reply(404, message="gone"), "cloud: gone"),
    ],
)
def test_a_failed_cloud_step_is_named_in_the_reason(cloud_step, reason):
    out = answer(FakeUpstream(split_reply(), cloud_step), deadline_s=0.2)
    assert out["degraded"] is True and out["degraded_reason"] == reason


@pytest.mark.parametrize(
    "edge_step, status, reason",
    [
        (UpstreamUnreachable("refused"), 502, "edge unreachable: refused"),
        (UpstreamTimeout(), 504, "edge did not answer within the deadline"),
        (json_reply(500, error="worker died"), 502, "edge answered 500: worker died"),
    ],
)
def test_a_failed_edge_step_is_named_in_the_reason(edge_step, status, reason):
    exc = refusal(FakeUpstream(edge_step))
    assert (exc.status, str(exc)) == (status, reason)


def test_degraded_kinds():
    assert [degraded_kind(RouterError(s, "x")) for s in (504, 502, 503, 400, 413)] == [
        "deadline",
        "cloud_error",
        "cloud_error",
        "cloud_refused",
        "cloud_refused",
    ]
    out = answer(FakeUpstream(split_reply(), json_reply(404, message="Model not found")))
    assert out["degraded_kind"] == "cloud_error"


@pytest.mark.parametrize("field, value", [("exit", "9" * 30), ("class", "7" * 30)])
def test_an_edge_index_in_a_reason_is_cut_to_20_characters(field, value):
    reply = edge_exit()
    body = reply.json("edge") | {field: value}
    exc = refusal(FakeUpstream(json_reply(**body)))
    of = 3 if field == "exit" else len(NAMES)
    assert str(exc) == f"edge answered {field} {value[:20]} of {of}"


def test_edge_only_says_why_it_answered_there():
    out = answer(FakeUpstream(split_reply()), mode="edge_only")
    assert out["exit_note"] == "edge_only: the most confident side branch"


def test_reasons_of_upstream_replies():
    assert Reply(500, {}, b"<html>").reason() == "status 500"
    assert Reply(500, {}, b"[1]").reason() == "status 500"
    assert Reply(400, {}, b'{"error": "' + b"e" * 300 + b'"}').reason() == "e" * 200


def test_the_expert_refusals_have_their_exact_reason():
    empty = Decider(lambda: Catalogue(), classifier(), FakeUpstream())
    with pytest.raises(RouterError) as info:
        asyncio.run(empty.answer(IMAGE, replace(OPTIONS, expert="pristine")))
    assert str(info.value) == "expert 'pristine' is not registered on both edge and cloud (known: none)"
    no_classifier = Decider(lambda: CATALOGUE, None, FakeUpstream())
    with pytest.raises(RouterError) as info:
        asyncio.run(no_classifier.answer(IMAGE, OPTIONS))
    assert str(info.value) == "no distortion classifier loaded on the router"


def test_a_target_without_operating_points_keeps_the_threshold():
    pair = CATALOGUE.experts["gaussian_blur"]
    bare = Catalogue(experts={"gaussian_blur": replace(pair, edge=replace(pair.edge, operating_points={}))})
    decider = Decider(lambda: bare, classifier(), FakeUpstream(edge_exit()))
    out = asyncio.run(decider.answer(IMAGE, replace(OPTIONS, min_accuracy=0.9)))
    assert out["target"] == {"min_accuracy": 0.9, "note": "no operating points: fixed threshold"}
    assert out["threshold"] == OPTIONS.threshold


class Estimating(FakeUpstream):
    def __init__(self, expected_s, *script):
        super().__init__(*script)
        self.expected_s, self.asked = expected_s, []

    def expected_offload_s(self, model):
        self.asked.append(model)
        return self.expected_s


def test_the_adaptive_offload_weighs_the_experts_table_and_the_gain_per_second():
    # gaussian_blur's table: offloading at 0.8 loses accuracy, so no offload however fast the link
    up = Estimating(0.01, split_reply(), cloud_reply())
    out = answer(up, offload="adaptive")
    assert out["offload_decision"]["reason"] == "no_gain" and len(up.calls) == 1
    # pristine's gains: worth a fast link (the gain per second is compared)
    up = Estimating(0.01, split_reply(), cloud_reply())
    out = answer(up, offload="adaptive", expert="pristine")
    assert out["offload_decision"]["reason"] == "worth_it" and up.asked == ["cloud_pristine"]


def test_the_link_is_asked_only_by_the_adaptive_policy():
    up = Estimating(0.01, split_reply(), cloud_reply())
    answer(up)
    assert up.asked == []
    out = answer(FakeUpstream(split_reply(), cloud_reply()), offload="adaptive", expert="pristine")
    assert out["offload_decision"]["reason"] == "unknown_link"  # an upstream without estimates


def test_a_predicted_late_offload_is_marked_degraded():
    up = Estimating(0.3, split_reply(), cloud_reply())
    out = answer(up, offload="adaptive", expert="pristine", deadline_s=0.15)
    assert out["degraded_kind"] == "predicted_deadline" and out["offloaded"] is False
