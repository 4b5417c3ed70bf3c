"""The router's Prometheus metrics, through `prometheus-client` (one registry per router).

What one answer adds is derived from the answer itself (`observe_answer`), so the decisions module
stays free of metrics and HTTP.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from core import experts

LATENCY_BUCKETS_S = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, prefix: str = "edge_router"):
        self.registry = CollectorRegistry()
        r, p = self.registry, prefix
        self.requests = Counter(f"{p}_requests", "router requests by status", ["status"], registry=r)
        self.exits = Counter(f"{p}_exits", "answers by exit and expert", ["expert", "exit"], registry=r)
        self.offloads = Counter(f"{p}_offloads", "requests offloaded to the cloud", ["expert"], registry=r)
        self.offloaded_bytes = Counter(f"{p}_offloaded_bytes", "tensor bytes sent to the cloud", registry=r)
        self.degraded = Counter(
            f"{p}_degraded", "best-edge answers because the cloud failed", ["reason"], registry=r
        )
        self.shed = Counter(
            f"{p}_shed", "requests refused with 503 because the router was full", ["limit"], registry=r
        )
        self.seconds = Histogram(
            f"{p}_request_seconds",
            "router latency of answered requests",
            ["offloaded"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.cloud_retries = Counter(
            f"{p}_cloud_retries", "offloads retried on another cloud endpoint", ["endpoint"], registry=r
        )
        self.offload_decisions = Counter(
            f"{p}_offload_decisions",
            "decisions on samples no side branch was sure of, by reason (edge_router.adaptive)",
            ["reason"],
            registry=r,
        )
        self.expected_offload = Gauge(
            f"{p}_expected_offload_seconds",
            "the router's estimate of an offload's time, by cloud endpoint (NaN: none yet)",
            ["endpoint"],
            registry=r,
        )
        self.in_flight = Gauge(f"{p}_in_flight", "requests being answered now", registry=r)
        self.device_requests = Counter(
            f"{p}_device_requests", "requests with a valid device key, by key id", ["key_id"], registry=r
        )
        self.auth_refused = Counter(
            f"{p}_auth_refused",
            "requests refused with 401, by reason (missing or invalid key)",
            ["reason"],
            registry=r,
        )
        self.buffered_bytes = Gauge(f"{p}_buffered_body_bytes", "request body bytes held now", registry=r)

    def observe_device(self, key_id: str | None, refused: str | None) -> None:
        """One request checked by `edge_router.devices.DeviceAuth`: the key id, never the key."""
        if key_id is not None:
            self.device_requests.labels(key_id).inc()
        else:
            self.auth_refused.labels(refused or "invalid").inc()

    def observe_answer(self, answer: dict, seconds: float) -> None:
        self.requests.labels("200").inc()
        cloud_only = answer.get("compression") == "image"  # the whole image went to full_<expert>
        expert = experts.archive_name("full", answer["expert"]) if cloud_only else answer["expert"]
        self.exits.labels(expert, str(answer["exit"])).inc()
        if answer["offloaded"] and not cloud_only:
            self.offloads.labels(answer["expert"]).inc()
            self.offloaded_bytes.inc(answer["offloaded_bytes"])
        decision = answer.get("offload_decision")
        if decision:
            self.offload_decisions.labels(decision["reason"]).inc()
        if answer.get("degraded"):
            self.degraded.labels(answer.get("degraded_kind", "cloud_error")).inc()
        self.seconds.labels(str(bool(answer["offloaded"])).lower()).observe(seconds)

    def observe_links(self, links: dict[str, dict]) -> None:
        for name, link in links.items():
            ms = link["expected_offload_ms"]
            self.expected_offload.labels(name).set(float("nan") if ms is None else ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
