"""The live system, started and stopped in one place: edge and cloud TorchServe and the router.

    with LiveSystem(model_store, run_dir) as system:          # loopback, test ports
        requests.post(f"{system.url}/v1/classify", data=png)
        system.pids(), system.rss_mb(), system.keys("cloud")

    python -m benchmarks.lib.live up --model-store model_store --run-dir run --port 8000   # the demo
    python -m benchmarks.lib.live down --run-dir run

The serving tests, the demo and every benchmark use this module (and `benchmarks.lib.loadgen` for
load), so the system they measure is started the same way everywhere: TorchServe through
`edge_router.torchserve` (token auth on, the repository's `config.properties`), the router as its
own process (`python -m edge_router`). Options:

- `cpus`: pin each part with `taskset` ({"edge": "0", "cloud": "1", "router": "0"});
- `link`: a `benchmarks.lib.netem.Link`: the cloud runs in the cloud namespace, the edge TorchServe and
  the router in the edge namespace (the router on the device-side address), and the router's health
  is polled from the device namespace, the only place that reaches it;
- `router_options`: extra `python -m edge_router` flags (deadline, limits, ...);
- `cloud_engine` ("torchserve" or "kserve": `python -m cloud_kserve` from `.venv-kserve`) and
  `cloud_replicas`: that many cloud processes, all given to the router with `--cloud`, which
  spreads offloads over them (`edge_router.cloud`); `kill_cloud_replica(i)` for fault tests;
- `kserve_replicas`: KServe replicas beside a TorchServe cloud, in the router's one pool (the whole
  system of the reliability soak: both cloud engines at once);
- `security` ("off", "tls" or "mtls"): a throwaway CA made at start, the cloud (TorchServe or
  KServe) and the router on verified HTTPS, device keys at the router, and under "mtls" device
  certificates too (`benchmarks.lib.live_security`); `client_options()` is what a device sends.

Everything started is stopped on exit, also on failure; `down` stops what `up` left running. The
command line of each part, its readiness probe and its processes are in `benchmarks.lib.live_parts`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from benchmarks.lib.live_parts import (
    KSERVE_PYTHON,
    READY_PROBE,
    ROOT,
    kserve_argv,
    replica_ports,
    router_base_argv,
    rss_mb,
    torchserve_frontend,
    torchserve_processes,
    torchserve_start_argv,
    torchserve_stop_argv,
    torchserve_workers,
    wait_until_ready,
)
from benchmarks.lib.live_security import MODES
from benchmarks.lib.live_security import make as make_secured
from core.cli import run_cli
from core.errors import UserInputError
from edge_router.torchserve import DEFAULT_PORTS, Ports, instance

ROLES = ("edge", "cloud")
# Test ports, away from the defaults a user's own instances (8080/8090, router 8000) listen on.
# EE_PORT_OFFSET (default 0) moves every one of them, so two harnesses can run side by side (a soak
# beside the test suite); it is recorded with the results that a harness run writes. The ports
# span 17370-18392 (gRPC 1,000 below HTTP), so an offset must be 2,000 or more to clear them.
PORT_OFFSET = int(os.environ.get("EE_PORT_OFFSET", "0"))
if 0 < abs(PORT_OFFSET) < 2000:
    raise UserInputError(f"EE_PORT_OFFSET={PORT_OFFSET} overlaps the unshifted test ports: use 0 or 2000+")
TEST_PORTS = {
    role: Ports(*(p + PORT_OFFSET for p in ports))
    for role, ports in {
        "edge": (18380, 18381, 18382, 17370, 17371),
        "cloud": (18390, 18391, 18392, 17390, 17391),
    }.items()
}
TEST_ROUTER_PORT = 18300 + PORT_OFFSET


class LiveSystem:
    def __init__(
        self,
        model_store: str | Path,
        run_dir: str | Path,
        *,
        edge_models: list[str] | None = None,
        cloud_models: list[str] | None = None,
        ports: dict[str, Ports] | None = None,
        router_port: int = TEST_ROUTER_PORT,
        router_options: list[str] | None = None,
        cpus: dict[str, str] | None = None,
        link=None,
        log_level: str = "WARNING",
        env: dict[str, str] | None = None,
        wait_s: float = 240,
        cloud_engine: str = "torchserve",
        cloud_replicas: int = 1,
        kserve_replicas: int = 0,
        worker_torch: str = "stub",
        security: str = "off",
    ):
        from benchmarks.lib import netem

        self.store = Path(model_store).resolve()
        self.run_dir = Path(run_dir).resolve()
        self.models = {"edge": edge_models or ["all"], "cloud": cloud_models or ["all"]}
        self.worker_torch = worker_torch  # what TorchServe's workers import as torch (edge_router.torchserve)
        self.link, self.cpus = link, dict(cpus or {})
        self.router_options, self.log_level, self.wait_s = list(router_options or []), log_level, wait_s
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        ports = ports or (TEST_PORTS if link is None else DEFAULT_PORTS)
        # where each part listens: loopback, or the namespaces' addresses
        self.hosts = {
            "edge": "127.0.0.1",
            "cloud": netem.ADDR["cloud"] if link else "127.0.0.1",
            "router": netem.ADDR["edge_dev"] if link else "127.0.0.1",
        }
        self.insts = {r: instance(r, run_dir=self.run_dir, ports=ports[r], host=self.hosts[r]) for r in ROLES}
        self.router_port = router_port
        if security not in MODES:
            raise ValueError(f"security is one of {', '.join(MODES)}")
        self.security, self.secured = security, None  # made at start (`live_security.make`)
        scheme = "http" if security == "off" else "https"
        self.url = f"{scheme}://{self.hosts['router']}:{router_port}"
        self.router: subprocess.Popen | None = None
        if cloud_engine not in ("torchserve", "kserve") or cloud_replicas < 1 or kserve_replicas < 0:
            raise ValueError("cloud_engine is torchserve or kserve, with at least one replica")
        if cloud_engine == "kserve" and kserve_replicas:
            raise ValueError("kserve_replicas go beside a TorchServe cloud; use cloud_replicas")
        n_kserve = cloud_replicas if cloud_engine == "kserve" else kserve_replicas
        if n_kserve and not KSERVE_PYTHON.is_file():
            raise UserInputError(f"{KSERVE_PYTHON} missing: make kserve")
        self.cloud_engine, self.cloud_replicas = cloud_engine, cloud_replicas
        # extra TorchServe cloud replicas live in run_dir/replica<i>/cloud on ports of their own
        self.ts_replicas = (
            [
                instance(
                    "cloud",
                    run_dir=self.run_dir / f"replica{i}",
                    ports=replica_ports(ports["cloud"], i),
                    host=self.hosts["cloud"],
                )
                for i in range(1, cloud_replicas)
            ]
            if cloud_engine == "torchserve"
            else []
        )
        kserve_base = ports["cloud"].inference + 5
        self.kserve_urls = [f"{scheme}://{self.hosts['cloud']}:{kserve_base + i}" for i in range(n_kserve)]
        self.kserve: list[subprocess.Popen | None] = []

    # -- parts ----------------------------------------------------------------------------------
    def _argv(self, part: str, argv: list[str]) -> list[str]:
        """`argv` pinned to the part's CPUs and run in its namespace, as configured."""
        if part in self.cpus:
            argv = ["taskset", "-c", self.cpus[part], *argv]
        if self.link is not None:
            argv = self.link.exec_args("cloud" if part == "cloud" else "edge", argv)
        return argv

    def start_ts(self, role: str, inst=None) -> None:
        inst = inst or self.insts[role]
        cmd = torchserve_start_argv(role, inst, self.store, self.wait_s, self.models[role], self.worker_torch)
        if self.secured is not None and role == "cloud":  # the hop that leaves the box
            cmd += self.secured.torchserve_flags()
        r = subprocess.run(
            self._argv(role, cmd), env=self.env, timeout=self.wait_s + 120, capture_output=True, text=True
        )
        if r.returncode != 0:
            raise RuntimeError(f"TorchServe {role} did not start: {(r.stderr or r.stdout).strip()[-500:]}")

    def stop_ts(self, role: str, inst=None) -> None:
        inst = inst or self.insts[role]
        cmd = torchserve_stop_argv(role, inst)
        subprocess.run(self._argv(role, cmd), env=self.env, timeout=120, capture_output=True, check=False)

    def start_kserve(self, i: int) -> None:
        """Cloud replica i on KServe's model server; returns once it says ready."""
        url = self.kserve_urls[i]
        port = url.rsplit(":", 1)[1]
        log = open(self.run_dir / f"kserve{i}.log", "ab")  # noqa: SIM115 - the child owns it
        tls_flags = self.secured.kserve_flags() if self.secured else []
        proc = subprocess.Popen(
            self._argv("cloud", [*kserve_argv(self.store, self.hosts["cloud"], port), *tls_flags]),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()
        while len(self.kserve) <= i:
            self.kserve.append(None)
        self.kserve[i] = proc
        argv = [sys.executable, "-c", READY_PROBE, f"{url}/v2/health/ready", str(self.wait_s), self._verify()]
        if self.link is not None:
            argv = self.link.exec_args("cloud", argv)
        ready = subprocess.run(argv, timeout=self.wait_s + 30, check=False).returncode == 0
        if not ready or proc.poll() is not None:
            raise RuntimeError(
                f"cloud_kserve replica {i} did not become ready (see {self.run_dir}/kserve{i}.log)"
            )

    def kill_cloud_replica(self, i: int) -> None:
        """SIGKILL cloud replica i (a KServe process, or TorchServe replica i's Java frontend)."""
        if self.cloud_engine == "kserve":
            proc = self.kserve[i]
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            return
        inst = self.insts["cloud"] if i == 0 else self.ts_replicas[i - 1]
        front = torchserve_frontend(inst)
        if front is not None:
            for p in [*front.children(recursive=True), front]:
                with contextlib.suppress(psutil.Error):
                    p.kill()

    def cloud_flags(self) -> list[str]:
        """`--cloud` flags for the router, or none for the one default cloud TorchServe."""
        specs = [f"oip={url}" for url in self.kserve_urls]
        if self.cloud_engine == "torchserve" and specs + self.ts_replicas:
            specs[:0] = [
                f"torchserve={i.inference_url},{i.management_url},{i.key_file}"
                for i in (self.insts["cloud"], *self.ts_replicas)
            ]
        return [f for spec in specs for f in ("--cloud", spec)]

    def router_argv(self) -> list[str]:
        argv = router_base_argv(
            self.hosts["router"], self.router_port, self.run_dir, self.store, self.log_level
        )
        for role, inst in self.insts.items():
            argv += [f"--{role}-url", inst.inference_url, f"--{role}-management-url", inst.management_url]
        security = self.secured.router_flags() if self.secured else []
        return [*argv, *self.cloud_flags(), *security, *self.router_options]

    def start_router(self, *, wait_s: float = 60) -> None:
        log = open(self.run_dir / "router.log", "ab")  # noqa: SIM115 - the child owns it
        self.router = subprocess.Popen(
            self._argv("router", self.router_argv()), env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        if self.link is None:
            wait_until_ready(f"{self.url}/healthz", proc=self.router, timeout=wait_s, verify=self._verify())
            return
        # the router's address is reached from the device namespace only
        r = subprocess.run(
            self.link.exec_args(
                "dev", [sys.executable, "-c", READY_PROBE, f"{self.url}/healthz", str(wait_s), self._verify()]
            ),
            env=self.env,
            timeout=wait_s + 30,
            check=False,
        )
        if r.returncode != 0:
            raise RuntimeError(f"the router in the edge namespace did not become healthy ({self.url})")

    def stop_router(self, *, timeout: float = 40) -> int | None:
        """SIGTERM (the router drains), then SIGKILL past `timeout`; returns the exit code."""
        proc, self.router = self.router, None
        if proc is None:
            return None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=10)

    # -- the whole ------------------------------------------------------------------------------
    def _verify(self) -> str:
        """What a health probe verifies the servers by: the run's CA, or "true" (plain HTTP)."""
        return self.secured.ca if self.secured else "true"

    def client_options(self) -> dict:
        """`requests` options of a device (CA bundle, key, certificate); {} with security off."""
        return self.secured.client_options() if self.secured else {}

    def start(self) -> LiveSystem:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.security != "off":
            self.secured = make_secured(
                self.run_dir / "security",
                cloud_host=self.hosts["cloud"],
                router_host=self.hosts["router"],
                mtls=self.security == "mtls",
            )
        try:
            for i in range(len(self.kserve_urls)):
                self.start_kserve(i)
            if self.cloud_engine == "torchserve":
                self.start_ts("cloud")
                for inst in self.ts_replicas:
                    self.start_ts("cloud", inst)
            self.start_ts("edge")
            self.start_router()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.stop_router()
        self.stop_ts("edge")
        if self.cloud_engine == "torchserve":
            for inst in (self.insts["cloud"], *self.ts_replicas):
                self.stop_ts("cloud", inst)
        for proc in self.kserve:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def __enter__(self) -> LiveSystem:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what a benchmark or test needs to know ------------------------------------------------------
    def keys(self, role: str) -> dict[str, str]:
        """The instance's tokens ('inference', 'management')."""
        return self.insts[role].keys()

    def auth(self, role: str, kind: str = "inference") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys(role)[kind]}"}

    def frontend(self, role: str) -> psutil.Process | None:
        return torchserve_frontend(self.insts[role])

    def workers(self, role: str) -> set[int]:
        front = self.frontend(role)
        return {p.pid for p in torchserve_workers(front)} if front else set()

    def processes(self) -> dict[str, psutil.Process]:
        """Every process of the system by role: router, <role>_frontend_java, <role>_worker_<i>."""
        out = {}
        if self.router is not None and self.router.poll() is None:
            out["router"] = psutil.Process(self.router.pid)
        for role in ROLES:
            out.update(torchserve_processes(self.insts[role], role))
        for i, inst in enumerate(self.ts_replicas, start=1):
            out.update(torchserve_processes(inst, f"cloud{i}"))
        for i, proc in enumerate(self.kserve):
            if proc is not None and proc.poll() is None:
                out[f"cloud_kserve_{i}"] = psutil.Process(proc.pid)
        return out

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes().items()}

    def rss_mb(self) -> dict[str, float]:
        return rss_mb(self.processes())

    def describe(self) -> dict:
        """Endpoints and PIDs (never tokens), as `up` prints them."""
        return {
            "router": self.url,
            "router_pid": self.router.pid if self.router else None,
            **{f"{r}_inference": i.inference_url for r, i in self.insts.items()},
            **{f"{r}_management": i.management_url for r, i in self.insts.items()},
            "key_files": {r: str(i.key_file) for r, i in self.insts.items()},
            "pids": self.pids(),
            "rss_mb": self.rss_mb(),
        }


# -- `up` / `down` for the demo and for people ---------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Start (up) or stop (down) edge + cloud TorchServe and the "
        "router on loopback; `up` returns once the router is healthy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("action", choices=("up", "down"))
    p.add_argument("--model-store", default="model_store")
    p.add_argument("--run-dir", default="run")
    p.add_argument("--port", type=int, default=8000, help="the router's port")
    p.add_argument(
        "--edge-models",
        nargs="+",
        default=["all"],
        help="archives registered on the edge (all: every edge_*)",
    )
    p.add_argument(
        "--cloud-models",
        nargs="+",
        default=["all"],
        help="archives registered on the cloud (all: every cloud_* and full_*)",
    )
    p.add_argument(
        "--security",
        choices=MODES,
        default="off",
        help="tls: a throwaway CA, the cloud and the router on HTTPS, device keys (run-dir/security); "
        "mtls: device certificates too",
    )
    p.add_argument(
        "--router-option",
        action="append",
        default=[],
        help="extra `python -m edge_router` flag, e.g. --router-option=--max-in-flight=16",
    )
    return p


def main(args: argparse.Namespace) -> int:
    system = LiveSystem(
        args.model_store,
        args.run_dir,
        ports=DEFAULT_PORTS,
        router_port=args.port,
        router_options=args.router_option,
        edge_models=args.edge_models,
        cloud_models=args.cloud_models,
        security=args.security,
    )
    state = Path(args.run_dir).resolve() / "router.pid"
    if args.action == "up":
        if not (Path(args.model_store) / "distortion_classifier.mar").is_file():
            raise UserInputError(f"{args.model_store} has no archives: run python -m export.archive")
        system.start()
        state.write_text(str(system.router.pid))
        print(json.dumps(system.describe(), indent=1))
        system.router = None  # left running: `down` stops it
        return 0
    if state.is_file():
        try:
            pid = int(state.read_text())
            os.kill(pid, signal.SIGTERM)
            psutil.Process(pid).wait(timeout=40)
        except (ValueError, ProcessLookupError, psutil.Error):
            pass
        state.unlink(missing_ok=True)
    for role in ROLES:
        system.stop_ts(role)
    print("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
