"""The abusers of `benchmarks.abuse`: `SocketFlood` (many non-blocking sockets in one selectors
loop, each playing a `SocketPlan`), `Burst` (keep-alive clients POSTing back to back, from a
process of their own) and the open-file
limit they need (`raise_fd_limit`)."""

from __future__ import annotations

import errno
import heapq
import http.client
import json
import multiprocessing
import random
import resource
import selectors
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from benchmarks.abuse.measure import CONTROL_TIMEOUT_S, Target, percentile, post_once
from core.errors import UserInputError

CONNECT_TIMEOUT_S = 5.0  # an abuse socket not connected by then is given up (connect_timeout)
MAX_BURST_REQUESTS_PER_CLIENT = 1_000_000  # a count bound beside the time bound
MAX_LOOP_ITERATIONS = 50_000_000  # of any polling loop, beside its time bound


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


# -- many non-blocking sockets in one selectors loop ------------------------------------------------
@dataclass
class _Conn:
    sock: socket.socket
    index: int
    state: str = "connecting"  # connecting | handshaking (TLS) | open | closed
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
        if self.target.tls is not None:  # a TLS router: the handshake first, without blocking
            sel.unregister(conn.sock)
            conn.sock = self.target.tls.wrap_socket(
                conn.sock, server_hostname=self.target.host, do_handshake_on_connect=False
            )
            conn.state = "handshaking"
            sel.register(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
            self._handshake(sel, conn, heap)
            return
        self._opened(sel, conn, heap)

    def _handshake(self, sel: selectors.BaseSelector, conn: _Conn, heap: list) -> None:
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            sel.modify(conn.sock, selectors.EVENT_READ, conn)
            return
        except ssl.SSLWantWriteError:
            sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return
        except OSError:  # the server refused the handshake (or closed the socket)
            self._close(sel, conn, refused=True)
            return
        self._opened(sel, conn, heap)

    def _opened(self, sel: selectors.BaseSelector, conn: _Conn, heap: list) -> None:
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
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
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
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
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
                if conn.state == "handshaking":
                    self._handshake(sel, conn, heap)
                    continue
                if events & selectors.EVENT_READ:
                    self._read(sel, conn)
                if conn.state == "open" and events & selectors.EVENT_WRITE:
                    self._write(sel, conn)
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                self._trickle(sel, self.conns[heapq.heappop(heap)[1]], heap, now)
            for conn in self.conns:  # a connect (or handshake) the server never completes is given up
                if conn.state in ("connecting", "handshaking") and now - conn.opened_at > CONNECT_TIMEOUT_S:
                    self._close(sel, conn, timed_out=True)
            if (
                not self.ready.is_set()
                and len(self.conns) == self.count
                and all(c.state not in ("connecting", "handshaking") for c in self.conns)
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


# -- the overload burst ----------------------------------------------------------------------------
class BurstClients:
    """`clients` threads, each a keep-alive connection POSTing the control body back to back (run
    inside `Burst`'s own process)."""

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
        conn = self.target.connection(CONTROL_TIMEOUT_S)
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

    def raw(self) -> dict:
        """What `summary` is made of, as plain JSON (it crosses from `Burst`'s child process)."""
        return {
            "sent": self.sent,
            "status": dict(self.status),
            "retry_after": self.retry_after,
            "errors": dict(self.errors),
            "latencies_ms": self.latencies_ms,
        }

    @classmethod
    def from_raw(cls, t: Target, clients: int, raw: dict) -> BurstClients:
        out = cls(t, clients)
        out.sent, out.retry_after, out.latencies_ms = raw["sent"], raw["retry_after"], raw["latencies_ms"]
        out.status, out.errors = Counter(raw["status"]), Counter(raw["errors"])
        return out

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
            "burst_p50_ms": percentile(self.latencies_ms, 50),
            "burst_p99_ms": percentile(self.latencies_ms, 99),
        }


class Burst:
    """The overload burst from a process of its own: `BurstClients` in a forked child.

    Why a process: the control request is measured by a thread of this one. Beside 80 client threads
    in the same interpreter it waits for the GIL at each of its socket calls, and what it measured was
    that wait (hundreds of ms) as much as the router. Devices in a burst are other machines; a
    process of their own keeps their load on the router and out of the control's clock. Forked, not
    spawned: the target's TLS context cannot be pickled, and the child only starts new threads."""

    def __init__(self, t: Target, clients: int):
        ctx = multiprocessing.get_context("fork")
        self.target, self.clients = t, clients
        self.ready = ctx.Event()
        self.stop = ctx.Event()
        self._results, self._child_end = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=self._run, daemon=True, name="abuse-burst")
        self._summary: dict | None = None

    def start(self) -> None:
        self._process.start()
        self._child_end.close()

    def _run(self) -> None:  # in the child
        clients = BurstClients(self.target, self.clients)
        clients.start()
        self.ready.set()
        self.stop.wait()
        clients.stop.set()
        clients.join(CONTROL_TIMEOUT_S + 2)
        self._child_end.send_bytes(json.dumps(clients.raw()).encode())

    def join(self, timeout: float) -> None:
        if self._results.poll(timeout):
            self._summary = json.loads(self._results.recv_bytes())
        self._process.join(max(0.1, timeout))
        if self._process.is_alive():  # it did not report in time: it is not waited for again
            self._process.kill()
            self._process.join(2)

    def summary(self, seconds: float) -> dict:
        if self._summary is None:
            raise RuntimeError(f"the burst's process did not report its {self.clients} clients' answers")
        return BurstClients.from_raw(self.target, self.clients, self._summary).summary(seconds)
