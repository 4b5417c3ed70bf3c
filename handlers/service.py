"""TorchServe plumbing shared by the three handlers (no torch import).

A handler gets a batch of requests and must return exactly one response per request. `Service`
parses each request on its own, so one bad request gets its own 4xx with a one-line JSON reason
while the rest of the batch is answered; whatever happens, the worker survives (an exception that
escapes a handler costs a worker restart and fails the whole batch).

Configuration: the archive's `model-config.yaml` section `onnxruntime` (`intra_op_threads`,
`providers`), overridden by the environment variables `EE_ORT_THREADS` and `EE_ORT_PROVIDERS`
(comma-separated) of the TorchServe instance.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from core.errors import UserInputError
from core.manifest import Manifest
from handlers.metrics import MetricBuffer, quiet_worker_logging

MANIFEST_NAME = "model_manifest.json"
DESCRIBE_HEADER = "X-Describe"  # "manifest": answer with the archive's manifest (discovery)
log = logging.getLogger(__name__)


class RequestError(UserInputError):
    """A request the handler refuses, with its HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


REASONS = {
    400: "Bad Request",
    404: "Not Found",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
}


def one_line(message: str, limit: int = 300) -> str:
    return " ".join(str(message).split())[:limit]


def header(context, idx: int, name: str) -> str | None:
    """A request header, looked up case-insensitively."""
    try:
        headers = context.get_all_request_header(idx) or {}
    except Exception:  # noqa: BLE001 - a context without headers
        return None
    wanted = name.lower()
    for key, value in headers.items():
        if str(key).lower() == wanted:
            return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)
    return None


def body_bytes(request: dict) -> bytes:
    """The raw body of one request; JSON or form bodies are refused (images and tensors are binary)."""
    body = request.get("data")
    if body is None:
        body = request.get("body")
    if isinstance(body, (bytes, bytearray)):
        if not body:
            raise RequestError("empty body")
        return bytes(body)
    if body is None:
        raise RequestError("empty body")
    raise RequestError("expected a binary body (image or tensor), not JSON or form data", 415)


class Service:
    """Base of the handlers: manifest, sessions, per-request error isolation, metrics."""

    role: str = ""

    def __init__(self):
        self.initialized = False
        self.manifest: Manifest | None = None
        # EE_METRICS_INTERVAL_S=0: every metric emitted on its request, with TorchServe's own
        # per-request lines kept (TorchServe's stock behaviour; benchmarks.edge_hop compares)
        self.metrics = MetricBuffer(interval_s=float(os.environ.get("EE_METRICS_INTERVAL_S", "1")))

    # -- lifecycle ---------------------------------------------------------------------------
    def initialize(self, context) -> None:
        model_dir = Path(context.system_properties.get("model_dir", "."))
        self.manifest = Manifest.load(model_dir / MANIFEST_NAME)
        if self.manifest.role != self.role:
            raise RuntimeError(
                f"{MANIFEST_NAME} is a {self.manifest.role} manifest; this handler serves {self.role}"
            )
        config = (getattr(context, "model_yaml_config", None) or {}).get("onnxruntime", {}) or {}
        threads = int(os.environ.get("EE_ORT_THREADS", config.get("intra_op_threads", 1)))
        providers = tuple(
            p.strip()
            for p in os.environ.get(
                "EE_ORT_PROVIDERS", ",".join(config.get("providers", ["CPUExecutionProvider"]))
            ).split(",")
            if p.strip()
        )
        self.load(model_dir, threads=threads, providers=providers)
        log.info(
            "%s %s ready: %d onnxruntime thread(s), %s",
            self.role,
            self.manifest.name,
            threads,
            ",".join(providers),
        )
        if self.metrics.interval_s > 0:
            quiet_worker_logging()
            self.metrics.start_timer()
        self.initialized = True

    def load(self, model_dir: Path, *, threads: int, providers: tuple[str, ...]) -> None:
        raise NotImplementedError

    # -- requests ----------------------------------------------------------------------------
    def parse(self, request: dict, context: object, idx: int) -> object:
        raise NotImplementedError

    def run(self, items: dict[int, object], context: object) -> dict[int, object]:
        raise NotImplementedError

    def handle(self, data: list, context) -> list:
        started = time.perf_counter()
        responses: list = [None] * len(data)
        items: dict[int, object] = {}
        for i, request in enumerate(data):
            if (header(context, i, DESCRIBE_HEADER) or "").strip().lower() == "manifest":
                context.set_response_content_type(i, "application/json")
                responses[i] = self.manifest.to_json()
                continue
            try:
                items[i] = self.parse(request if isinstance(request, dict) else {}, context, i)
            except RequestError as exc:
                responses[i] = self.error(context, i, exc.status, str(exc))
            except UserInputError as exc:
                responses[i] = self.error(context, i, 400, str(exc))
            except Exception as exc:  # noqa: BLE001 - never let one request kill the worker
                log.exception("request %d could not be parsed", i)
                responses[i] = self.error(context, i, 500, f"{type(exc).__name__}: {exc}")
        if items:
            try:
                answers = self.run(items, context)
            except Exception as exc:  # noqa: BLE001
                log.exception("batch of %d failed", len(items))
                answers = {i: None for i in items}
                for i in items:
                    responses[i] = self.error(context, i, 500, f"{type(exc).__name__}: {exc}")
            for i, answer in answers.items():
                if answer is not None:
                    responses[i] = answer
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.metric("HandlerTime", elapsed_ms, kind="time")
        self.metrics.flush(getattr(context, "metrics", None))
        return responses

    def error(self, context, idx: int, status: int, message: str) -> str:
        # The reason phrase must stay one short line: a multi-line phrase kills the worker.
        context.set_response_status(status, REASONS.get(status, "Error"), idx)
        context.set_response_content_type(idx, "application/json")  # a JSON reason, said so
        self.metric("RequestErrors", 1, dimensions={"Status": str(status)})
        return json.dumps({"error": one_line(message), "status": status})

    def metric(
        self, name: str, value: float, *, kind: str = "counter", dimensions: dict | None = None
    ) -> None:
        """Record a handler metric; `handle` hands the sums to TorchServe about once a second."""
        self.metrics.add(name, value, kind=kind, dimensions=dimensions)
