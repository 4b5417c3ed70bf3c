"""Which experts can the router use right now: discovered through the TorchServe APIs.

Every `refresh_s` the router lists the models registered on the edge and the cloud instance
(management API), asks each new or re-registered archive for its manifest (an inference request
with `X-Describe: manifest`, answered by our handlers), and pairs `edge_<x>` with `cloud_<x>` when
their split contract and training run agree (`core.manifest.check_pair`). Experts appear without
a router restart when they are registered and disappear when they are unregistered. Pairs that
do not match are listed with the reason and never used. An instance whose management API stops
answering keeps its last known experts (reported under `errors`), so a cloud outage leaves the
edge answering, degraded, instead of refusing everything.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import requests

from core.manifest import Manifest, ManifestError, check_pair
from handlers.service import DESCRIBE_HEADER

log = logging.getLogger(__name__)
CLASSIFIER = "distortion_classifier"


@dataclass
class Endpoint:
    """One TorchServe instance as the router sees it (tokens never logged or returned)."""

    name: str
    inference_url: str
    management_url: str
    inference_token: str = field(default="", repr=False)
    management_token: str = field(default="", repr=False)

    def auth(self, kind: str) -> dict[str, str]:
        token = self.inference_token if kind == "inference" else self.management_token
        return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass(frozen=True)
class ExpertPair:
    name: str
    distortion: str | None
    edge: Manifest
    cloud: Manifest


@dataclass
class Catalogue:
    """A consistent snapshot: replaced as a whole on refresh, so readers never see half of one."""

    classifier: Manifest | None = None
    experts: dict[str, ExpertPair] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)    # expert -> reason
    errors: dict[str, str] = field(default_factory=dict)     # instance -> last discovery error
    refreshed_at: float = 0.0

    def expert_for(self, distortion: str) -> ExpertPair | None:
        """The expert of a distortion: the one named after it, else any declaring it."""
        if distortion in self.experts:
            return self.experts[distortion]
        for pair in self.experts.values():
            if pair.distortion == distortion:
                return pair
        return None

    def describe(self) -> dict:
        return {
            "classifier": self.classifier.run_id if self.classifier else None,
            "experts": {n: {"distortion": p.distortion, "run_id": p.edge.run_id,
                            "split": {"name": p.edge.output.name, "shape": list(p.edge.output.shape)}}
                        for n, p in sorted(self.experts.items())},
            "refused": dict(sorted(self.refused.items())),
            "errors": dict(self.errors),
            "refreshed_at": self.refreshed_at,
        }


class Discovery:
    """Keeps a `Catalogue` fresh in a background thread."""

    def __init__(self, edge: Endpoint, cloud: Endpoint, *, classifier: Manifest | None = None,
                 refresh_s: float = 5.0, timeout_s: float = 5.0):
        self.edge, self.cloud = edge, cloud
        self.classifier = classifier   # the router's own (in process), fixed for its lifetime
        self.refresh_s, self.timeout_s = refresh_s, timeout_s
        self.catalogue = Catalogue()
        self._manifests: dict[tuple[str, str, str], Manifest] = {}   # (instance, model, version)
        self._session = requests.Session()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last: dict[str, dict[str, str]] = {}   # role -> models seen at the last good listing

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

    def _models(self, ep: Endpoint) -> dict[str, str]:
        """Registered model -> default version, through the management API (paginated)."""
        out, token = {}, None
        for _ in range(100):
            params = {"limit": 100, **({"next_page_token": token} if token else {})}
            r = self._session.get(f"{ep.management_url}/models", params=params,
                                  headers=ep.auth("management"), timeout=self.timeout_s)
            r.raise_for_status()
            body = r.json()
            for m in body.get("models", []):
                out[m["modelName"]] = m.get("modelUrl", "")
            token = body.get("nextPageToken")
            if not token:
                break
        return out

    def _manifest(self, ep: Endpoint, model: str, url: str) -> Manifest:
        key = (ep.name, model, url)
        if key not in self._manifests:
            r = self._session.post(f"{ep.inference_url}/predictions/{model}", data=b"",
                                   headers={**ep.auth("inference"), DESCRIBE_HEADER: "manifest"},
                                   timeout=self.timeout_s)
            r.raise_for_status()
            self._manifests[key] = Manifest.from_dict(r.json())
        return self._manifests[key]

    def refresh(self) -> Catalogue:
        with self._lock:
            cat = Catalogue(classifier=self.classifier, refreshed_at=time.time())
            found: dict[str, dict[str, Manifest]] = {"edge": {}, "cloud": {}}
            for role, ep in (("edge", self.edge), ("cloud", self.cloud)):
                try:
                    models = self._models(ep)
                    self._last[role] = models
                except (requests.RequestException, ValueError) as exc:
                    # An instance that does not answer keeps its last known experts: the edge must
                    # go on answering (degraded) through a cloud outage, not lose every expert.
                    cat.errors[ep.name] = f"management API: {type(exc).__name__}"
                    models = {m: u for m, u in self._last.get(role, {}).items()
                              if (ep.name, m, u) in self._manifests}
                # forget manifests of unregistered models: a re-registered archive is asked again
                self._manifests = {k: v for k, v in self._manifests.items()
                                   if k[0] != ep.name or k[1] in models}
                for model, url in models.items():
                    if not model.startswith(f"{role}_"):
                        continue
                    try:
                        manifest = self._manifest(ep, model, url)
                    except (requests.RequestException, ValueError, ManifestError) as exc:
                        cat.refused[model] = f"no manifest: {type(exc).__name__}"
                        continue
                    found[role][model[len(role) + 1:]] = manifest
            for name, edge_m in found["edge"].items():
                cloud_m = found["cloud"].get(name)
                if cloud_m is None:
                    cat.refused[name] = "no cloud_<expert> registered on the cloud"
                    continue
                try:
                    check_pair(edge_m, cloud_m)
                except ManifestError as exc:
                    cat.refused[name] = str(exc)
                    continue
                cat.experts[name] = ExpertPair(name, edge_m.distortion, edge_m, cloud_m)
            for name in found["cloud"]:
                if name not in found["edge"]:
                    cat.refused.setdefault(name, "no edge_<expert> registered on the edge")
            previous = set(self.catalogue.experts)
            if set(cat.experts) != previous:
                log.info("experts now: %s", ", ".join(sorted(cat.experts)) or "none")
            self.catalogue = cat
            return cat
