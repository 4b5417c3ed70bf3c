"""Which experts can the router use right now: discovered through the TorchServe APIs.

Every `refresh_s` the router lists the models registered on the edge and on every cloud endpoint,
and pairs `edge_<x>` with the endpoints that serve `cloud_<x>` (names by `core.experts`; a TorchServe
archive's manifest must say the role and expert its name says). A TorchServe endpoint is listed
through its management API and each new or re-registered archive asked for its manifest (an
inference request with `X-Describe: manifest`, answered by our handlers); the pair must agree on
split contract, training run and classes (`core.manifest.check_pair`). An Open Inference Protocol
endpoint (KServe's model server, Triton: kind `oip`) is listed with `GET /v2/models` (KServe) or
`POST /v2/repository/index` (Triton), and each model's metadata must name the split tensor with
the edge's per-sample shape and have the outputs `class` and `confidence`; its run id is checked on
every answer that reports one (`edge_router.cloud`). A listing that succeeds is also the health
check that brings an endpoint taken out after failures back. Experts appear without
a router restart when they are registered and disappear when they are unregistered. Pairs that
do not match are listed with the reason and never used. An instance whose management API stops
answering keeps its last known experts (reported under `errors`), so a cloud outage leaves the
edge answering, degraded, instead of refusing everything; an edge expert whose cloud has never
been listed (unreachable, or its TLS certificate refused since start) serves from the edge alone,
its offloads degraded with the reason, until a cloud lists it.

A cloud endpoint with a CA bundle (`Endpoint.tls`, `edge_router.tls`) is reached over verified
HTTPS by discovery as by offloads, and never over plain HTTP: its listing fails with the reason.
"""

from __future__ import annotations

import logging
import ssl as ssl_module
import threading
import time
from dataclasses import dataclass, field

import requests

from core import experts
from core.manifest import Manifest, ManifestError, check_pair
from edge_router.tls import ClientTls, plain_http_refused
from edge_router.tls import reason as tls_reason
from edge_router.tokens import KeyFile
from handlers.service import DESCRIBE_HEADER

log = logging.getLogger(__name__)


class PlainHttpRefused(Exception):
    """An endpoint that must be reached over TLS has a plain-HTTP URL: nothing is sent to it."""


@dataclass
class Endpoint:
    """One TorchServe instance as the router sees it (tokens never logged or returned)."""

    name: str
    inference_url: str
    management_url: str = ""
    keys: KeyFile | None = field(default=None, repr=False)  # TorchServe's tokens (None: no auth)
    kind: str = "torchserve"  # or "oip": an Open Inference Protocol server (KServe, Triton)
    tls: ClientTls | None = field(default=None, repr=False)  # set: verified HTTPS required

    def auth(self, kind: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys.token(kind)}"} if self.keys else {}

    def refusal(self) -> str | None:
        """Why nothing may be sent to this endpoint (TLS required, a URL is plain HTTP), or None."""
        for url in (self.inference_url, self.management_url):
            if url and (why := plain_http_refused(url, self.tls)):
                return f"{self.name}: {why}"
        return None

    def ssl(self) -> ssl_module.SSLContext | bool:
        """aiohttp's `ssl=`: this endpoint's verifying context, or True (the system's trust)."""
        return self.tls.context() if self.tls else True


@dataclass(frozen=True)
class ExpertPair:
    name: str
    distortion: str | None
    edge: Manifest
    clouds: tuple[str, ...]  # the cloud endpoints that serve cloud_<name>, by name


@dataclass
class Catalogue:
    """A consistent snapshot: replaced as a whole on refresh, so readers never see half of one."""

    classifier: Manifest | None = None
    experts: dict[str, ExpertPair] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # expert -> reason
    errors: dict[str, str] = field(default_factory=dict)  # instance -> last discovery error
    listed_at: dict[str, float] = field(default_factory=dict)  # endpoint -> last good listing
    refreshed_at: float = 0.0

    def expert_for(self, distortion: str) -> ExpertPair | None:
        """The expert of a distortion: the one named after it, else any declaring it."""
        if distortion in self.experts:
            return self.experts[distortion]
        for pair in self.experts.values():
            if pair.distortion == distortion:
                return pair
        return None

    def route(self, distortion: str) -> tuple[ExpertPair | None, list[str]]:
        """(the expert that answers `distortion`, the types passed over on the way): its own
        expert, else the classifier manifest's fallback of it, and so on along that table (data
        written at export, `Manifest.fallbacks`); (None, tried) when the chain runs out."""
        fallbacks = self.classifier.fallbacks if self.classifier is not None else {}
        tried: list[str] = []
        while distortion not in tried:
            pair = self.expert_for(distortion)
            if pair is not None:
                return pair, tried
            tried.append(distortion)
            distortion = fallbacks.get(distortion, distortion)
        return None, tried

    def describe(self) -> dict:
        return {
            "classifier": self.classifier.run_id if self.classifier else None,
            "experts": {
                n: {
                    "distortion": p.distortion,
                    "run_id": p.edge.run_id,
                    "clouds": list(p.clouds),
                    "split": {"name": p.edge.output.name, "shape": list(p.edge.output.shape)},
                }
                for n, p in sorted(self.experts.items())
            },
            "refused": dict(sorted(self.refused.items())),
            "errors": dict(self.errors),
            "refreshed_at": self.refreshed_at,
        }


class Discovery:
    """Keeps a `Catalogue` fresh in a background thread."""

    def __init__(
        self,
        edge: Endpoint,
        clouds: Endpoint | list[Endpoint],
        *,
        classifier: Manifest | None = None,
        refresh_s: float = 5.0,
        timeout_s: float = 5.0,
    ):
        self.edge = edge
        self.clouds = [clouds] if isinstance(clouds, Endpoint) else list(clouds)
        names = [c.name for c in self.clouds] + [edge.name]
        if not self.clouds or len(set(names)) != len(names):
            raise ValueError("at least one cloud endpoint, and distinct endpoint names")
        self.classifier = classifier  # the router's own (in process), fixed for its lifetime
        self.refresh_s, self.timeout_s = refresh_s, timeout_s
        self.catalogue = Catalogue()
        # (endpoint, model, what identifies its registration: TorchServe's archive URL, Triton's version)
        self._manifests: dict[tuple[str, str, str], Manifest] = {}
        self._sessions: dict[str, requests.Session] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last: dict[str, dict[str, str]] = {}  # endpoint -> models seen at the last good listing

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="discovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - discovery must outlive any single failure
                log.exception("discovery refresh failed")

    def _http(self, ep: Endpoint) -> requests.Session:
        """The endpoint's own session: its CA bundle and client certificate, if it has them."""
        if ep.name not in self._sessions:
            self._sessions[ep.name] = ep.tls.session() if ep.tls else requests.Session()
        return self._sessions[ep.name]

    def _models(self, ep: Endpoint) -> dict[str, str]:
        """Registered model -> what identifies its current version (TorchServe: the archive URL)."""
        if ep.kind == "oip":
            return self._oip_models(ep)
        out, token = {}, None
        for _ in range(100):
            params = {"limit": 100, **({"next_page_token": token} if token else {})}
            r = self._http(ep).get(
                f"{ep.management_url}/models",
                params=params,
                headers=ep.auth("management"),
                timeout=self.timeout_s,
            )
            r.raise_for_status()
            body = r.json()
            for m in body.get("models", []):
                out[m["modelName"]] = m.get("modelUrl", "")
            token = body.get("nextPageToken")
            if not token:
                break
        return out

    def _oip_models(self, ep: Endpoint) -> dict[str, str]:
        headers = ep.auth("inference")
        r = self._http(ep).get(f"{ep.inference_url}/v2/models", headers=headers, timeout=self.timeout_s)
        if r.status_code in (404, 405):  # Triton: the model repository extension instead
            r = self._http(ep).post(
                f"{ep.inference_url}/v2/repository/index",
                json={"ready": True},
                headers=headers,
                timeout=self.timeout_s,
            )
            r.raise_for_status()
            return {m["name"]: str(m.get("version", "")) for m in r.json() if isinstance(m, dict)}
        r.raise_for_status()
        return {str(m): "" for m in r.json().get("models", [])}

    def _oip_contract(self, ep: Endpoint, model: str, edge: Manifest) -> str | None:
        """Why an OIP model cannot finish `edge`'s split tensor, or None when it can."""
        r = self._http(ep).get(
            f"{ep.inference_url}/v2/models/{model}", headers=ep.auth("inference"), timeout=self.timeout_s
        )
        r.raise_for_status()
        meta = r.json()
        inputs = {i.get("name"): i for i in meta.get("inputs", []) if isinstance(i, dict)}
        split = inputs.get(edge.output.name)
        if split is None or list(split.get("shape", []))[1:] != list(edge.output.shape[1:]):
            return (
                f"{ep.name}: {model} takes {list(inputs)} , not {edge.output.name} "
                f"[N, {', '.join(map(str, edge.output.shape[1:]))}]"
            )
        outputs = {o.get("name") for o in meta.get("outputs", []) if isinstance(o, dict)}
        if not {"class", "confidence"} <= outputs:
            return f"{ep.name}: {model} lacks the outputs class and confidence"
        return None

    def _manifest(self, ep: Endpoint, model: str, url: str) -> Manifest:
        key = (ep.name, model, url)
        if key not in self._manifests:
            r = self._http(ep).post(
                f"{ep.inference_url}/predictions/{model}",
                data=b"",
                headers={**ep.auth("inference"), DESCRIBE_HEADER: "manifest"},
                timeout=self.timeout_s,
            )
            r.raise_for_status()
            self._manifests[key] = Manifest.from_dict(r.json())
        return self._manifests[key]

    def _list(self, ep: Endpoint, cat: Catalogue) -> dict[str, str]:
        try:
            if why := ep.refusal():
                raise PlainHttpRefused(why)
            models = self._models(ep)
            self._last[ep.name] = models
            cat.listed_at[ep.name] = time.time()
        except (requests.RequestException, ValueError, TypeError, AttributeError, PlainHttpRefused) as exc:
            # An instance that does not answer keeps its last known experts: the edge must go on
            # answering (degraded) through a cloud outage, not lose every expert.
            if isinstance(exc, PlainHttpRefused):
                cat.errors[ep.name] = str(exc)
            elif isinstance(exc, requests.exceptions.SSLError):
                cat.errors[ep.name] = f"{ep.name}: listing: {tls_reason(exc)}"
            else:
                cat.errors[ep.name] = f"listing: {type(exc).__name__}"
            models = {
                m: u
                for m, u in self._last.get(ep.name, {}).items()
                if ep.kind == "oip" or (ep.name, m, u) in self._manifests
            }
        # forget manifests of unregistered models: a re-registered archive is asked again
        self._manifests = {k: v for k, v in self._manifests.items() if k[0] != ep.name or k[1] in models}
        return models

    def refresh(self) -> Catalogue:
        with self._lock:
            for ep in (self.edge, *self.clouds):
                if ep.keys is not None:
                    if ep.refusal() is None:
                        ep.keys.renew_due(self._http(ep), timeout=self.timeout_s)
            cat = Catalogue(classifier=self.classifier, refreshed_at=time.time())
            edge: dict[str, Manifest] = {}
            for model, url in self._list(self.edge, cat).items():
                parsed = experts.parse_archive_name(model)
                if parsed is None or parsed[0] != "edge":
                    continue
                try:
                    manifest = self._manifest(self.edge, model, url)
                    experts.check_archive(model, manifest)
                    edge[parsed[1]] = manifest
                except ManifestError as exc:
                    cat.refused[model] = str(exc)
                except (requests.RequestException, ValueError) as exc:
                    cat.refused[model] = f"no manifest: {type(exc).__name__}"
            served: dict[str, list[str]] = {}  # expert -> cloud endpoints that can finish it
            for ep in self.clouds:
                for model, url in self._list(ep, cat).items():
                    parsed = experts.parse_archive_name(model)
                    if parsed is None or parsed[0] != "cloud":
                        continue
                    name = parsed[1]
                    if name not in edge:
                        cat.refused.setdefault(name, "no edge_<expert> registered on the edge")
                        continue
                    try:
                        if ep.kind == "oip":
                            if (ep.name, model, url) not in self._manifests:
                                reason = self._oip_contract(ep, model, edge[name])
                                if reason:
                                    cat.refused[name] = reason
                                    continue
                                self._manifests[(ep.name, model, url)] = edge[name]
                        else:
                            cloud = self._manifest(ep, model, url)
                            experts.check_archive(model, cloud)
                            check_pair(edge[name], cloud)
                    except (
                        requests.RequestException,
                        ValueError,
                        TypeError,
                        AttributeError,
                        ManifestError,
                    ) as exc:
                        why = exc if isinstance(exc, ManifestError) else type(exc).__name__
                        cat.refused[name] = f"{ep.name}: {why}"
                        continue
                    served.setdefault(name, []).append(ep.name)
            unlisted = [ep.name for ep in self.clouds if ep.name in cat.errors and ep.name not in self._last]
            for name, edge_m in edge.items():
                if name in served:
                    cat.refused.pop(name, None)
                    cat.experts[name] = ExpertPair(name, edge_m.distortion, edge_m, tuple(served[name]))
                elif unlisted and len(unlisted) == len(self.clouds):
                    # no cloud was ever listed: the edge answers alone (offloads degraded, with why)
                    cat.refused.pop(name, None)
                    cat.experts[name] = ExpertPair(name, edge_m.distortion, edge_m, ())
                else:
                    cat.refused.setdefault(name, "no cloud_<expert> registered on the cloud")
            previous = set(self.catalogue.experts)
            if set(cat.experts) != previous:
                log.info("experts now: %s", ", ".join(sorted(cat.experts)) or "none")
            self.catalogue = cat
            return cat
