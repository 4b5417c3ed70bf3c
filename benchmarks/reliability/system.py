"""The system under test, for every part: our own (`benchmarks.lib.live.LiveSystem`) or an existing
deployment (`ExistingSystem`), the cloud's URL and headers, the router sampler (RSS and threads
while a part runs) and the test images."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil

from benchmarks.lib.live import LiveSystem
from core import wire
from core.distortions import DISTORTION_CLASSES
from core.experts import CLASSIFIER

EDGE_MODELS = [f"edge_{name}" for name in DISTORTION_CLASSES]  # an expert per routed type
CLOUD_MODELS = [f"cloud_{name}" for name in DISTORTION_CLASSES]
ROUTER_MODELS = [CLASSIFIER]  # run by the router itself, from the same model store
HUNG_S = 10.0
NOT_SAMPLED_RSS = "not sampled: the existing deployment's processes are not this run's"
SAMPLE_EVERY_S = 0.5


def own_system(store: Path, run_dir: Path, args, **cloud) -> LiveSystem:
    """The live system on loopback test ports, its router with this run's deadline and limits;
    `cloud`: LiveSystem's cloud options (engine, replicas, KServe replicas beside TorchServe)."""
    return LiveSystem(
        store,
        run_dir,
        edge_models=EDGE_MODELS,
        cloud_models=CLOUD_MODELS,
        router_options=[
            "--deadline-ms",
            str(args.deadline_ms),
            "--max-in-flight",
            str(args.max_in_flight),
            "--max-body-bytes",
            str(args.max_body_bytes),
        ],
        security=getattr(args, "security", None) or "off",
        **cloud,
    )


class ExistingSystem:
    """A deployment that is already running: reached by URL, never started, stopped or signalled.

    The small part of `LiveSystem`'s interface this module uses: `url`, `workers`, `processes`,
    `auth`, `router` (None: no process of ours) and the cloud's inference URL (`cloud_url`)."""

    router = None

    def __init__(self, targets: dict, cloud_key_file: str | None):
        from edge_router.torchserve import read_keys

        self.url = targets["router"]
        self.cloud_url = targets.get("cloud")
        self._token = read_keys(Path(cloud_key_file))["inference"] if cloud_key_file else None

    def workers(self, role: str) -> None:
        return None  # its processes are not ours to watch

    def processes(self) -> dict[str, psutil.Process]:
        return {}

    def auth(self, role: str, kind: str = "inference") -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if role == "cloud" and self._token else {}


def cloud_url(system) -> str | None:
    """The cloud TorchServe's inference URL (None: an existing deployment given without --cloud)."""
    return system.cloud_url if isinstance(system, ExistingSystem) else system.insts["cloud"].inference_url


def client_options(system, role: str = "router") -> dict:
    """`requests` options for a call to `role` of a system with its security on: the router as a
    device (CA, key, certificate), the cloud tiers trusting the run's CA; {} otherwise."""
    secured = getattr(system, "secured", None)
    if secured is None or role == "edge":  # the edge TorchServe stays on loopback, plain
        return {}
    return secured.client_options() if role == "router" else {"verify": secured.ca}


def with_options(request: dict, options: dict) -> dict:
    """`requests` keyword arguments with `options` added (their headers merged, not replaced)."""
    out = {**request, **{k: v for k, v in options.items() if k != "headers"}}
    if options.get("headers"):
        out["headers"] = {**request.get("headers", {}), **options["headers"]}
    return out


def cloud_headers(auth: dict, n: int | str) -> dict:
    return {**auth, wire.HEADER_LENGTH: str(n)}


class RouterSampler(threading.Thread):
    """The router process's RSS and thread count every 0.5 s while a part runs (own stack only).

    The process is looked up at each sample, so a router restarted by a fault scenario is followed;
    against an existing deployment (no process of ours) nothing is sampled. Bounded by `max_s`."""

    def __init__(self, system, max_s: float = 4 * 3600):
        super().__init__(daemon=True, name="router-sampler")
        self.system, self.max_samples = system, int(max_s / SAMPLE_EVERY_S) + 1
        self.halt = threading.Event()
        self.rss_mb: list[float] = []
        self.threads: list[int] = []
        self._proc: psutil.Process | None = None

    def sample(self) -> None:
        popen = self.system.router
        if popen is None or popen.poll() is not None:
            return
        try:
            if self._proc is None or self._proc.pid != popen.pid:
                self._proc = psutil.Process(popen.pid)
            with self._proc.oneshot():
                self.rss_mb.append(self._proc.memory_info().rss / 2**20)
                self.threads.append(self._proc.num_threads())
        except psutil.Error:
            self._proc = None

    def run(self) -> None:
        if isinstance(self.system, ExistingSystem):
            return
        for _ in range(self.max_samples):
            self.sample()
            if self.halt.wait(SAMPLE_EVERY_S):
                break
        self.sample()

    def summary(self) -> dict:
        if isinstance(self.system, ExistingSystem):
            return {}
        return {
            "router_rss_mb_max": round(max(self.rss_mb), 1) if self.rss_mb else None,
            "router_threads_max": max(self.threads) if self.threads else None,
            "router_samples": len(self.rss_mb),
        }


@contextmanager
def sampling_router(system: LiveSystem) -> Iterator[RouterSampler]:
    sampler = RouterSampler(system)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.halt.set()
        sampler.join(5)


def test_images(n: int, seed: int = 0) -> list[np.ndarray]:
    from training.datasets import DistortionPolicy, distorted_image, load_source

    source = load_source("fashion-mnist", "test", limit=n)
    policy = DistortionPolicy(seed=seed)
    return [distorted_image(source, i, 64, policy)[0] for i in range(n)]
