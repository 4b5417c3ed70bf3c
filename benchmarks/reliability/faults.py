"""The faults part (own stack only): labelled load with a deadline while the cloud is stopped or
restarted, an edge worker killed, the router restarted, and (over an emulated link) the cloud slowed
past the deadline and a lossy link; on a cloud of two KServe replicas, one replica killed and
restarted under load, its port refusing, and it frozen past the deadline; how every request ended
(`fate_table`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from benchmarks.lib.live import LiveSystem
from benchmarks.lib.loadgen import LOST, LoadClient, Record
from benchmarks.reliability.system import HUNG_S, client_options, sampling_router, test_images
from core.imaging import encode_image

LOOPBACK_SCENARIOS = ("cloud_stopped", "cloud_restarted_mid_run", "edge_worker_killed", "router_restarted")
LINK_SCENARIOS = ("cloud_slowed_past_deadline", "lossy_link_10pct")
KSERVE_SCENARIOS = (
    "kserve_replica_killed_restarted",
    "kserve_replica_refusing",
    "kserve_replica_slowed_past_deadline",
)


def fault_load(
    url: str,
    bodies: list[tuple[bytes, int]],
    deadline_ms: float,
    *,
    clients: int = 2,
    threshold: float = 0.8,
    device: dict | None = None,
) -> LoadClient:
    """Background clients sending labelled images with a deadline; every request's fate is recorded.

    A request without an HTTP answer within its deadline plus 10 s is `lost`, as is one whose
    connection dropped after it went out; a refused connection is a clear error."""
    return LoadClient(
        url,
        bodies,
        clients=clients,
        params={"threshold": threshold, "deadline_ms": deadline_ms},
        timeout_s=deadline_ms / 1000 + HUNG_S,
        headers=(device or {}).get("headers"),
        verify=(device or {}).get("verify", True),
        cert=(device or {}).get("cert"),
    )


def fate_table(name: str, records: list[Record], deadline_ms: float) -> dict:
    """How every request of a scenario ended: correct, wrong, degraded, clear error or lost."""
    ok = [r for r in records if r.status == 200]

    def degraded(r: Record) -> bool:
        return bool((r.answer or {}).get("degraded"))

    def correct(r: Record) -> bool:
        return (r.answer or {}).get("class") == r.label

    return {
        "scenario": name,
        "sent": len(records),
        "correct": sum(1 for r in ok if correct(r) and not degraded(r)),
        "wrong": sum(1 for r in ok if not correct(r) and not degraded(r)),
        "degraded": sum(1 for r in ok if degraded(r)),
        "errors": sum(1 for r in records if r.status not in (200, LOST)),
        "lost": sum(1 for r in records if r.status == LOST),
        "error_statuses": sorted({str(r.status) for r in records if r.status not in (200, LOST)}),
        "longest_s": round(max((r.seconds for r in records), default=0.0), 3),
        "deadline_s": deadline_ms / 1000,
    }


def labelled_bodies(n: int, seed: int) -> list[tuple[bytes, int]]:
    from training.datasets import load_source

    source = load_source("fashion-mnist", "test", limit=n)
    return [(encode_image(im, "png"), source.label(i)) for i, im in enumerate(test_images(n, seed=seed))]


def run_scenario(
    system, args, bodies, name: str, action, *, threshold: float = 0.8, seconds: float = 12.0
) -> dict:
    """Load for 2 s, `action()`, load for `seconds` more; the scenario's fate table."""
    with (
        sampling_router(system) as sampler,
        fault_load(
            system.url, bodies, args.deadline_ms, threshold=threshold, device=client_options(system)
        ) as load,
    ):
        time.sleep(2)
        action()
        time.sleep(seconds)
    row = {**fate_table(name, load.records, args.deadline_ms), **sampler.summary()}
    print(json.dumps(row), flush=True)
    return row


def run_faults(system: LiveSystem, args) -> list[dict]:
    bodies = labelled_bodies(40, seed=9)
    out = [
        run_scenario(system, args, bodies, "cloud_stopped", lambda: system.stop_ts("cloud"), threshold=0.95)
    ]
    system.start_ts("cloud")
    time.sleep(3)

    def restart_cloud():
        system.stop_ts("cloud")
        system.start_ts("cloud")

    out.append(run_scenario(system, args, bodies, "cloud_restarted_mid_run", restart_cloud, threshold=0.95))

    def kill_edge_worker():
        workers = sorted(system.workers("edge"))
        if workers:
            psutil.Process(workers[-1]).kill()

    out.append(run_scenario(system, args, bodies, "edge_worker_killed", kill_edge_worker))

    def restart_router():
        system.stop_router()
        time.sleep(1)
        system.start_router()

    out.append(run_scenario(system, args, bodies, "router_restarted", restart_router))
    return out


def run_kserve_faults(system: LiveSystem, args) -> list[dict]:
    """A cloud of two KServe replicas behind the router; replica 1 is the one that fails. Threshold
    0.95: most requests offload, so most requests meet the failing replica or its twin."""
    bodies = labelled_bodies(40, seed=9)
    out = []

    def kill_then_restart():
        system.kill_cloud_replica(1)
        time.sleep(4)
        system.start_kserve(1)  # returns once it says ready

    out.append(run_scenario(system, args, bodies, KSERVE_SCENARIOS[0], kill_then_restart, threshold=0.95))
    system.kill_cloud_replica(1)  # down before the load starts: its port refuses throughout
    out.append(run_scenario(system, args, bodies, KSERVE_SCENARIOS[1], lambda: None, threshold=0.95))
    system.start_kserve(1)
    time.sleep(2)
    replica = system.kserve[1]

    def freeze_past_deadline():
        os.kill(replica.pid, signal.SIGSTOP)  # accepts connections (the kernel does), answers nothing
        time.sleep(2 + 3 * args.deadline_ms / 1000)
        os.kill(replica.pid, signal.SIGCONT)

    out.append(run_scenario(system, args, bodies, KSERVE_SCENARIOS[2], freeze_past_deadline, threshold=0.95))
    return out


def run_link_faults(store: Path, run_dir: Path, args) -> list[dict]:
    """The cloud slowed past the deadline, and a lossy link: over the emulated WAN
    (`benchmarks.latency.emulated_system`), the client in the device namespace."""
    from benchmarks.latency import emulated_system
    from benchmarks.lib import netem

    rows = []
    for name, profile in (
        ("cloud_slowed_past_deadline", netem.Profile("slow", 60.0, 3000.0)),
        ("lossy_link_10pct", netem.Profile("lossy", 60.0, 60.0, loss=0.10)),
    ):
        with (
            emulated_system(
                profile, model_store=str(store), run_dir=run_dir / "link", max_minutes=10
            ) as system,
            sampling_router(system) as sampler,
        ):
            plan = {"deadline_ms": args.deadline_ms, "seconds": 20, "threshold": 0.95}
            result = subprocess.run(
                system.link.exec_args(
                    "dev",
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.reliability",
                        "--link-client",
                        "--client-router",
                        system.url,
                        "--plan",
                        json.dumps(plan),
                    ],
                ),
                capture_output=True,
                text=True,
                env=system.env,
                timeout=300,
            )
            if result.returncode != 0:
                raise RuntimeError(f"{name}: client failed: {result.stderr[-400:]}")
        row = {**json.loads(result.stdout.strip().splitlines()[-1]), **sampler.summary()}
        row["scenario"] = name
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def link_client(args) -> int:
    plan = json.loads(args.plan)
    bodies = labelled_bodies(40, seed=9)
    with fault_load(args.client_router, bodies, plan["deadline_ms"], threshold=plan["threshold"]) as load:
        time.sleep(plan["seconds"])
    print(json.dumps(fate_table("link", load.records, plan["deadline_ms"])))
    return 0
