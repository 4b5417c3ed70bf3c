"""The edge router: the device-facing HTTP service in front of the edge and cloud TorchServe.

    POST /v1/classify      body: a JPEG or PNG image
        query (all optional): threshold (p_tar in (0, 1]), compression (fp32|fp16|int8, the
        offloaded tensor's), deadline_ms, expert (force one instead of routing), mode
        (auto | edge_only: never offload, answer with the most confident branch |
        cloud_only: send the image to the cloud's full_<expert> archive, default conventional)
    GET  /v1/experts       the experts in use, the refused ones and why
    GET  /healthz          200 when the classifier and at least one expert are usable
    GET  /metrics          Prometheus text

One request: the classifier on the edge gives the distortion probabilities; the expert of the most
likely distortion runs on the edge with per-sample exits; if no side branch is confident the edge
returns the split tensor in the binary wire format, which is forwarded unchanged to the cloud
expert; the final-exit rule (core.exits.decide) picks the answer. If the cloud is unreachable,
answers 5xx, or the deadline would pass, the best edge branch answers, marked `degraded` with the
reason. Bad input gets a 4xx with a one-line JSON reason.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import requests

from core import wire
from core.exits import decide
from core.imaging import DEFAULT_MAX_BYTES, header_dimensions, image_format
from edge_router.discovery import CLASSIFIER, Discovery
from edge_router.metrics import Metrics

log = logging.getLogger(__name__)


MIN_DEADLINE_MS = 50.0


class RouterError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Options:
    threshold: float
    compression: str
    deadline_s: float
    expert: str | None
    mode: str


@dataclass
class RouterConfig:
    default_threshold: float = 0.8
    default_deadline_ms: float = 2000.0
    max_body_bytes: int = DEFAULT_MAX_BYTES
    connect_timeout_s: float = 1.0


def parse_options(query: str, config: RouterConfig) -> Options:
    """Query parameters to Options; RouterError(400) with the reason on anything odd."""
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except ValueError:
        raise RouterError(400, "too many query parameters") from None
    known = {"threshold", "compression", "deadline_ms", "expert", "mode"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise RouterError(400, f"unknown query parameter(s): {', '.join(repr(u[:30]) for u in unknown)}")

    def one(name, default=None):
        values = params.get(name)
        if not values:
            return default
        if len(values) > 1:
            raise RouterError(400, f"{name} given more than once")
        return values[0]

    def number(name, default, lo, hi):
        raw = one(name)
        if raw is None:
            return default
        try:
            v = float(raw)
        except ValueError:
            raise RouterError(400, f"{name} is not a number") from None
        if not lo < v <= hi:
            raise RouterError(400, f"{name} must be in ({lo:g}, {hi:g}]")
        return v

    threshold = number("threshold", config.default_threshold, 0.0, 1.0)
    deadline_ms = number("deadline_ms", config.default_deadline_ms, 0.0, 600_000.0)
    if deadline_ms < MIN_DEADLINE_MS:   # no edge can answer sooner: refuse rather than time out
        raise RouterError(400, f"deadline_ms must be at least {MIN_DEADLINE_MS:g}")
    compression = (one("compression", "fp32") or "").lower()
    if compression not in wire.COMPRESSIONS:
        raise RouterError(400, "compression must be fp32, fp16 or int8")
    mode = (one("mode", "auto") or "").lower()
    if mode not in ("auto", "edge_only", "cloud_only"):
        raise RouterError(400, "mode must be auto, edge_only or cloud_only")
    expert = one("expert")
    if expert is not None and (not expert or len(expert) > 64
                               or not all(c.isalnum() or c in "_-" for c in expert)):
        raise RouterError(400, "expert must be a registered expert's name")
    return Options(threshold, compression, deadline_ms / 1000.0, expert, mode)


class Router:
    def __init__(self, discovery: Discovery, config: RouterConfig | None = None,
                 metrics: Metrics | None = None):
        self.discovery = discovery
        self.config = config or RouterConfig()
        self.metrics = metrics or Metrics()
        self._local = threading.local()

    def _session(self) -> requests.Session:
        # one keep-alive connection pool per server thread
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    # -- the request ------------------------------------------------------------------------
    def classify(self, body: bytes, options: Options) -> dict:
        started = time.perf_counter()
        deadline = started + options.deadline_s
        timings: dict[str, float] = {}
        check_image(body, self.config.max_body_bytes)
        cat = self.discovery.catalogue
        edge_ep, cloud_ep = self.discovery.edge, self.discovery.cloud
        if options.mode == "cloud_only":
            return self._cloud_only(body, options, started, deadline)

        # 1. distortion -> expert
        distortion, probabilities = None, None
        if options.expert is not None:
            pair = cat.experts.get(options.expert)
            if pair is None:
                raise RouterError(404, f"expert {options.expert!r} is not registered on both edge and "
                                       f"cloud (known: {', '.join(sorted(cat.experts)) or 'none'})")
        else:
            if cat.classifier is None:
                raise RouterError(503, "no distortion classifier registered on the edge")
            t = time.perf_counter()
            answer = self._post(edge_ep, f"predictions/{CLASSIFIER}", body, {}, deadline, "classifier")
            timings["classifier_ms"] = _ms(t)
            distortion, probabilities = answer["distortion"], answer["probabilities"]
            pair = cat.expert_for(distortion)
            if pair is None:
                raise RouterError(503, f"no expert registered for {distortion}")

        # 2. the edge expert
        t = time.perf_counter()
        r = self._raw_post(edge_ep, f"predictions/edge_{pair.name}", body,
                           {"X-Exit-Threshold": repr(options.threshold),
                            "X-Offload-Compression": options.compression}, deadline, "edge")
        timings["edge_ms"] = _ms(t)
        out = {"expert": pair.name, "distortion": distortion, "distortion_probabilities": probabilities,
               "threshold": options.threshold, "offloaded": False, "offloaded_bytes": 0,
               "degraded": False}
        names = pair.edge.class_names
        if r.headers.get(wire.HEADER_LENGTH) is None:
            edge = _json(r, "edge")
            out.update(exit=edge["exit"], exit_name=edge["exit_name"], **{"class": edge["class"]},
                       class_name=edge["class_name"], confidence=edge["confidence"])
        else:
            head_len = r.headers[wire.HEADER_LENGTH]
            try:
                message = wire.decode(r.content, head_len)
            except wire.WireError as exc:
                raise RouterError(502, f"edge returned a malformed tensor: {exc}") from None
            branches = message.parameters.get("branches", [])
            conf = [b["confidence"] for b in branches]
            pred = [b["class"] for b in branches]
            if options.mode == "edge_only":
                self._answer_from(out, conf, pred, names, pair)
                out["exit_note"] = "edge_only: the most confident side branch"
            else:
                out["offloaded"] = True
                out["offloaded_bytes"] = len(r.content) - int(head_len)
                out["compression"] = options.compression
                self.metrics.inc("offloads_total", help="requests offloaded to the cloud",
                                 expert=pair.name)
                self.metrics.inc("offloaded_bytes_total", out["offloaded_bytes"],
                                 help="tensor bytes sent to the cloud")
                t = time.perf_counter()
                try:
                    cloud = self._post(cloud_ep, f"predictions/cloud_{pair.name}", r.content,
                                       {wire.HEADER_LENGTH: head_len, "Content-Type": wire.CONTENT_TYPE},
                                       deadline, "cloud")
                    timings["cloud_ms"] = _ms(t)
                    final = cloud["predictions"][0]
                    d = decide(np.array([[*conf, final["confidence"]]]), np.array([[*pred, final["class"]]]),
                               options.threshold)
                    k = int(d.exit_index[0])
                    out.update(exit=k, exit_name=_exit_name(pair, k), **{"class": int(d.prediction[0])},
                               class_name=names[int(d.prediction[0])],
                               confidence=float(d.confidence[0]))
                except RouterError as exc:
                    timings["cloud_ms"] = _ms(t)
                    self._answer_from(out, conf, pred, names, pair)
                    out.update(degraded=True, degraded_reason=str(exc))
                    self.metrics.inc("degraded_total", help="best-edge answers because the cloud failed",
                                     reason=_reason_kind(exc))
        timings["total_ms"] = _ms(started)
        out["timings_ms"] = {k: round(v, 3) for k, v in timings.items()}
        self.metrics.inc("exits_total", help="answers by exit and expert", expert=pair.name,
                         exit=str(out["exit"]))
        return out

    def _cloud_only(self, body: bytes, options: Options, started: float, deadline: float) -> dict:
        """The baseline without the edge: the image goes to the cloud's full_<expert> archive."""
        expert = options.expert or "conventional"
        answer = self._post(self.discovery.cloud, f"predictions/full_{expert}", body, {}, deadline,
                            f"cloud: full_{expert} (python -m export.archive --full)", missing_status=404)
        out = {"expert": expert, "distortion": None, "distortion_probabilities": None,
               "threshold": None, "offloaded": True, "offloaded_bytes": len(body),
               "compression": "image", "degraded": False,
               **{k: answer[k] for k in ("exit", "exit_name", "class", "class_name", "confidence")},
               "timings_ms": {"cloud_ms": round(_ms(started), 3), "total_ms": round(_ms(started), 3)}}
        self.metrics.inc("exits_total", help="answers by exit and expert", expert=f"full_{expert}",
                         exit="3")
        return out

    @staticmethod
    def _answer_from(out: dict, conf: list, pred: list, names, pair) -> None:
        k = int(np.argmax(conf))
        out.update(exit=k, exit_name=_exit_name(pair, k), **{"class": int(pred[k])},
                   class_name=names[int(pred[k])], confidence=float(conf[k]))

    def _raw_post(self, ep, path: str, body: bytes, headers: dict, deadline: float, step: str,
                  missing_status: int = 503):
        """POST to a TorchServe; `missing_status` answers a 404 (no such model): 503 for a model
        discovery listed (it went away), 404 for one the request named."""
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise RouterError(504, f"deadline passed before the {step} step")
        try:
            r = self._session().post(f"{ep.inference_url}/{path}", data=body,
                                     headers={**ep.auth("inference"), **headers},
                                     timeout=(min(self.config.connect_timeout_s, remaining), remaining))
        except requests.Timeout:
            raise RouterError(504, f"{step} did not answer within the deadline") from None
        except requests.ConnectionError:
            raise RouterError(502, f"{step} unreachable") from None
        if 400 <= r.status_code < 500:
            # the image or tensor was refused: pass the handler's one-line reason on
            raise RouterError(r.status_code if r.status_code != 404 else missing_status,
                              f"{step}: {_reason(r)}")
        if r.status_code >= 500 or r.status_code != 200:
            raise RouterError(502, f"{step} answered {r.status_code}: {_reason(r)}")
        return r

    def _post(self, ep, path, body, headers, deadline, step, missing_status: int = 503) -> dict:
        return _json(self._raw_post(ep, path, body, headers, deadline, step, missing_status), step)


def _json(r: requests.Response, step: str) -> dict:
    try:
        data = r.json()
    except ValueError:
        raise RouterError(502, f"{step} returned no JSON") from None
    if not isinstance(data, dict):
        raise RouterError(502, f"{step} returned unexpected JSON")
    return data


def _reason(r: requests.Response) -> str:
    try:
        data = r.json()
        msg = data.get("error") or data.get("message") or r.reason
    except ValueError:
        msg = r.reason or "no reason"
    return " ".join(str(msg).split())[:200]


def _reason_kind(exc: RouterError) -> str:
    return {504: "deadline", 502: "cloud_error"}.get(exc.status, "cloud_refused")


def _exit_name(pair, k: int) -> str:
    return ("branch0", "branch1", "branch2", "final")[k]


def _ms(t: float) -> float:
    return (time.perf_counter() - t) * 1000.0


def check_image(body: bytes, max_bytes: int) -> None:
    """Cheap checks before any server is bothered: size, JPEG/PNG signature, sane header."""
    if not body:
        raise RouterError(400, "empty body: POST a JPEG or PNG image")
    if len(body) > max_bytes:
        raise RouterError(413, f"image of {len(body)} bytes exceeds the limit of {max_bytes}")
    if image_format(body) is None:
        raise RouterError(415, "not a JPEG or PNG image")
    try:
        header_dimensions(body)
    except Exception as exc:  # noqa: BLE001 - any header problem is the client's
        raise RouterError(400, " ".join(str(exc).split())[:200]) from None


# -- HTTP ----------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    router: Router   # set on the subclass made by make_server
    server_version = "edge-router"
    timeout = 5.0    # an idle keep-alive connection is closed after this (also bounds a drain)

    def setup(self):
        super().setup()
        # Answers are small: without TCP_NODELAY, Nagle's algorithm and the client's delayed ACK
        # hold the last segment back for ~40 ms on every keep-alive request.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):  # access log at debug level, never headers (tokens)
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, payload: dict | str, content_type="application/json") -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.server.draining:
            self.send_header("Connection", "close")
            self.close_connection = True
        self._headers_buffer.append(b"\r\n" + data)   # headers and body in one write
        self.flush_headers()

    def _error(self, status: int, message: str) -> None:
        self.router.metrics.inc("requests_total", help="router requests by status", status=str(status))
        self._send(status, {"error": " ".join(message.split())[:300], "status": status})

    def do_GET(self):
        path = urlparse(self.path).path
        if path == "/healthz":
            cat = self.router.discovery.catalogue
            ok = cat.classifier is not None and bool(cat.experts)
            self._send(200 if ok else 503, {"status": "ok" if ok else "degraded",
                                            "experts": sorted(cat.experts)})
        elif path == "/metrics":
            self._send(200, self.router.metrics.render(), "text/plain; version=0.0.4")
        elif path == "/v1/experts":
            self._send(200, self.router.discovery.catalogue.describe())
        else:
            self._error(404, f"no such endpoint {path[:60]}")

    def do_POST(self):
        started = time.perf_counter()
        url = urlparse(self.path)
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length is None:
            self.close_connection = True
            return self._error(411, "Content-Length required")
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            return self._error(400, "bad Content-Length")
        if n > self.router.config.max_body_bytes:
            self.close_connection = True   # do not read a body we refuse
            return self._error(413, f"body of {n} bytes exceeds the limit of "
                                    f"{self.router.config.max_body_bytes}")
        body = self.rfile.read(n)
        if url.path != "/v1/classify":
            return self._error(404, f"no such endpoint {url.path[:60]}")
        try:
            options = parse_options(url.query, self.router.config)
            answer = self.router.classify(body, options)
        except RouterError as exc:
            return self._error(exc.status, str(exc))
        except Exception as exc:  # noqa: BLE001 - the router keeps serving
            log.exception("request failed")
            return self._error(500, f"internal error: {type(exc).__name__}")
        self.router.metrics.inc("requests_total", help="router requests by status", status="200")
        self.router.metrics.observe("request_seconds", time.perf_counter() - started,
                                    help="router latency", offloaded=str(answer["offloaded"]).lower())
        self._send(200, answer)


class RouterServer(ThreadingHTTPServer):
    """Threaded server that drains on shutdown: `drain()` stops accepting, lets every request in
    progress finish (its answer says `Connection: close`), and `server_close()` then waits for the
    handler threads, so a restart loses no request that reached the router."""

    daemon_threads = False
    block_on_close = True
    request_queue_size = 128
    draining = False

    def drain(self) -> None:
        self.draining = True
        self.shutdown()          # returns once serve_forever has stopped accepting


def wait_until_healthy(url: str, *, proc=None, timeout: float = 60.0) -> None:
    """Poll a router's /healthz until it answers 200; fails early if `proc` (its process) exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("the router exited during start-up")
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the router at {url} did not become healthy in {timeout:.0f} s")


def make_server(router: Router, host: str = "127.0.0.1", port: int = 8000) -> RouterServer:
    handler = type("RouterHandler", (_Handler,), {"router": router})
    return RouterServer((host, port), handler)

