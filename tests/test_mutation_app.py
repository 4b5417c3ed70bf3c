"""The limits of `edge_router.app` where its mutants showed them unpinned (docs/results/mutation.md):
`Router.classify` called directly on ASGI requests (no sockets, no sleeps), so each limit's status,
reason, headers, counters and bookkeeping are asserted exactly; and the uvicorn settings
`make_server` gives (test_router_limits runs them on real sockets).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from starlette.requests import Request

from edge_router.app import ReceiptDeadlineProtocol, Router, RouterConfig, make_server
from edge_router.discovery import Discovery, Endpoint
from edge_router.options import RouterError

NOWHERE = "http://127.0.0.1:9"
ANSWER = {"expert": "pristine", "exit": 1, "offloaded": False, "offloaded_bytes": 0, "degraded": False}


class FakeDecider:
    """Records what it was asked; answers ANSWER, raises `error`, or waits for `release` first."""

    def __init__(self, error: Exception | None = None, release: asyncio.Event | None = None):
        self.error, self.release, self.calls = error, release, []

    async def answer(self, body, options):
        self.calls.append((body, options))
        if self.release is not None:
            await self.release.wait()
        if self.error is not None:
            raise self.error
        return dict(ANSWER)


def make_router(decider=None, **limits) -> Router:
    router = Router(
        Discovery(Endpoint("edge", NOWHERE), Endpoint("cloud", NOWHERE)), None, RouterConfig(**limits)
    )
    if decider is not None:
        router.decider = decider
    return router


def request(
    parts=(b"",),
    *,
    length: int | str | None = "auto",
    query: str = "",
    headers=(),
    stall=None,
    on_receive=None,
    client=("127.0.0.1", 50000),
):
    """A POST /v1/classify ASGI request whose body arrives in `parts`; with `stall` (an Event) the
    body stops after its parts until the event is set; a part None is the client leaving;
    `on_receive` is called each time the application asks for more of the body."""
    parts = list(parts)
    raw = [(k.lower().encode(), v.encode()) for k, v in headers]
    if length == "auto":
        length = sum(len(p) for p in parts if p is not None)
    if length is not None:
        raw.append((b"content-length", str(length).encode()))
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/classify",
        "raw_path": b"/v1/classify",
        "root_path": "",
        "query_string": query.encode(),
        "headers": raw,
        "server": ("127.0.0.1", 8000),
        "client": client,
    }

    async def receive():
        if on_receive is not None:
            on_receive()
        if not parts:
            if stall is not None:
                await stall.wait()
            return {"type": "http.request", "body": b"", "more_body": False}
        part = parts.pop(0)
        if part is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": part, "more_body": bool(parts) or stall is not None}

    return Request(scope, receive)


def counted(router: Router, name: str, **labels) -> float:
    return router.metrics.registry.get_sample_value(name, labels) or 0.0


def body_of(response) -> dict:
    return json.loads(response.body)


def classify(router: Router, req: Request):
    return asyncio.run(router.classify(req))


async def until(predicate, rounds: int = 200) -> None:
    """Let the other tasks run until `predicate` holds (a bounded number of loop turns, so a router
    that never gets there fails the test's assertions instead of hanging it)."""
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0)


# -- answers and errors ----------------------------------------------------------------------
def test_an_answer_is_the_deciders_json_with_its_options_and_whole_body():
    decider = FakeDecider()
    router = make_router(decider)
    r = classify(router, request([b"ab", b"cd", b"e"], query="threshold=0.5"))
    assert r.status_code == 200 and body_of(r) == ANSWER
    [(body, options)] = decider.calls
    assert body == b"abcde" and options.threshold == 0.5
    assert counted(router, "edge_router_requests_total", status="200") == 1
    assert 0 <= counted(router, "edge_router_request_seconds_sum", offloaded="false") < 5
    assert router.in_flight == 0 and router.buffered == 0


def test_a_refusal_is_its_status_and_one_line_reason_without_close_or_retry_after():
    router = make_router(FakeDecider(RouterError(400, "bad\n  thing " + "e" * 400)))
    r = classify(router, request([b"x"]))
    assert r.status_code == 400 and body_of(r) == {"error": ("bad thing " + "e" * 400)[:300], "status": 400}
    assert "connection" not in r.headers and "retry-after" not in r.headers
    assert counted(router, "edge_router_requests_total", status="400") == 1


def test_a_503_after_the_whole_body_keeps_the_connection():
    r = classify(make_router(FakeDecider(RouterError(503, "no expert"))), request([b"xyz"]))
    assert r.status_code == 503 and "connection" not in r.headers


def test_an_unexpected_failure_is_a_500_naming_the_exception_only():
    router = make_router(FakeDecider(RuntimeError("secret detail")))
    r = classify(router, request([b"x"]))
    assert r.status_code == 500 and body_of(r) == {"error": "internal error: RuntimeError", "status": 500}
    assert router.in_flight == 0 and router.buffered == 0


def test_a_client_that_leaves_is_a_499():
    router = make_router(FakeDecider())
    r = classify(router, request([b"ab", None], length=10))
    assert r.status_code == 499 and counted(router, "edge_router_requests_total", status="499") == 1
    assert router.buffered == 0


# -- the body's limits -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, status, reason, close",
    [
        (
            {"headers": [("Transfer-Encoding", "chunked")], "length": None},
            411,
            "Content-Length required (chunked bodies are not accepted)",
            True,
        ),
        (
            {"headers": [("Transfer-Encoding", "gzip, Chunked")], "length": 5},
            411,
            "Content-Length required (chunked bodies are not accepted)",
            True,
        ),
        ({"length": None}, 411, "Content-Length required", True),
        ({"length": "abc"}, 400, "bad Content-Length", False),
        ({"length": "-1"}, 400, "bad Content-Length", False),
        ({"length": 11}, 413, "body of 11 bytes exceeds the limit of 10", True),
    ],
)
def test_bodies_refused_before_they_are_read(kwargs, status, reason, close):
    decider = FakeDecider()
    router = make_router(decider, max_body_bytes=10)
    r = classify(router, request([b"x"], **kwargs))
    assert (r.status_code, body_of(r)) == (status, {"error": reason, "status": status})
    assert (r.headers.get("connection") == "close") is close
    assert decider.calls == [] and router.buffered == 0


def test_a_body_of_exactly_the_limit_is_read():
    decider = FakeDecider()
    r = classify(make_router(decider, max_body_bytes=10), request([b"0123456789"]))
    assert r.status_code == 200 and decider.calls[0][0] == b"0123456789"


def test_an_empty_body_reaches_the_image_check():
    r = classify(make_router(), request([b""], length=0))  # the real decider
    assert (r.status_code, body_of(r)["error"]) == (400, "empty body: POST a JPEG or PNG image")


def test_the_buffered_bytes_budget():
    """Bodies held at once: one stalls holding 600 bytes of a 1,000-byte budget; a body that would
    take it past the budget is refused (503, Retry-After, connection closed) and releases its bytes
    at once; one that fits is read; when the stalled one completes everything is released."""

    async def scenario():
        router = make_router(FakeDecider(), max_buffered_bytes=1000)
        stall = asyncio.Event()
        stalled = asyncio.create_task(router.classify(request([b"a" * 600], length=700, stall=stall)))
        await until(lambda: router.buffered >= 600)
        held = []  # what the router holds each time it asks for more of the refused body
        refused = await router.classify(
            request([b"b" * 300] * 3, on_receive=lambda: held.append(router.buffered))
        )
        held_after_refusal = router.buffered
        fits = await router.classify(request([b"c" * 200, b"c" * 200]))
        held_after_fit = router.buffered
        stall.set()
        first = await asyncio.wait_for(stalled, 2.0)
        return router, refused, held, held_after_refusal, fits, held_after_fit, first

    router, refused, held, held_after_refusal, fits, held_after_fit, first = asyncio.run(scenario())
    assert held == [600, 900]  # refused at the chunk that would pass the budget, never held
    assert refused.status_code == 503 and body_of(refused) == {
        "error": "too many request bodies in progress; retry",
        "status": 503,
    }
    assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
    assert held_after_refusal == 600 and held_after_fit == 600
    assert fits.status_code == 200 and first.status_code == 200
    assert router.buffered == 0
    assert counted(router, "edge_router_shed_total", limit="buffered_bytes") == 1


# -- the in-flight limit -----------------------------------------------------------------------
def test_the_in_flight_limit():
    """With room for two answers at once, a third request is shed with 503 + Retry-After (and its
    body read whole, so the connection stays); the counts return to zero afterwards."""

    async def scenario():
        release = asyncio.Event()
        router = make_router(FakeDecider(release=release), max_in_flight=2, retry_after_s=3)
        first = asyncio.create_task(router.classify(request([b"1"])))
        second = asyncio.create_task(router.classify(request([b"2"])))
        await until(lambda: router.in_flight >= 2)
        await asyncio.sleep(0)
        in_flight = router.in_flight
        # (a router that let it in would keep it waiting for the release: bounded here)
        shed = await asyncio.wait_for(router.classify(request([b"3"])), 2.0)
        release.set()
        answers = [await asyncio.wait_for(first, 2.0), await asyncio.wait_for(second, 2.0)]
        return router, in_flight, shed, answers

    router, in_flight, shed, answers = asyncio.run(scenario())
    assert in_flight == 2
    assert shed.status_code == 503 and shed.headers["retry-after"] == "3" and "connection" not in shed.headers
    assert body_of(shed) == {
        "error": "router busy: 2 requests in progress (the router's limit); retry after 3 s",
        "status": 503,
    }
    assert [a.status_code for a in answers] == [200, 200]
    assert router.in_flight == 0 and router.buffered == 0
    assert counted(router, "edge_router_in_flight") == 0
    assert counted(router, "edge_router_shed_total", limit="in_flight") == 1
    assert counted(router, "edge_router_requests_total", status="503") == 1


def test_a_connection_back_before_its_retry_after_waits_it_out():
    """At the limit, a connection told to retry after 1 s that asks again at once is answered only
    when the second is up: 503 if the router is still full, its answer if a slot freed meanwhile.
    Another connection's first request is still shed at once."""

    async def timed(router, client):
        started = time.monotonic()
        r = await asyncio.wait_for(router.classify(request([b"x"], client=client)), 5.0)
        return r.status_code, time.monotonic() - started

    async def scenario():
        release = asyncio.Event()
        router = make_router(FakeDecider(release=release), max_in_flight=1, retry_after_s=1)
        held = asyncio.create_task(router.classify(request([b"0"], client=("10.0.0.9", 1))))
        await until(lambda: router.in_flight == 1)
        a, b = ("10.0.0.1", 4000), ("10.0.0.2", 4000)
        told = await timed(router, a)
        again = await timed(router, a)  # 1 s after the first: the wait is over, still full
        other = await timed(router, b)
        freed = asyncio.create_task(timed(router, b))  # back at once: waits, and a slot frees
        await asyncio.sleep(0.3)
        release.set()
        await held
        return told, again, other, await freed

    told, again, other, freed = asyncio.run(scenario())
    assert told[0] == 503 and told[1] < 0.5
    assert again[0] == 503 and 0.8 < again[1] < 1.5
    assert other[0] == 503 and other[1] < 0.5
    assert freed[0] == 200 and 0.8 < freed[1] < 1.5


def test_one_request_at_the_limit_is_answered_and_the_next_waits_its_turn():
    async def scenario():
        router = make_router(FakeDecider(), max_in_flight=1)
        return [await router.classify(request([b"x"])) for _ in range(3)], router

    answers, router = asyncio.run(scenario())
    assert [a.status_code for a in answers] == [200, 200, 200] and router.in_flight == 0


# -- the server's settings ---------------------------------------------------------------------
def test_the_server_settings():
    router = make_router(keepalive_s=7.0, drain_s=12.0, header_timeout_s=2.5)
    config = make_server(router, "127.0.0.2", 8123, log_level="INFO").config
    assert (config.host, config.port, config.loop, config.lifespan) == ("127.0.0.2", 8123, "uvloop", "on")
    assert (config.log_level, config.access_log) == ("info", False)
    assert (config.server_header, config.date_header) == (False, False)
    assert (config.timeout_keep_alive, config.timeout_graceful_shutdown) == (7, 12)
    assert (config.backlog, config.h11_max_incomplete_event_size) == (2048, 16 * 1024)
    assert issubclass(config.http, ReceiptDeadlineProtocol) and config.http.header_timeout_s == 2.5
    assert config.app is not None


def test_the_server_defaults_loopback_and_whole_seconds_of_at_least_one():
    config = make_server(make_router(keepalive_s=0.4, drain_s=0.2)).config
    assert (config.host, config.port, config.log_level) == ("127.0.0.1", 8000, "warning")
    assert (config.timeout_keep_alive, config.timeout_graceful_shutdown) == (1, 1)
