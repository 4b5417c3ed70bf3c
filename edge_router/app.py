"""The edge router: the device-facing HTTP service in front of the edge and cloud TorchServe.

    POST /v1/classify      body: a JPEG or PNG image
        query (all optional): threshold (p_tar in (0, 1]), compression (fp32|fp16|int8, the
        offloaded tensor's), deadline_ms, expert (force one instead of routing), mode
        (auto | edge_only: never offload, answer with the most confident branch |
        cloud_only: send the image to the cloud's full_<expert> archive, default conventional),
        min_accuracy (an accuracy target instead of a threshold), offload (fixed | adaptive:
        offload only when it can finish in time and is worth it; edge_router.adaptive)
    GET  /v1/experts       the experts in use, the refused ones and why
    GET  /healthz          200 when the classifier and at least one expert are usable
    GET  /metrics          Prometheus text (prometheus-client)

A Starlette application under uvicorn (one event loop; no thread per connection). What it decides
lives in `edge_router.decisions`; this module is the HTTP around it:

- **One TorchServe hop on the edge.** The 30-KB distortion classifier runs here, in process, with
  the same `handlers.runtime` class and manifest as its TorchServe archive (loaded from the model
  store's `distortion_classifier.mar`); the expert's edge segments stay on the edge TorchServe.
- **Bounded.** At most `max_in_flight` requests are answered at once; beyond that an immediate 503
  with `Retry-After` (a request counts once its body has arrived, so slow uploads cannot take the
  slots); a connection that comes back before its `Retry-After` is up waits out the rest first
  (`edge_router.pacing`). Request bodies need a `Content-Length` no larger than `max_body_bytes`, are
  read as they arrive within `body_timeout_s`, and all bodies held at once stay under
  `max_buffered_bytes` (else 503 with `Retry-After`). A connection must deliver a request's
  headers within `header_timeout_s` of its first byte (or of connecting), whatever it trickles:
  slowloris and idle sockets are closed by the server (`ReceiptDeadlineProtocol`); idle keep-alive
  connections close after `keepalive_s`.
- **Pooled async upstream.** One aiohttp client session with keep-alive connections to the edge
  TorchServe and every cloud endpoint (TorchServe, KServe or Triton: `edge_router.cloud` spreads
  offloads over the healthy ones and retries a failed one on the next); every call gets what is
  left of the request's deadline.
- **Graceful drain.** SIGTERM is uvicorn's own: it stops accepting, answers the requests in
  progress (up to `drain_s`), then exits.
- **Devices and TLS, when configured.** With device keys (`edge_router.devices`) every request but
  `/healthz` needs a valid key (401 otherwise); with a certificate the server speaks HTTPS, and
  with a client CA only to clients with a certificate it signed (`edge_router.tls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from core.imaging import DEFAULT_MAX_BYTES
from edge_router.classifier import LocalClassifier
from edge_router.cloud import CloudPool, CloudUpstream
from edge_router.decisions import Decider, Reply, UpstreamTimeout, UpstreamUnreachable
from edge_router.devices import DeviceAuth, DeviceKeys
from edge_router.discovery import Discovery, Endpoint
from edge_router.metrics import CONTENT_TYPE, Metrics
from edge_router.options import Defaults, RouterError, parse_query
from edge_router.pacing import RetryAfterPacing
from edge_router.tls import ServerTls, bound_tls_incoming, bound_tls_read_buffers
from edge_router.tokens import with_fresh_token

log = logging.getLogger(__name__)


@dataclass
class RouterConfig:
    default_threshold: float = 0.8
    default_deadline_ms: float = 2000.0
    max_body_bytes: int = DEFAULT_MAX_BYTES
    # Requests answered at once; beyond: 503 + Retry-After. By Little's law the wait of an admitted
    # request is about max_in_flight / throughput: 16 at the ~150 answers/s of one edge core keeps
    # it near 0.1 s, where 32 let it reach 0.5 s under a burst (docs/results/reliability.md).
    max_in_flight: int = 16
    max_buffered_bytes: int = 96 * 2**20  # request bodies held at once; beyond: 503 + Retry-After
    header_timeout_s: float = 5.0  # a request's headers must arrive within this
    body_timeout_s: float = 15.0  # and its body within this after the headers
    keepalive_s: float = 5.0  # an idle keep-alive connection is closed after this
    drain_s: float = 30.0  # SIGTERM: how long requests in progress may still take
    connect_timeout_s: float = 1.0
    upstream_connections: int = 64  # pooled keep-alive connections to each TorchServe
    retry_after_s: int = 1
    cloud_policy: str = "least_outstanding"  # or round_robin (edge_router.cloud)
    # when to offload (edge_router.adaptive): fixed is the paper's rule; adaptive weighs the link
    offload_policy: str = "fixed"
    min_accuracy: float | None = None  # a default accuracy target (requests may set their own)
    min_gain_per_second: float = 10.0  # accuracy points one second of offloading must buy


class Shed(RouterError):
    """A request refused for the router's load, not its content: 503 with `Retry-After`."""

    def __init__(self, message: str):
        super().__init__(503, message)


# -- the upstream TorchServe instances, over pooled keep-alive HTTP ------------------------------------
class HttpUpstream:
    """`decisions.Upstream` over one aiohttp session (created inside the running loop): the edge
    TorchServe, and the cloud endpoints through `edge_router.cloud` (pool, retries, OIP)."""

    def __init__(self, edge: Endpoint, cloud: CloudUpstream, config: RouterConfig):
        self.edge, self.cloud, self.config = edge, cloud, config
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(
            limit_per_host=self.config.upstream_connections, keepalive_timeout=30, ttl_dns_cache=300
        )
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def expected_offload_s(self, model: str) -> float | None:
        return self.cloud.expected_offload_s(model)

    async def post(
        self, role: str, model: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> Reply:
        if role == "cloud":
            return await self.cloud.post(self.session, model, body, headers, timeout_s)
        timeout = aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=min(self.config.connect_timeout_s, timeout_s)
        )

        async def send(auth: dict[str, str]) -> Reply:
            async with self.session.post(
                f"{self.edge.inference_url}/predictions/{model}",
                data=body,
                headers={**auth, **headers},
                timeout=timeout,
            ) as r:
                return Reply(r.status, r.headers, await r.read())

        try:
            return await with_fresh_token(self.edge, send)
        except TimeoutError:
            raise UpstreamTimeout() from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(str(exc)) from None


# -- the HTTP application ---------------------------------------------------------------------------
class Router:
    """The router's state: configuration, discovery, classifier, upstream, metrics, limits."""

    def __init__(
        self,
        discovery: Discovery,
        classifier: LocalClassifier | None,
        config: RouterConfig | None = None,
        *,
        devices: DeviceKeys | None = None,
    ):
        self.discovery, self.classifier, self.devices = discovery, classifier, devices
        self.config = config or RouterConfig()
        self.metrics = Metrics()
        self.pool = CloudPool(discovery.clouds, policy=self.config.cloud_policy)
        cloud = CloudUpstream(
            self.pool,
            self._catalogue,
            self.config.connect_timeout_s,
            on_retry=lambda name: self.metrics.cloud_retries.labels(name).inc(),
        )
        self.upstream = HttpUpstream(discovery.edge, cloud, self.config)
        c = self.config
        self.defaults = Defaults(
            c.default_threshold,
            c.default_deadline_ms,
            c.max_body_bytes,
            c.min_accuracy,
            c.offload_policy,
            c.min_gain_per_second,
        )
        self.decider = Decider(self._catalogue, classifier, self.upstream, self.defaults)
        self.in_flight = 0
        self.buffered = 0
        self.pacing = RetryAfterPacing(self.config.retry_after_s)

    def _catalogue(self):
        return self.discovery.catalogue

    # -- the endpoints --
    async def classify(self, request: Request) -> Response:
        started = time.perf_counter()
        held = 0
        try:
            # The body first: a slow or stalled upload holds only its bytes of the buffered-body
            # budget, never one of the in-flight slots the answering work is bounded by.
            body, held = await self._read_body(request)
            if self.in_flight >= self.config.max_in_flight:
                # back before its Retry-After on the same connection: it waits out the rest first
                await asyncio.sleep(self.pacing.wait_s(request.scope.get("client")))
            if self.in_flight >= self.config.max_in_flight:
                self.pacing.told(request.scope.get("client"))
                return self._shed("in_flight", f"{self.in_flight} requests in progress (the router's limit)")
            self.in_flight += 1
            self.metrics.in_flight.set(self.in_flight)
            try:
                options = parse_query(request.url.query, self.defaults)
                answer = await self.decider.answer(body, options)
            finally:
                self.in_flight -= 1
                self.metrics.in_flight.set(self.in_flight)
        except RouterError as exc:
            # a body refused unread must not be parsed as the next request: close the connection
            return self._error(
                exc.status,
                str(exc),
                close=exc.status in (408, 411, 413)
                or (exc.status == 503 and held < int(request.headers.get("content-length") or 0)),
                # a shed request may come back as it is: say when, as the in-flight limit does
                headers={"Retry-After": str(self.config.retry_after_s)} if isinstance(exc, Shed) else None,
            )
        except ClientDisconnect:
            self.metrics.requests.labels("499").inc()
            return Response(status_code=499)
        except Exception as exc:  # noqa: BLE001 - the router keeps serving
            log.exception("request failed")
            return self._error(500, f"internal error: {type(exc).__name__}")
        finally:
            self.buffered -= held
            self.metrics.buffered_bytes.set(self.buffered)
        self.metrics.observe_answer(answer, time.perf_counter() - started)
        return JSONResponse(answer)

    async def _read_body(self, request: Request) -> tuple[bytes, int]:
        """The body as it arrives, within the body timeout and the buffered-bytes budget; returns
        it and the bytes it holds of the budget (released by the caller)."""
        if "chunked" in request.headers.get("transfer-encoding", "").lower():
            raise RouterError(411, "Content-Length required (chunked bodies are not accepted)")
        length = request.headers.get("content-length")
        if length is None:
            raise RouterError(411, "Content-Length required")
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            raise RouterError(400, "bad Content-Length") from None
        if n > self.config.max_body_bytes:  # refused before a byte of it is read
            raise RouterError(413, f"body of {n} bytes exceeds the limit of {self.config.max_body_bytes}")
        chunks, held = [], 0
        try:
            async with asyncio.timeout(self.config.body_timeout_s):
                async for chunk in request.stream():
                    if self.buffered + len(chunk) > self.config.max_buffered_bytes:
                        self.metrics.shed.labels("buffered_bytes").inc()
                        raise Shed("too many request bodies in progress; retry")
                    self.buffered += len(chunk)
                    held += len(chunk)
                    chunks.append(chunk)
        except TimeoutError:
            self.buffered -= held
            raise RouterError(408, f"body not received within {self.config.body_timeout_s:g} s") from None
        except BaseException:
            self.buffered -= held
            raise
        self.metrics.buffered_bytes.set(self.buffered)
        return b"".join(chunks), held

    async def healthz(self, request: Request) -> Response:
        cat = self._catalogue()
        ok = cat.classifier is not None and bool(cat.experts)
        return JSONResponse(
            {
                "status": "ok" if ok else "degraded",
                "experts": sorted(cat.experts),
                "in_flight": self.in_flight,
            },
            status_code=200 if ok else 503,
        )

    async def experts(self, request: Request) -> Response:
        return JSONResponse({**self._catalogue().describe(), "clouds": self.pool.describe()})

    async def metrics_text(self, request: Request) -> Response:
        self.metrics.observe_links(self.pool.links.describe())
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    def _shed(self, limit: str, why: str) -> Response:
        self.metrics.shed.labels(limit).inc()
        return self._error(
            503,
            f"router busy: {why}; retry after {self.config.retry_after_s} s",
            headers={"Retry-After": str(self.config.retry_after_s)},
        )

    def _error(
        self, status: int, message: str, *, close: bool = False, headers: dict[str, str] | None = None
    ) -> Response:
        self.metrics.requests.labels(str(status)).inc()
        headers = dict(headers or {})
        if close:  # a body we refused to read must not be parsed as the next request
            headers["Connection"] = "close"
        return JSONResponse(
            {"error": " ".join(message.split())[:300], "status": status}, status_code=status, headers=headers
        )

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return self._error(404, f"no such endpoint {request.url.path[:60]}")

    async def method_not_allowed(self, request: Request, exc: Exception) -> Response:
        return self._error(405, f"{request.method} not allowed on {request.url.path[:60]}")

    def asgi(self) -> Starlette | DeviceAuth:
        app = self._starlette()
        if self.devices is None:
            return app
        return DeviceAuth(app, self.devices, on_request=self.metrics.observe_device)

    def _starlette(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app):
            await self.upstream.open()
            probes = asyncio.create_task(self.upstream.cloud.probe_loop(self.upstream.session))
            try:
                yield
            finally:
                probes.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probes
                await self.upstream.close()

        return Starlette(
            routes=[
                Route("/v1/classify", self.classify, methods=["POST"]),
                Route("/v1/experts", self.experts, methods=["GET"]),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/metrics", self.metrics_text, methods=["GET"]),
            ],
            exception_handlers={404: self.not_found, 405: self.method_not_allowed},
            lifespan=lifespan,
        )


# -- the server ---------------------------------------------------------------------------------------
class ReceiptDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a deadline on receiving a request's headers.

    uvicorn's keep-alive timer runs only between requests and is reset by every byte received, so
    a client that trickles a header byte every few seconds (slowloris), or connects and says
    nothing, would hold its connection forever. Here the headers must be complete within
    `header_timeout_s` of the connection (or of the end of the previous answer), however they
    trickle; the body has its own timeout in the application.
    """

    header_timeout_s = 5.0  # set on the subclass made by `serve`

    def connection_made(self, transport) -> None:
        bound_tls_incoming(transport)
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._receipt_timer = self.loop.call_later(self.header_timeout_s, self._receipt_expired)

    def _disarm(self) -> None:
        timer = getattr(self, "_receipt_timer", None)
        if timer is not None:
            timer.cancel()
            self._receipt_timer = None

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's headers are due within the same limit

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _receipt_expired(self) -> None:
        self._receipt_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def make_server(
    router: Router,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "warning",
    tls: ServerTls | None = None,
) -> uvicorn.Server:
    config = router.config
    protocol = type(
        "RouterProtocol", (ReceiptDeadlineProtocol,), {"header_timeout_s": config.header_timeout_s}
    )
    if tls:
        bound_tls_read_buffers()  # asyncio's loop: its SSL read buffer can be made small (edge_router.tls)
    return uvicorn.Server(
        uvicorn.Config(
            router.asgi(),
            host=host,
            port=port,
            http=protocol,
            loop="asyncio" if tls else "uvloop",
            lifespan="on",
            log_level=log_level.lower(),
            access_log=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=int(max(1, config.keepalive_s)),
            timeout_graceful_shutdown=int(max(1, config.drain_s)),
            backlog=2048,
            h11_max_incomplete_event_size=16 * 1024,
            **(tls.uvicorn_options() if tls else {}),
        )
    )


def serve(
    router: Router,
    host: str,
    port: int,
    *,
    log_level: str = "warning",
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (uvicorn's graceful shutdown)."""
    server = make_server(router, host, port, log_level=log_level)
    if on_ready is not None:
        on_ready()
    server.run()
