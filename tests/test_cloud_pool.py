"""Which cloud endpoint gets an offload (`edge_router.cloud`), without HTTP."""

import asyncio
import json

import pytest

from edge_router.cloud import CloudPool, CloudUpstream, oip_predictions
from edge_router.decisions import Reply, UpstreamTimeout, UpstreamUnreachable
from edge_router.discovery import Catalogue, Endpoint, ExpertPair


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def pool(n=3, **kw):
    return CloudPool([Endpoint(f"c{i}", f"http://c{i}", kind="oip") for i in range(n)], **kw)


def test_least_outstanding_first_and_turns_among_equals():
    p = pool()
    firsts = [p.order(["c0", "c1", "c2"])[0].name for _ in range(6)]
    assert sorted(firsts) == ["c0", "c0", "c1", "c1", "c2", "c2"]  # round robin on ties
    p.begin("c0")
    p.begin("c0")
    p.begin("c1")
    assert [e.name for e in p.order(["c0", "c1", "c2"])] == ["c2", "c1", "c0"]
    assert [e.name for e in p.order(["c0", "c1"])][0] == "c1"  # only those serving the expert
    assert p.order(["unknown"]) == []


def test_a_failed_endpoint_is_out_until_listed_again_or_its_trial():
    clock = Clock()
    p = pool(2, down_s=10, clock=clock)
    p.begin("c0")
    p.end("c0", failed=True)
    assert [e.name for e in p.order(["c0", "c1"])] == ["c1"]
    assert [e.name for e in p.order(["c0", "c1"], {"c0": clock.now - 1})] == ["c1"]  # listed before
    clock.now += 1
    assert {e.name for e in p.order(["c0", "c1"], {"c0": clock.now})} == {"c0", "c1"}  # health check
    p.begin("c1")
    p.end("c1", failed=True)
    clock.now += 11
    assert {e.name for e in p.order(["c0", "c1"])} == {"c0", "c1"}  # on trial
    assert all(s["up"] and s["outstanding"] == 0 for s in p.describe().values())


def test_oip_answer_becomes_predictions_and_malformed_ones_are_refused():
    body = json.dumps(
        {
            "outputs": [{"name": "class", "data": [3, 1]}, {"name": "confidence", "data": [0.5, 0.9]}],
            "parameters": {"run_id": "r1"},
        }
    ).encode()
    assert json.loads(oip_predictions(body)) == {
        "predictions": [{"class": 3, "confidence": 0.5}, {"class": 1, "confidence": 0.9}],
        "run_id": "r1",
    }
    for bad in (
        {"outputs": [{"name": "class", "data": [1]}]},
        {"outputs": [{"name": "class", "data": [1]}, {"name": "confidence", "data": []}]},
    ):
        with pytest.raises((KeyError, ValueError)):
            oip_predictions(json.dumps(bad).encode())


class FakeUpstream(CloudUpstream):
    """`_send` scripted per endpoint: a Reply, or an exception to raise."""

    def __init__(self, p, script):
        cat = Catalogue(experts={"x": ExpertPair("x", None, None, tuple(p.endpoints))})
        self.script, self.sent, self.retries = script, [], []
        super().__init__(p, lambda: cat, 1.0, on_retry=self.retries.append)

    async def _send(self, session, ep, model, body, headers, timeout_s):
        self.sent.append(ep.name)
        outcome = self.script[ep.name]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def run(coro):
    return asyncio.run(coro)


def test_a_failed_offload_is_retried_on_the_next_replica():
    p = pool(2)
    ok = Reply(200, {}, b"{}")
    up = FakeUpstream(p, {"c0": UpstreamUnreachable("refused"), "c1": ok})
    replies = [run(up.post(None, "cloud_x", b"", {}, 5.0)) for _ in range(2)]
    assert all(r is ok for r in replies)
    assert up.sent == ["c0", "c1", "c1"] and up.retries == ["c1"]  # c0 tried once, then out
    assert not p.describe()["c0"]["up"] and p.describe()["c1"]["up"]
    assert [(p.describe()[c]["answered"], p.describe()[c]["failed"]) for c in ("c0", "c1")] == [
        (0, 1),
        (2, 0),
    ]
    up = FakeUpstream(pool(2), {"c0": Reply(503, {}, b"{}"), "c1": Reply(500, {}, b"{}")})
    assert run(up.post(None, "cloud_x", b"", {}, 5.0)).status in (500, 503)  # both failed: the last


def test_a_timeout_is_not_retried_and_does_not_take_the_endpoint_out():
    p = pool(2)
    up = FakeUpstream(p, {"c0": UpstreamTimeout(), "c1": UpstreamTimeout()})
    with pytest.raises(UpstreamTimeout):
        run(up.post(None, "cloud_x", b"", {}, 5.0))
    assert len(up.sent) == 1 and all(s["up"] for s in p.describe().values())
    assert all(s["answered"] == s["failed"] == 0 for s in p.describe().values())  # a timeout is neither
    empty = FakeUpstream(p, {})
    with pytest.raises(UpstreamUnreachable, match="no healthy cloud endpoint"):
        run(empty.post(None, "cloud_missing", b"", {}, 5.0))


def test_round_robin_ignores_what_is_in_flight_and_bad_policies_are_refused():
    p = pool(2, policy="round_robin")
    p.begin("c0")
    p.begin("c0")
    assert [p.order(["c0", "c1"])[0].name for _ in range(4)] == ["c0", "c1", "c0", "c1"]
    with pytest.raises(ValueError, match="cloud policy"):
        pool(policy="random")
