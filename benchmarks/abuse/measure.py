"""What `benchmarks.abuse` measures beside the abuse: the router under abuse (`Target`, loopback
only), the control requests (`post_once`, `Control`: one a second) and the router process's threads
and RSS (`Sampler`)."""

from __future__ import annotations

import http.client
import ipaddress
import math
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import psutil

from core.errors import UserInputError
from core.imaging import image_format
from edge_router.app import RouterConfig

CONTROL_TIMEOUT_S = 10.0  # a control request without an answer by then counts as without_answer
SAMPLE_EVERY_S = 0.25


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
    # a router on HTTPS: the context every abuser and control connection handshakes with (the
    # run's CA, and a client certificate under mutual TLS); None: plain HTTP
    tls: ssl.SSLContext | None = field(default=None, repr=False)
    auth: dict[str, str] = field(default_factory=dict, repr=False)  # device key header, if keys are on

    def connection(self, timeout: float = CONTROL_TIMEOUT_S) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    @property
    def auth_lines(self) -> str:
        """The device key as raw header lines (the abuse sockets write their requests by hand)."""
        return "".join(f"{k}: {v}\r\n" for k, v in self.auth.items())

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


# -- measurement: control requests and the router's threads and RSS -------------------------------
def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def post_once(t: Target, conn: http.client.HTTPConnection | None = None) -> tuple[int, float, bool]:
    """POST the control body once: (status, latency ms, whether a 503 carried Retry-After).

    Opens a fresh connection (closed afterwards) unless `conn` is given; raises OSError or
    http.client.HTTPException when no HTTP answer came.
    """
    own = conn is None
    if own:
        conn = t.connection()
    started = time.perf_counter()
    try:
        conn.request(
            "POST", t.control_path, body=t.control_body, headers={"Content-Type": t.content_type, **t.auth}
        )
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
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
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
