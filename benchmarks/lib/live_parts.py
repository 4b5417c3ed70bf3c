"""The parts of `benchmarks.lib.live.LiveSystem`, one by one: the commands that start and stop a
TorchServe instance (`python -m edge_router.torchserve`), a KServe cloud replica (`python -m
cloud_kserve` from `.venv-kserve`) and the router (`python -m edge_router`); the probes that wait for
a KServe replica and the router; the ports of extra cloud replicas; and the processes of a TorchServe
instance (Java frontend, workers) with their RSS."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from edge_router.torchserve import Ports

ROOT = Path(__file__).resolve().parents[2]
KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"
# waits for a health URL from inside a namespace (a KServe replica's readiness from the cloud
# namespace, the router's health from the device namespace, the only places that reach them):
# argv url, seconds, and what to verify TLS by ("true": the system's trust, or a CA bundle)
READY_PROBE = (
    "import sys; from benchmarks.lib.live_parts import wait_until_ready; "
    "v = sys.argv[3] if len(sys.argv) > 3 else 'true'; "
    "wait_until_ready(sys.argv[1], timeout=float(sys.argv[2]), verify=True if v == 'true' else v)"
)


# -- ports, the router's health, processes -----------------------------------------------------------
def replica_ports(base: Ports, i: int) -> Ports:
    """Ports of the i-th extra cloud TorchServe replica (i >= 1), clear of the base instances'."""
    step = 10 * i + 10
    return Ports(
        *(p + step for p in (base.inference, base.management, base.metrics)),
        base.grpc_inference + step,
        base.grpc_management + step,
    )


def wait_until_ready(
    url: str, *, proc: subprocess.Popen | None = None, timeout: float = 60.0, verify: str | bool = True
) -> None:
    """Poll a health URL (a router's /healthz, KServe's /v2/health/ready) until it answers 200.

    Fails early if `proc`, the server's process, exits during start-up."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server behind {url} exited during start-up (code {proc.returncode})")
        try:
            if requests.get(url, timeout=2, verify=True if verify == "true" else verify).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 in {timeout:.0f} s")


def torchserve_frontend(inst) -> psutil.Process | None:
    """The Java frontend of a TorchServe instance (from the pid file in its TMPDIR)."""
    try:
        return psutil.Process(int((inst.workdir / "tmp" / ".model_server.pid").read_text()))
    except (OSError, ValueError, psutil.Error):
        return None


def torchserve_workers(front: psutil.Process) -> list[psutil.Process]:
    """The model workers under a TorchServe frontend, by pid. Only `model_service_worker`
    processes: the frontend also starts short-lived children (its system-metrics collector, once a
    minute), which a sample must not take for a worker (nor their end for a worker's death)."""
    out = []
    try:
        children = front.children(recursive=True)
    except psutil.Error:
        return out
    for child in children:
        try:
            if any("model_service_worker" in part for part in child.cmdline()):
                out.append(child)
        except psutil.Error:
            continue
    return sorted(out, key=lambda p: p.pid)


def torchserve_processes(inst, name: str) -> dict[str, psutil.Process]:
    """<name>_frontend_java and <name>_worker_<i> of one TorchServe instance."""
    front = torchserve_frontend(inst)
    if front is None:
        return {}
    out = {f"{name}_frontend_java": front}
    out.update({f"{name}_worker_{i}": c for i, c in enumerate(torchserve_workers(front))})
    return out


def rss_mb(processes: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, p in processes.items():
        try:
            out[name] = round(p.memory_info().rss / 2**20, 1)
        except psutil.Error:
            continue
    return out


# -- the commands ---------------------------------------------------------------------------------
def ports_args(ports: Ports) -> list[str]:
    """`--ports` and an instance's five ports, as `python -m edge_router.torchserve` takes them."""
    return [
        "--ports",
        *map(
            str,
            (
                ports.inference,
                ports.management,
                ports.metrics,
                ports.grpc_inference,
                ports.grpc_management,
            ),
        ),
    ]


def torchserve_start_argv(
    role: str, inst, store: Path, wait_s: float, models: list[str], worker_torch: str = "stub"
) -> list[str]:
    """Starts one TorchServe instance (`edge_router.torchserve.instance`) with `models` of `store`."""
    return [
        sys.executable,
        "-m",
        "edge_router.torchserve",
        "start",
        role,
        "--run-dir",
        str(inst.workdir.parent),
        "--host",
        inst.host,
        "--model-store",
        str(store),
        "--wait-s",
        str(wait_s),
        "--worker-torch",
        worker_torch,
        *ports_args(inst.ports),
        "--models",
        *models,
    ]


def torchserve_stop_argv(role: str, inst) -> list[str]:
    """Stops one TorchServe instance (`edge_router.torchserve.instance`)."""
    return [
        sys.executable,
        "-m",
        "edge_router.torchserve",
        "stop",
        role,
        "--run-dir",
        str(inst.workdir.parent),
        "--host",
        inst.host,
        *ports_args(inst.ports),
    ]


def kserve_argv(store: Path, host: str, port: str) -> list[str]:
    """One cloud replica on KServe's model server, serving the cloud segments of `store`."""
    return [
        str(KSERVE_PYTHON),
        "-m",
        "cloud_kserve",
        "--model-store",
        str(store),
        "--host",
        host,
        "--port",
        port,
    ]


def router_base_argv(host: str, port: int, run_dir: Path, store: Path, log_level: str) -> list[str]:
    """The router (`python -m edge_router`) on `host:port`; the instances' URLs and the cloud
    endpoints are added by `LiveSystem.router_argv`."""
    return [
        sys.executable,
        "-m",
        "edge_router",
        "--host",
        host,
        "--port",
        str(port),
        "--run-dir",
        str(run_dir),
        "--model-store",
        str(store),
        "--log-level",
        log_level,
        "--refresh-s",
        "1",
    ]
