"""The one load client of the benchmarks: N keep-alive clients POSTing images to a router.

    with LoadClient(url, bodies, clients=4, params={"threshold": 0.8}) as load:
        time.sleep(10)                 # or: LoadClient(...).run(seconds=10, max_requests=5000)
    print(load.summary())

Every request's fate is recorded (`Record`: status, seconds, the answer's JSON when 200, the
body's label when given), so each benchmark derives what it reports from the same records:
throughput and percentiles of the answers (`summary`), requests shed by the router (503 with
`Retry-After`, counted apart from errors), correctness, degraded answers, lost requests. Bounded:
`run` stops at `seconds` or `max_requests`, whichever comes first; a background `LoadClient`
stops when its `with` block ends. Traffic goes only where `url` points; the benchmarks check that
it is loopback or inside their own namespaces (`benchmarks.lib.target`).

A request is `lost` when it went out and no HTTP answer came back (timeout, connection reset); a
connection refused before anything was sent is `refused` (a clear error, not a loss).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import requests

from edge_router.tls import verified_session

LOST = "lost"
REFUSED = "refused"


@dataclass
class Record:
    status: int | str  # HTTP status, or LOST / REFUSED
    seconds: float
    started: float  # time.time() when sent
    label: int | None = None
    answer: dict | None = field(default=None, repr=False)
    reason: str = ""


class LoadClient:
    """`clients` threads, each with its own keep-alive session, sending `bodies` round-robin."""

    def __init__(
        self,
        url: str,
        bodies: list[bytes] | list[tuple[bytes, int]],
        *,
        clients: int = 1,
        params: dict | None = None,
        timeout_s: float = 30.0,
        path: str = "/v1/classify",
        max_requests: int | None = None,
        keep_answers: bool = True,
        headers: dict[str, str] | None = None,
        verify: str | bool = True,
        cert: tuple[str, str] | None = None,
    ):
        if clients < 1 or not bodies:
            raise ValueError("need at least one client and one body")
        self.url = url.rstrip("/") + path
        self.bodies = [b if isinstance(b, tuple) else (b, None) for b in bodies]
        self.clients, self.params, self.timeout_s = clients, dict(params or {}), timeout_s
        self.keep_answers, self.headers = keep_answers, dict(headers or {})
        self.verify, self.cert = verify, cert  # HTTPS: the CA bundle, a client certificate
        self.records: list[Record] = []
        self._budget = max_requests if max_requests is not None else float("inf")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = self._ended = 0.0

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> LoadClient:
        self._started = time.perf_counter()
        self._threads = [
            threading.Thread(target=self._worker, args=(k,), daemon=True) for k in range(self.clients)
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self, join_s: float | None = None) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=join_s if join_s is not None else self.timeout_s + 5)
        self._ended = time.perf_counter()

    def __enter__(self) -> LoadClient:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def run(self, seconds: float, max_requests: int | None = None) -> dict:
        """Run in the foreground for `seconds` (or until `max_requests`); returns `summary()`."""
        if max_requests is not None:
            self._budget = max_requests
        self.start()
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at and any(t.is_alive() for t in self._threads):
            time.sleep(0.05)
        self.stop()
        return self.summary()

    def _take(self) -> bool:
        with self._lock:
            if self._budget <= 0:
                return False
            self._budget -= 1
            return True

    def _worker(self, k: int) -> None:
        session = verified_session(self.verify, self.cert, self.headers)
        i = k
        while not self._stop.is_set() and self._take():
            body, label = self.bodies[i % len(self.bodies)]
            i += self.clients
            started, t = time.time(), time.perf_counter()
            answer, reason = None, ""
            try:
                r = session.post(self.url, data=body, params=self.params, timeout=self.timeout_s)
                status = r.status_code
                if status == 200 and self.keep_answers:
                    answer = r.json()
                elif status != 200:
                    reason = _reason(r)
            except requests.Timeout:
                status = LOST
            except requests.ConnectionError as exc:
                status = REFUSED if "Connection refused" in str(exc) else LOST
                session = requests.Session()
                session.headers.update(self.headers)
                if status == REFUSED:
                    time.sleep(0.05)  # a client backs off instead of spinning on a closed port
            except ValueError:  # a 200 without JSON
                status, reason = "bad_json", "200 without JSON"
            rec = Record(status, time.perf_counter() - t, started, label, answer, reason)
            with self._lock:
                self.records.append(rec)

    # -- results -----------------------------------------------------------------------------------
    def summary(self) -> dict:
        recs = list(self.records)
        ok = np.array([r.seconds for r in recs if r.status == 200]) * 1000
        elapsed = (self._ended or time.perf_counter()) - self._started
        statuses: dict[str, int] = {}
        for r in recs:
            statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
        shed = statuses.get("503", 0)  # the router's load shedding (Retry-After), not a failure
        return {
            "concurrency": self.clients,
            "requests": len(recs),
            "ok": int(ok.size),
            "errors": len(recs) - int(ok.size) - shed,
            "shed": shed,
            "lost": statuses.get(LOST, 0),
            "statuses": statuses,
            "seconds": round(elapsed, 2),
            "throughput_rps": round(ok.size / elapsed, 2) if elapsed > 0 else 0.0,
            **percentiles(ok),
        }


def percentiles(ms: np.ndarray | list[float]) -> dict:
    ms = np.asarray(ms, dtype=float)
    if ms.size == 0:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)}


def _reason(r: requests.Response) -> str:
    try:
        return str(r.json().get("error", ""))[:120]
    except ValueError:
        return (r.reason or "")[:120]
