"""Handler metrics, summed in the worker and handed to TorchServe about once a second.

TorchServe carries a Python worker's metrics as log lines on the worker's stdout, which its Java
frontend reads and parses, and the edge exit used to write four per request (TorchServe's own
"Backend received inference" line and `PredictionTime`, then `HandlerTime` and `ExitsByBranch`).
Measured with `benchmarks.edge_hop` (warm, one core for the serving side): emitting them once a
second is worth 17 % of the edge's 16-client throughput at 224 px, and more on a JVM fresh from
start-up, whose log path is not compiled yet. So the handlers record into a
`MetricBuffer` and the buffer emits one line per metric and dimension set per interval:
counters as the sum over the interval (Prometheus counters end up the same), times as the mean.
A timer thread flushes a quiet worker's last interval, so a scrape is at most about one interval
behind. `quiet_worker_logging` drops the two per-request lines TorchServe writes itself:
`PredictionTime` (the same figure as `HandlerTime`) and the "Backend received" notice. The
interval is `EE_METRICS_INTERVAL_S` of the TorchServe instance (default 1; 0 emits on every
request and keeps TorchServe's own lines, its stock behaviour).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

try:  # present inside a TorchServe worker; plain objects with .name/.value elsewhere
    from ts.metrics.dimension import Dimension
except ImportError:  # pragma: no cover - the unit tests run with TorchServe installed
    from collections import namedtuple

    Dimension = namedtuple("Dimension", "name value")

Key = tuple[str, str, tuple[tuple[str, str], ...]]  # (name, kind, sorted dimensions)


class MetricBuffer:
    """Sums counters and averages times; `flush(metrics)` hands them to TorchServe's metrics store.

    `add` is called on the request path and only updates a dict; `flush` emits when at least
    `interval_s` passed since the last emission (or always with `force=True`). Thread-safe: the
    worker's request thread and the flush timer both call it.
    """

    def __init__(self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[Key, list[float]] = {}  # key -> [sum, count]
        self._last_flush = clock()
        self._store = None  # the context's metrics, once seen
        self._timer: threading.Thread | None = None
        self._stop = threading.Event()

    def add(
        self, name: str, value: float, *, kind: str = "counter", dimensions: dict[str, str] | None = None
    ) -> None:
        if kind not in ("counter", "time"):
            raise ValueError(f"unknown metric kind {kind!r}")
        key = (name, kind, tuple(sorted((dimensions or {}).items())))
        with self._lock:
            entry = self._pending.setdefault(key, [0.0, 0])
            entry[0] += value
            entry[1] += 1

    def pending(self) -> dict[Key, tuple[float, int]]:
        with self._lock:
            return {k: (v[0], v[1]) for k, v in self._pending.items()}

    def flush(self, metrics, *, force: bool = False) -> int:
        """Emit what was recorded if the interval passed; returns how many lines were emitted."""
        if metrics is not None:
            self._store = metrics
        store = self._store
        with self._lock:
            now = self.clock()
            if store is None or not self._pending or (not force and now - self._last_flush < self.interval_s):
                return 0
            pending, self._pending, self._last_flush = self._pending, {}, now
        emitted = 0
        for (name, kind, dims), (total, count) in pending.items():
            dimensions = [Dimension(k, v) for k, v in dims]
            try:
                if kind == "time":
                    store.add_time(name, round(total / count, 3), None, "ms", dimensions)
                else:
                    store.add_counter(name, total, None, dimensions)
                emitted += 1
            except Exception:  # noqa: BLE001 - metrics must never fail a request or the timer
                log.debug("metric %s not recorded", name, exc_info=True)
        return emitted

    def start_timer(self) -> None:
        """Flush every interval from a daemon thread (a quiet worker's last counts still show)."""
        if self._timer is not None:
            return
        self._timer = threading.Thread(target=self._run, name="metric-flush", daemon=True)
        self._timer.start()

    def stop_timer(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush(None)


class _DropPredictionTime(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("[METRICS]PredictionTime")


def quiet_worker_logging() -> None:
    """Drop TorchServe's two per-request worker log lines (see the module docstring).

    Warnings and errors, the worker's tracebacks included, still reach the model log.
    """
    logging.getLogger("ts.protocol.otf_message_handler").setLevel(logging.WARNING)
    metric_logger = logging.getLogger("ts.metrics.caching_metric")
    if not any(isinstance(f, _DropPredictionTime) for f in metric_logger.filters):
        metric_logger.addFilter(_DropPredictionTime())
