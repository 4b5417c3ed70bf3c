"""The front door's documented limits, on a router served in process on 127.0.0.1 over raw sockets.

Each test starts `edge_router.app` (the real uvicorn server and protocol from `make_server`) with
small limits and no upstream at all: the limits act before any TorchServe is asked, and a body that
gets through them is answered by the router's own image check (415 for the bytes sent here). Every
wait is a poll or a socket timeout with a deadline of a few seconds.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from edge_router.app import Router, RouterConfig, make_server
from edge_router.discovery import Discovery, Endpoint

NOWHERE = "http://127.0.0.1:9"  # no upstream is needed; a probe that tries this is refused at once


def wait_until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    """Poll `predicate` until it holds or the deadline passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


@contextlib.contextmanager
def serving(**limits) -> Iterator[tuple[Router, int]]:
    """The router with `limits` (RouterConfig fields) on a free loopback port: (router, port)."""
    discovery = Discovery(Endpoint("edge", NOWHERE), Endpoint("cloud", NOWHERE))
    router = Router(discovery, None, RouterConfig(**limits))
    server = make_server(router, "127.0.0.1", 0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started, 10.0), "the router did not start"
        yield router, sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    assert not thread.is_alive()


def counted(router: Router, name: str, **labels: str) -> float:
    """A counter of the router's Prometheus registry (0 before its first increment)."""
    return router.metrics.registry.get_sample_value(name, labels) or 0.0


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def post_head(length: int) -> bytes:
    return f"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n".encode()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


def read_response(sock: socket.socket, timeout_s: float = 3.0) -> Answer:
    """One HTTP response from `sock`; socket.timeout if none comes within `timeout_s`."""
    sock.settimeout(timeout_s)
    r = http.client.HTTPResponse(sock, method="POST")
    r.begin()
    return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())


def closed_within(sock: socket.socket, timeout_s: float) -> float | None:
    """Seconds until the server closes `sock` (EOF or reset), or None if it is still open after
    `timeout_s`. Anything the server sends first is an error here."""
    started = time.monotonic()
    sock.settimeout(timeout_s)
    try:
        data = sock.recv(1024)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return time.monotonic() - started
    assert data == b"", f"unexpected bytes from the server: {data[:80]!r}"
    return time.monotonic() - started


def trickle_until_closed(sock: socket.socket, every_s: float, limit_s: float) -> float | None:
    """Send a byte every `every_s` until the server closes `sock`: seconds until it did, or None
    if it is still open after `limit_s`."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        try:
            sock.sendall(b"X")
        except OSError:  # reset by the server
            return time.monotonic() - started
        if closed_within(sock, every_s) is not None:
            return time.monotonic() - started
    return None


def test_a_stalled_body_gets_408_and_its_bytes_are_released():
    with serving(body_timeout_s=0.5, header_timeout_s=5.0) as (router, port), connect(port) as s:
        started = time.monotonic()
        s.sendall(post_head(100) + b"x" * 10)  # then nothing: the body stalls
        assert wait_until(lambda: router.buffered == 10)
        r = read_response(s)
        assert r.status == 408 and 0.4 < time.monotonic() - started < 2.5
        assert json.loads(r.body)["error"] == "body not received within 0.5 s"
        assert r.headers.get("connection") == "close"
        assert closed_within(s, 2.0) is not None
        assert wait_until(lambda: router.buffered == 0)


def test_a_body_arriving_in_time_is_read_whole():
    with serving(body_timeout_s=1.0) as (router, port), connect(port) as s:
        s.sendall(post_head(100) + b"x" * 60)
        assert wait_until(lambda: router.buffered == 60)
        s.sendall(b"x" * 40)
        r = read_response(s)
        assert r.status == 415  # the whole body reached the image check (not an image)
        assert router.buffered == 0


@pytest.mark.parametrize("first, second, refused", [(700, 800, True), (500, 500, False)])
def test_bodies_held_at_once_beyond_the_budget_get_503_with_retry_after(first, second, refused):
    """One upload stalls holding `first` bytes; a second body of `second` bytes arrives in two parts.
    Beyond the 1,000-byte budget it is refused with 503 + Retry-After; at the budget it is read."""
    with serving(max_buffered_bytes=1000, body_timeout_s=5.0) as (router, port):
        with connect(port) as a, connect(port) as b:
            a.sendall(post_head(first + 100) + b"a" * first)
            assert wait_until(lambda: router.buffered == first)
            b.sendall(post_head(second) + b"b" * 200)  # part of it is held when the rest arrives
            assert wait_until(lambda: router.buffered == first + 200)
            b.sendall(b"b" * (second - 200))
            r = read_response(b)
            if refused:
                assert r.status == 503 and r.headers.get("retry-after") == "1"
                assert json.loads(r.body)["error"] == "too many request bodies in progress; retry"
            else:
                assert r.status == 415
            assert router.buffered == first  # the second body's bytes are released at once
            a.sendall(b"a" * 100)  # the stalled upload completes and is answered as usual
            assert read_response(a).status == 415
        assert wait_until(lambda: router.buffered == 0)
        assert counted(router, "edge_router_shed_total", limit="buffered_bytes") == (1 if refused else 0)


def test_a_client_that_leaves_mid_body_releases_its_bytes():
    with serving(body_timeout_s=5.0) as (router, port):
        with connect(port) as s:
            s.sendall(post_head(100) + b"x" * 50)
            assert wait_until(lambda: router.buffered == 50)
        assert wait_until(lambda: router.buffered == 0)
        assert wait_until(lambda: counted(router, "edge_router_requests_total", status="499") == 1)


def test_idle_and_trickling_connections_are_closed_at_the_header_deadline():
    with serving(header_timeout_s=0.5, keepalive_s=10.0) as (_, port):
        with connect(port) as idle, connect(port) as slow:
            started = time.monotonic()
            slow.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: t\r\n")
            closed = trickle_until_closed(slow, 0.1, 3.0)  # a header byte every 0.1 s never completes
            assert closed is not None and 0.4 < closed < 2.5, closed
            assert closed_within(idle, 3.0) is not None  # said nothing at all
            assert 0.4 < time.monotonic() - started < 2.5


def test_the_header_deadline_stops_once_the_headers_are_in():
    """A body may take longer than the header deadline: it has its own (the body timeout)."""
    with serving(header_timeout_s=0.3, body_timeout_s=3.0) as (_, port), connect(port) as s:
        s.sendall(post_head(100) + b"x" * 10)
        assert closed_within(s, 0.8) is None  # well past the header deadline, still open
        s.sendall(b"x" * 90)
        assert read_response(s).status == 415


def test_the_next_requests_headers_are_due_after_an_answer():
    """After an answer on a keep-alive connection the header deadline starts again (here shorter
    than the keep-alive timeout, so it is what closes the idle connection)."""
    with serving(header_timeout_s=0.5, keepalive_s=10.0) as (_, port), connect(port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(s).status == 503  # no classifier, no experts: degraded
        waited = closed_within(s, 3.0)
        assert waited is not None and 0.3 < waited < 2.5, waited


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout():
    with serving(keepalive_s=1.0, header_timeout_s=6.0) as (_, port), connect(port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        r = read_response(s)
        assert r.status == 503 and r.headers.get("connection") != "close"
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")  # kept alive: a second answer
        assert read_response(s).status == 503
        waited = closed_within(s, 4.0)
        assert waited is not None and 0.8 < waited < 3.0, waited  # the 1-s keep-alive, not the 6 s
