"""Connection abuse: does the router keep answering while clients misbehave?

    python -m benchmarks.abuse --url http://127.0.0.1:8000 --router-pid 12345 --image some.png \\
        --seconds 20 --json run/abuse/abuse.json
    python -m benchmarks.abuse --url http://127.0.0.1:8000 --image some.png --only slowloris --scale 0.1

Each scenario holds its abuse for `--seconds` while a *control* client sends one ordinary request a
second (a fresh connection each time, 10 s timeout) and records its latency and status; when the
router's process id is given, a sampler records its thread count and RSS every 0.25 s. A router
that defends itself keeps the control answered with a latency near its usual one, and its threads
and RSS bounded, whatever the abusers do.

Scenarios (counts at `--scale 1`; every count is multiplied by the scale and rounded, at least 1):

- **slowloris**: 300 sockets send a request line, then one header byte every 2-4 s, never ending
  the headers;
- **idle_keepalive**: 1,000 connections each get one keep-alive GET /healthz answered, then stay
  idle;
- **slow_large_bodies**: 50 sockets POST with `Content-Length` one byte below the body limit and
  trickle the body at 1 KB every 0.5 s;
- **partial_uploads**: 1,000 connections POST with `Content-Length` at the body limit, send the
  first 64 KB and stall (a router that buffers bodies whole, or reserves them up front, grows by
  the declared sizes);
- **overload_burst**: 64 + `--max-in-flight` keep-alive clients POST the image as fast as they can;
  every answer must be 200 or 503 (a 503 with `Retry-After`).

An abuse socket that the router closes is a defence, not an error: it is counted in
`dropped_by_server`. `without_answer` counts the control requests (and the burst's requests) that
got no HTTP answer at all: a timeout, a reset or a refused connection.

The abuse sockets are non-blocking and served by one `selectors` loop, so 1,000 of them cost the
client one thread; the process's soft RLIMIT_NOFILE is raised to its hard limit first. Only loopback
targets are accepted: this is a denial-of-service tool. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import http.client
import ipaddress
import math
import random
import resource
import selectors
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psutil

from benchmarks import target as target_urls
from core.cli import run_cli, write_json
from core.errors import UserInputError
from core.imaging import image_format
from edge_router.app import RouterConfig

CONTROL_TIMEOUT_S = 10.0  # a control request without an answer by then counts as without_answer
CONNECT_TIMEOUT_S = 5.0  # an abuse socket not connected by then is given up (connect_timeout)
SETUP_WAIT_S = 5.0  # the control starts once the abuse is in place, or after this at most
SAMPLE_EVERY_S = 0.25
FD_MARGIN = 64  # descriptors beyond the abuse sockets: control, burst reconnects, files
PARTIAL_BODY_BYTES = 64 * 1024
TRICKLE_BYTES, TRICKLE_EVERY_S = 1024, 0.5
MAX_BURST_REQUESTS_PER_CLIENT = 1_000_000  # a count bound beside the time bound
MAX_LOOP_ITERATIONS = 50_000_000  # of any polling loop, beside its time bound
SETTLE_S = 1.0  # between scenarios: the router closes the previous one's sockets


# -- the target ------------------------------------------------------------------------------------
def _is_loopback_address(host: str) -> bool:
    """127.0.0.0/8 or ::1, as an address: names are not resolved (a typo must not reach anyone)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


ROUTER_DEFAULTS = RouterConfig()


@dataclass
class Target:
    """The router under abuse. `host` must be a loopback address; anything else is a ValueError."""

    host: str
    port: int
    router_pid: int | None  # process whose threads and RSS are sampled; None: not sampled
    control_body: bytes  # a small valid PNG, POSTed as the control request
    control_path: str = "/v1/classify"
    max_body_bytes: int = ROUTER_DEFAULTS.max_body_bytes  # the router's body-size limit
    max_in_flight: int = ROUTER_DEFAULTS.max_in_flight  # the router's in-flight limit

    def __post_init__(self) -> None:
        self.host = self.host.strip("[]")
        if not _is_loopback_address(self.host):
            # UserInputError is a ValueError: the CLI prints it on one line
            raise UserInputError(
                f"host {self.host!r} is not a loopback address (127.0.0.0/8 or ::1): "
                "the abuse scenarios only run against this machine"
            )
        if not 0 < self.port < 65536:
            raise UserInputError(f"port {self.port} is not a TCP port")
        if not self.control_body:
            raise UserInputError("control_body is empty: give a small PNG")
        if self.max_body_bytes < 2 or self.max_in_flight < 1:
            raise UserInputError("max_body_bytes must be at least 2 and max_in_flight at least 1")

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def host_header(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def content_type(self) -> str:
        return "image/jpeg" if image_format(self.control_body) == "jpeg" else "image/png"


def scaled(count: int, scale: float) -> int:
    """`count` at `scale`, rounded, at least 1."""
    return max(1, int(round(count * scale)))


def raise_fd_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; a clear error if it is still below `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass  # keep the soft limit; the check below says whether it is enough
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise UserInputError(
            f"this scenario needs about {needed} open files but RLIMIT_NOFILE is {soft} "
            f"(hard {hard}): raise it (ulimit -n {needed}) or lower --scale"
        )
    return soft


# -- measurement: control requests and the router's threads and RSS -------------------------------
def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def post_once(t: Target, conn: http.client.HTTPConnection | None = None) -> tuple[int, float, bool]:
    """POST the control body once: (status, latency ms, whether a 503 carried Retry-After).

    Opens a fresh connection (closed afterwards) unless `conn` is given; raises OSError or
    http.client.HTTPException when no HTTP answer came.
    """
    own = conn is None
    if own:
        conn = http.client.HTTPConnection(t.host, t.port, timeout=CONTROL_TIMEOUT_S)
    started = time.perf_counter()
    try:
        conn.request("POST", t.control_path, body=t.control_body, headers={"Content-Type": t.content_type})
        r = conn.getresponse()
        r.read()
        ms = (time.perf_counter() - started) * 1000
        retry_after = r.status == 503 and r.getheader("Retry-After") is not None
        if own or r.will_close:
            conn.close()
        return r.status, ms, retry_after
    except BaseException:
        conn.close()
        raise


class Control(threading.Thread):
    """One control request a second for `seconds`, each on its own short-lived thread, so that a
    stalled answer does not delay (and hide) the next ones: `sent` is always ceil(seconds)."""

    def __init__(self, t: Target, seconds: float):
        super().__init__(daemon=True, name="abuse-control")
        self.target, self.count = t, max(1, math.ceil(seconds - 1e-9))
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies_ms: list[float] = []
        self.status: Counter = Counter()
        self.errors: Counter = Counter()
        self.requests: list[threading.Thread] = []

    def run(self) -> None:
        start = time.monotonic()
        for k in range(self.count):
            if self.stop.wait(max(0.0, start + k - time.monotonic())):
                return
            th = threading.Thread(target=self.one, daemon=True, name=f"abuse-control-{k}")
            self.requests.append(th)
            th.start()

    def one(self) -> None:
        try:
            status, ms, _ = post_once(self.target)
        except (OSError, http.client.HTTPException) as exc:
            with self.lock:
                self.errors[type(exc).__name__] += 1
            return
        with self.lock:
            self.status[str(status)] += 1
            self.latencies_ms.append(ms)

    def wait(self, timeout: float) -> None:
        """Until every request sent has its answer or error (`timeout` at most)."""
        deadline = time.monotonic() + timeout
        self.join(timeout)
        for th in list(self.requests):
            th.join(max(0.0, deadline - time.monotonic()))

    def summary(self) -> dict:
        with self.lock:
            latencies, status, errors = list(self.latencies_ms), Counter(self.status), Counter(self.errors)
        sent = len(self.requests)
        answered = sum(status.values())
        unfinished = sent - answered - sum(errors.values())
        if unfinished:  # still waiting when the scenario ended: no answer in time either
            errors["unfinished"] += unfinished
        return {
            "sent": sent,
            "answered": answered,
            "without_answer": sent - answered,
            "status_counts": dict(sorted(status.items())),
            "errors": dict(errors),
            "p50_ms": _percentile(latencies, 50),
            "p99_ms": _percentile(latencies, 99),
            "max_ms": round(max(latencies), 1) if latencies else None,
        }


class Sampler(threading.Thread):
    """The router process's thread count and RSS every 0.25 s (nothing when no pid is given)."""

    def __init__(self, pid: int | None, max_seconds: float):
        super().__init__(daemon=True, name="abuse-sampler")
        self.pid, self.max_samples = pid, int(max_seconds / SAMPLE_EVERY_S) + 2
        self.stop = threading.Event()
        self.threads: list[int] = []
        self.rss_mb: list[float] = []
        self.gone = False
        self.proc = None
        if pid is not None:
            try:
                self.proc = psutil.Process(pid)
                self.sample()  # the first sample is taken before any abuse starts
            except psutil.Error:
                self.gone = True

    def sample(self) -> None:
        with self.proc.oneshot():
            self.threads.append(self.proc.num_threads())
            self.rss_mb.append(self.proc.memory_info().rss / 2**20)

    def run(self) -> None:
        if self.proc is None or self.gone:
            return
        for _ in range(self.max_samples):
            if self.stop.wait(SAMPLE_EVERY_S):
                return
            try:
                self.sample()
            except psutil.Error:  # the router exited (or crashed) under the abuse
                self.gone = True
                return

    def summary(self) -> dict:
        if self.pid is None:
            return {
                "router_threads_max": None,
                "router_rss_mb_max": None,
                "router_rss_mb_start": None,
                "router_note": "not sampled (no router pid)",
            }
        out = {
            "router_threads_start": self.threads[0] if self.threads else None,
            "router_threads_max": max(self.threads) if self.threads else None,
            "router_rss_mb_start": round(self.rss_mb[0], 1) if self.rss_mb else None,
            "router_rss_mb_max": round(max(self.rss_mb), 1) if self.rss_mb else None,
            "router_rss_mb_end": round(self.rss_mb[-1], 1) if self.rss_mb else None,
            "router_samples": len(self.rss_mb),
        }
        if self.gone:
            out["router_gone"] = True  # the process disappeared during the scenario
        return out


# -- abuse: many non-blocking sockets in one selectors loop ----------------------------------------
@dataclass
class _Conn:
    sock: socket.socket
    index: int
    state: str = "connecting"  # connecting | open | closed
    out: memoryview | None = None  # bytes still to write
    trickled: int = 0  # bytes written by the trickle so far
    opened_at: float = 0.0
    status: str | None = None  # the status of the first answer the server sent, if any
    head: bytes = b""  # the first bytes the server sent (to read that status)
    rng: random.Random = field(default_factory=random.Random)


@dataclass
class SocketPlan:
    """What every abuse socket does: write `initial` once connected, then (if `chunk`) write the
    next `len(chunk)` bytes of `trickle_source` every `interval()` seconds, `trickle_limit` bytes at most."""

    initial: bytes
    trickle_source: bytes = b""
    chunk: int = 0
    interval: Callable[[random.Random], float] = lambda rng: 1.0
    trickle_limit: int = 0


class SocketFlood(threading.Thread):
    """Opens `count` sockets to the target, plays `plan` on each until stopped, then closes them all.

    Counts sockets the server closed (`dropped_by_server`, with the seconds each lived), connects
    refused or timed out, and the status of any answer the server sent on an abuse socket.
    """

    def __init__(self, t: Target, count: int, plan: SocketPlan, hard_seconds: float):
        super().__init__(daemon=True, name="abuse-sockets")
        self.target, self.count, self.plan = t, count, plan
        self.hard_deadline = time.monotonic() + hard_seconds
        self.stop = threading.Event()
        self.ready = threading.Event()  # every connect resolved (or timed out)
        self.conns: list[_Conn] = []
        self.connected = 0
        self.refused = 0
        self.connect_timeouts = 0
        self.dropped_after_s: list[float] = []
        self.answers: Counter = Counter()
        self.bytes_sent = 0
        self.open_at_end = 0
        self.client_errors: Counter = Counter()

    # each socket ----------------------------------------------------------------------------------
    def _open(self, sel: selectors.BaseSelector, index: int) -> None:
        sock = socket.socket(self.target.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        conn = _Conn(sock, index, rng=random.Random(index))  # noqa: S311 - timing jitter, not secrets
        self.conns.append(conn)
        err = sock.connect_ex((self.target.host, self.target.port))
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            self._close(sel, conn, refused=True)
            return
        conn.opened_at = time.monotonic()
        sel.register(sock, selectors.EVENT_WRITE, conn)

    def _close(
        self,
        sel: selectors.BaseSelector,
        conn: _Conn,
        *,
        by_server: bool = False,
        refused: bool = False,
        timed_out: bool = False,
    ) -> None:
        if conn.state == "closed":
            return
        if by_server:
            self.dropped_after_s.append(time.monotonic() - conn.opened_at)
        self.refused += refused
        self.connect_timeouts += timed_out
        conn.state = "closed"
        conn.out = None
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _connected(self, sel: selectors.BaseSelector, conn: _Conn, heap: list) -> None:
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._close(sel, conn, refused=True)
            return
        self.connected += 1
        conn.state = "open"
        conn.opened_at = time.monotonic()
        conn.out = memoryview(self.plan.initial)
        if self.plan.chunk:
            heapq.heappush(heap, (conn.opened_at + self.plan.interval(conn.rng), conn.index))
        self._write(sel, conn)

    def _write(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            n = conn.sock.send(conn.out) if conn.out else 0
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:  # reset or broken pipe: the server closed it
            self._close(sel, conn, by_server=True)
            return
        self.bytes_sent += n
        conn.out = conn.out[n:] if conn.out is not None and n < len(conn.out) else None
        # watch for writability only while something is waiting to go out
        sel.modify(conn.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0), conn)

    def _read(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(sel, conn, by_server=True)
            return
        if conn.status is None and len(conn.head) < 64:
            conn.head += data[:64]
            line = conn.head.split(b"\r\n", 1)
            if len(line) == 2 or len(conn.head) >= 64:
                parts = line[0].split()
                conn.status = parts[1].decode("ascii", "replace") if len(parts) > 1 else "unparsed"
                self.answers[conn.status] += 1

    def _trickle(self, sel: selectors.BaseSelector, conn: _Conn, heap: list, now: float) -> None:
        plan = self.plan
        if conn.state != "open" or conn.trickled >= plan.trickle_limit:
            return
        n = min(plan.chunk, plan.trickle_limit - conn.trickled)
        piece = plan.trickle_source[conn.trickled : conn.trickled + n]
        conn.trickled += n
        pending = bytes(conn.out) if conn.out else b""
        conn.out = memoryview(pending + piece)
        self._write(sel, conn)
        if conn.state == "open" and conn.trickled < plan.trickle_limit:
            heapq.heappush(heap, (now + plan.interval(conn.rng), conn.index))

    # the loop -------------------------------------------------------------------------------------
    def run(self) -> None:
        sel = selectors.DefaultSelector()
        heap: list[tuple[float, int]] = []
        try:
            self._loop(sel, heap)
        except Exception as exc:  # noqa: BLE001 - reported in the result, the scenario still ends
            self.client_errors[type(exc).__name__] += 1
        finally:
            self.open_at_end = sum(c.state == "open" for c in self.conns)
            for conn in self.conns:
                self._close(sel, conn)
            sel.close()
            self.ready.set()

    def _loop(self, sel: selectors.BaseSelector, heap: list) -> None:
        for _ in range(MAX_LOOP_ITERATIONS):
            now = time.monotonic()
            if self.stop.is_set() or now > self.hard_deadline:
                return
            # open sockets in batches so the first ones are served while the rest connect
            for i in range(len(self.conns), min(self.count, len(self.conns) + 100)):
                self._open(sel, i)
            for key, events in sel.select(timeout=0.02):
                conn = key.data
                if conn.state == "connecting":
                    if events & selectors.EVENT_WRITE:
                        self._connected(sel, conn, heap)
                    continue
                if events & selectors.EVENT_READ:
                    self._read(sel, conn)
                if conn.state == "open" and events & selectors.EVENT_WRITE:
                    self._write(sel, conn)
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                self._trickle(sel, self.conns[heapq.heappop(heap)[1]], heap, now)
            for conn in self.conns:  # a connect the server never completes is given up
                if conn.state == "connecting" and now - conn.opened_at > CONNECT_TIMEOUT_S:
                    self._close(sel, conn, timed_out=True)
            if (
                not self.ready.is_set()
                and len(self.conns) == self.count
                and all(c.state != "connecting" for c in self.conns)
            ):
                self.ready.set()

    def summary(self) -> dict:
        drops = self.dropped_after_s
        out = {
            "connected": self.connected,
            "connect_refused": self.refused,
            "connect_timeout": self.connect_timeouts,
            "dropped_by_server": len(drops),
            "dropped_after_s": (
                {
                    "min": round(min(drops), 2),
                    "p50": round(float(np.median(drops)), 2),
                    "max": round(max(drops), 2),
                }
                if drops
                else None
            ),
            "open_at_end": self.open_at_end,
            "server_answers": dict(sorted(self.answers.items())),
            "bytes_sent": self.bytes_sent,
        }
        if self.client_errors:
            out["client_errors"] = dict(self.client_errors)
        return out


# -- abuse: the overload burst ---------------------------------------------------------------------
class Burst:
    """`clients` threads, each a keep-alive connection POSTing the control body back to back."""

    def __init__(self, t: Target, clients: int):
        self.target, self.clients = t, clients
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.lock = threading.Lock()
        self.sent = 0
        self.status: Counter = Counter()
        self.retry_after = 0
        self.errors: Counter = Counter()
        self.latencies_ms: list[float] = []
        self.threads = [
            threading.Thread(target=self.client, daemon=True, name=f"abuse-burst-{i}") for i in range(clients)
        ]

    def start(self) -> None:
        for th in self.threads:
            th.start()
        self.ready.set()

    def client(self) -> None:
        conn = http.client.HTTPConnection(self.target.host, self.target.port, timeout=CONTROL_TIMEOUT_S)
        sent, status, errors, latencies, retry_after = 0, Counter(), Counter(), [], 0
        try:
            for _ in range(MAX_BURST_REQUESTS_PER_CLIENT):
                if self.stop.is_set():
                    break
                sent += 1
                try:
                    code, ms, has_retry_after = post_once(self.target, conn)
                except (OSError, http.client.HTTPException) as exc:
                    errors[type(exc).__name__] += 1
                    self.stop.wait(0.05)  # a refused connect must not spin this thread
                    continue
                status[str(code)] += 1
                latencies.append(ms)
                retry_after += has_retry_after
        finally:
            conn.close()
            with self.lock:
                self.sent += sent
                self.status.update(status)
                self.errors.update(errors)
                self.latencies_ms.extend(latencies)
                self.retry_after += retry_after

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for th in self.threads:
            th.join(max(0.0, deadline - time.monotonic()))

    def summary(self, seconds: float) -> dict:
        answered = sum(self.status.values())
        return {
            "clients": self.clients,
            "requests_sent": self.sent,
            "answered": answered,
            "burst_without_answer": self.sent - answered,
            "status_counts": dict(sorted(self.status.items())),
            "unexpected_status": sum(v for k, v in self.status.items() if k not in ("200", "503")),
            "with_retry_after": self.retry_after,
            "without_retry_after_503": self.status.get("503", 0) - self.retry_after,
            "errors": dict(self.errors),
            "answered_per_s": round(answered / seconds, 1) if seconds > 0 else None,
            "burst_p50_ms": _percentile(self.latencies_ms, 50),
            "burst_p99_ms": _percentile(self.latencies_ms, 99),
        }


# -- scenarios -------------------------------------------------------------------------------------
def _measure(name: str, t: Target, seconds: float, abuse, sockets: int) -> dict:
    """Run `abuse` (a SocketFlood or Burst) for `seconds` with the control and sampler beside it."""
    if seconds <= 0:
        raise UserInputError("seconds must be positive")
    raise_fd_limit(sockets + FD_MARGIN)
    sampler = Sampler(t.router_pid, seconds + SETUP_WAIT_S + CONTROL_TIMEOUT_S + 10)
    sampler.start()
    setup_started = time.monotonic()
    abuse.start()
    abuse.ready.wait(SETUP_WAIT_S)  # the control measures the abuse in place, not its ramp-up
    setup_s = time.monotonic() - setup_started
    control = Control(t, seconds)
    started = time.monotonic()
    control.start()
    try:
        time.sleep(seconds)  # the abuse is held for the whole duration ...
        # ... and until the last control request has its answer (a connect and a read: 2 timeouts)
        control.wait(2 * CONTROL_TIMEOUT_S + 2)
    finally:
        control.stop.set()
        held_s = time.monotonic() - started
        abuse.stop.set()
        abuse.join(CONTROL_TIMEOUT_S + 5)
        sampler.stop.set()
        sampler.join(2)
    try:  # does the router answer once the abuse is gone?
        status, ms, _ = post_once(t)
        after = {"status": status, "ms": round(ms, 1)}
    except (OSError, http.client.HTTPException) as exc:
        after = {"status": None, "error": type(exc).__name__}
    c = control.summary()
    out = {
        "scenario": name,
        "sockets": sockets,
        "seconds": seconds,
        "setup_s": round(setup_s, 2),
        "held_s": round(held_s, 2),
        "control": c,
        "without_answer": c["without_answer"],
        **sampler.summary(),
    }
    if isinstance(abuse, Burst):
        burst = abuse.summary(held_s)
        out.update(burst)
        out["without_answer"] += burst["burst_without_answer"]
        out["dropped_by_server"] = None  # not measured: burst clients reconnect and count errors
    else:
        out.update(abuse.summary())
    out["control_after"] = after
    return out


def _body(t: Target, n: int) -> bytes:
    """The first `n` bytes of a body that starts as the control image (a PNG header to sniff)."""
    head = t.control_body[:n]
    return head + bytes(n - len(head))


def _request_head(t: Target, content_length: int) -> bytes:
    return (
        f"POST {t.control_path} HTTP/1.1\r\nHost: {t.host_header}\r\nContent-Type: {t.content_type}\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


def slowloris(t: Target, seconds: float, scale: float) -> dict:
    """Request lines whose headers never end: one more header byte every 2-4 s per socket."""
    count = scaled(300, scale)
    # header lines are never empty, so the bytes never contain the blank line that ends the headers
    headers = b"".join(b"X-Slow-%d: %d\r\n" % (i, i) for i in range(int(seconds / 2) + 2))
    plan = SocketPlan(
        initial=b"GET /healthz HTTP/1.1\r\n",
        trickle_source=headers,
        chunk=1,
        interval=lambda rng: rng.uniform(2.0, 4.0),
        trickle_limit=len(headers),
    )
    return _measure("slowloris", t, seconds, _flood(t, count, plan, seconds), count)


def idle_keepalive(t: Target, seconds: float, scale: float) -> dict:
    """Connections that get one keep-alive GET /healthz answered and then stay idle."""
    count = scaled(1000, scale)
    plan = SocketPlan(initial=f"GET /healthz HTTP/1.1\r\nHost: {t.host_header}\r\n\r\n".encode())
    out = _measure("idle_keepalive", t, seconds, _flood(t, count, plan, seconds), count)
    out["keepalive_answered"] = out["server_answers"].get("200", 0)
    return out


def slow_large_bodies(t: Target, seconds: float, scale: float) -> dict:
    """Bodies declared just under the limit, trickled at 1 KB every 0.5 s (never complete)."""
    count = scaled(50, scale)
    length = t.max_body_bytes - 1
    # never the last byte: the body stays incomplete however long the scenario runs
    limit = min(length - 1, int((seconds + SETUP_WAIT_S) / TRICKLE_EVERY_S + 2) * TRICKLE_BYTES)
    plan = SocketPlan(
        initial=_request_head(t, length),
        trickle_source=_body(t, limit),
        chunk=TRICKLE_BYTES,
        interval=lambda rng: TRICKLE_EVERY_S,
        trickle_limit=limit,
    )
    out = _measure("slow_large_bodies", t, seconds, _flood(t, count, plan, seconds), count)
    out["content_length"] = length
    return out


def partial_uploads(t: Target, seconds: float, scale: float) -> dict:
    """Bodies declared at the limit; the first 64 KB is sent, then nothing more."""
    count = scaled(1000, scale)
    part = min(PARTIAL_BODY_BYTES, t.max_body_bytes // 2)
    plan = SocketPlan(initial=_request_head(t, t.max_body_bytes) + _body(t, part))
    out = _measure("partial_uploads", t, seconds, _flood(t, count, plan, seconds), count)
    out.update(content_length=t.max_body_bytes, body_bytes_each=part)
    return out


def overload_burst(t: Target, seconds: float, scale: float) -> dict:
    """64 + max_in_flight keep-alive clients POSTing back to back: answers must be 200 or 503."""
    clients = scaled(64 + t.max_in_flight, scale)
    out = _measure("overload_burst", t, seconds, Burst(t, clients), clients)
    out["max_in_flight"] = t.max_in_flight
    return out


def _flood(t: Target, count: int, plan: SocketPlan, seconds: float) -> SocketFlood:
    # the hard bound covers set-up, the duration and the last control request's timeout
    return SocketFlood(t, count, plan, hard_seconds=seconds + SETUP_WAIT_S + CONTROL_TIMEOUT_S + 10)


SCENARIOS: dict[str, Callable[[Target, float, float], dict]] = {
    "slowloris": slowloris,
    "idle_keepalive": idle_keepalive,
    "slow_large_bodies": slow_large_bodies,
    "overload_burst": overload_burst,
    "partial_uploads": partial_uploads,
}


def run_scenario(name: str, target: Target, *, seconds: float = 20.0, scale: float = 1.0) -> dict:
    """One scenario's result (see the module docstring); ValueError for an unknown name."""
    if name not in SCENARIOS:
        raise UserInputError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    if scale <= 0:
        raise UserInputError("scale must be positive")
    return SCENARIOS[name](target, seconds, scale)


def run_all(
    target: Target, *, seconds: float = 20.0, scale: float = 1.0, names=None, progress=print
) -> list[dict]:
    """Every scenario in `names` (default: all, in SCENARIOS order); `progress` gets one line each."""
    names = list(names) if names else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise UserInputError(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    results = []
    for i, name in enumerate(names):
        if i:
            time.sleep(SETTLE_S)
        result = run_scenario(name, target, seconds=seconds, scale=scale)
        results.append(result)
        if progress is not None:
            progress(summary_line(result))
    return results


def summary_line(r: dict) -> str:
    c = r["control"]
    line = (
        f"{r['scenario']}: {r['sockets']} sockets, control {c['answered']}/{c['sent']} answered "
        f"p50/p99/max {c['p50_ms']}/{c['p99_ms']}/{c['max_ms']} ms, "
        f"without_answer {r['without_answer']}, "
        f"router threads max {r['router_threads_max']}, RSS max {r['router_rss_mb_max']} MB"
    )
    if r["scenario"] == "overload_burst":
        return line + f", burst {r['status_counts']} ({r['with_retry_after']} with Retry-After)"
    refused = r["connect_refused"] + r["connect_timeout"]
    return (
        line
        + f", dropped_by_server {r['dropped_by_server']}"
        + (f", connects refused or timed out {refused}" if refused else "")
    )


# -- command line ----------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    first, _, rest = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.abuse",
        description=first,
        epilog=rest,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--url",
        required=True,
        help="base URL of the running router (loopback only), e.g. http://127.0.0.1:8000",
    )
    p.add_argument(
        "--router-pid",
        type=int,
        default=None,
        help="the router's process id: its threads and RSS are sampled (default: not sampled)",
    )
    p.add_argument(
        "--image",
        required=True,
        help="a small PNG (or JPEG) the router classifies: the control request's body",
    )
    p.add_argument("--seconds", type=float, default=20.0, help="how long each scenario holds its abuse")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every socket and client count")
    p.add_argument(
        "--only",
        nargs="+",
        choices=list(SCENARIOS),
        default=None,
        metavar="SCENARIO",
        help=f"run only these ({', '.join(SCENARIOS)}); default: all",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=ROUTER_DEFAULTS.max_body_bytes, help="the router's body limit"
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=ROUTER_DEFAULTS.max_in_flight,
        help="the router's in-flight limit",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    return p


def main(args: argparse.Namespace) -> list[dict]:
    url = target_urls.check_url(args.url, "--url", allow_remote=True)  # the loopback check is below
    parts = urlsplit(url)
    if not target_urls.is_loopback(parts.hostname):
        raise UserInputError(
            f"--url {url}: host {parts.hostname} is not loopback; the abuse scenarios "
            "only run against this machine (127.0.0.0/8, localhost, ::1)"
        )
    if parts.scheme != "http":
        raise UserInputError("--url: the abuse scenarios speak plain HTTP; give an http:// URL")
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    if args.seconds <= 0 or args.scale <= 0:
        raise UserInputError("--seconds and --scale must be positive")
    body = Path(args.image).read_bytes()
    if image_format(body) is None:
        raise UserInputError(f"--image {args.image}: not a PNG or JPEG")
    if args.router_pid is not None and not psutil.pid_exists(args.router_pid):
        raise UserInputError(f"--router-pid {args.router_pid}: no such process")
    t = Target(
        host,
        parts.port or 80,
        args.router_pid,
        body,
        max_body_bytes=args.max_body_bytes,
        max_in_flight=args.max_in_flight,
    )
    target_urls.check_router_answers(url)  # one clear line, rather than five scenarios of refusals
    results = run_all(t, seconds=args.seconds, scale=args.scale, names=args.only)
    if args.json:
        write_json(
            args.json,
            {
                **target_urls.provenance("benchmarks.abuse", {"router": url}),
                "seconds": args.seconds,
                "scale": args.scale,
                "scenarios": results,
            },
        )
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
