"""A small thread-safe Prometheus registry for the router (text exposition format 0.0.4)."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
    return "{" + body + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    def __init__(self, prefix: str = "edge_router"):
        self.prefix = prefix
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self._help: dict[str, str] = {}
        self._hist: dict[tuple, list[float]] = {}
        self._hist_sum: dict[tuple, float] = defaultdict(float)

    def inc(self, name: str, value: float = 1.0, help: str = "", **labels: str) -> None:
        with self._lock:
            self._help.setdefault(name, help)
            self._counters[name][tuple(sorted(labels.items()))] += value

    def observe(self, name: str, seconds: float, help: str = "", **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._help.setdefault(name, help)
            counts = self._hist.setdefault(key, [0.0] * (len(LATENCY_BUCKETS_S) + 1))
            for i, bound in enumerate(LATENCY_BUCKETS_S):
                if seconds <= bound:
                    counts[i] += 1
            counts[-1] += 1
            self._hist_sum[key] += seconds

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines = []
        with self._lock:
            for name, series in sorted(self._counters.items()):
                full = f"{self.prefix}_{name}"
                lines += [f"# HELP {full} {self._help.get(name, '')}", f"# TYPE {full} counter"]
                lines += [f"{full}{_labels(dict(k))} {v:g}" for k, v in sorted(series.items())]
            names = sorted({k[0] for k in self._hist})
            for name in names:
                full = f"{self.prefix}_{name}"
                lines += [f"# HELP {full} {self._help.get(name, '')}", f"# TYPE {full} histogram"]
                for (n, labels), counts in sorted(self._hist.items()):
                    if n != name:
                        continue
                    base = dict(labels)
                    for bound, c in zip(LATENCY_BUCKETS_S, counts, strict=False):
                        lines.append(f"{full}_bucket{_labels({**base, 'le': f'{bound:g}'})} {c:g}")
                    lines.append(f"{full}_bucket{_labels({**base, 'le': '+Inf'})} {counts[-1]:g}")
                    lines.append(f"{full}_sum{_labels(base)} {self._hist_sum[(n, labels)]:.6f}")
                    lines.append(f"{full}_count{_labels(base)} {counts[-1]:g}")
        return "\n".join(lines) + "\n"
