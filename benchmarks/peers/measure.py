"""How `benchmarks.peers` measures every contender the same way: the client and the servers pinned
to their CPUs, the test images, single-client p50/p99, throughput and p99 per concurrency level
(`benchmarks.lib.loadgen`), and the agreement of a server's answers with the in-process ones."""

from __future__ import annotations

import os
import platform
import time

import psutil
import requests

from benchmarks.lib.loadgen import LoadClient, percentiles
from core.cli import command_line
from core.errors import UserInputError
from core.imaging import encode_image

PATHS = {"edge_exit": 0.01, "offload": 1.0}
SERVER_CPU, CLIENT_CPU = 0, 1


def pin_client() -> dict:
    """Pin this process (the client) to CLIENT_CPU, the servers get SERVER_CPU; what the result
    records of it."""
    if psutil.cpu_count() < 2:
        raise UserInputError("the servers and the client are pinned to different CPUs: needs 2 cores")
    pin(CLIENT_CPU)
    return {
        "command": command_line(),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores",
        "pinning": {"servers": SERVER_CPU, "client": CLIENT_CPU},
    }


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and psutil.cpu_count() > 1:
        os.sched_setaffinity(0, {cpu})


def image_bodies(size: int, n: int, data_root: str | None) -> list[bytes]:
    from training.datasets import DistortionPolicy, distorted_image, load_source

    source = load_source("fashion-mnist", "test", limit=n, data_root=data_root)
    policy = DistortionPolicy(fixed=("pristine", 0), seed=0)
    return [encode_image(distorted_image(source, i, size, policy)[0], "png") for i in range(len(source))]


def single_client(url: str, bodies: list[bytes], params: dict, args, headers: dict | None = None) -> dict:
    """Sequential requests on one keep-alive connection: p50/p99 after `--warmup`."""
    s = requests.Session()
    s.headers.update(headers or {})
    ms = []
    for i in range(args.warmup + args.requests):
        t = time.perf_counter()
        r = s.post(url, data=bodies[i % len(bodies)], params=params, timeout=60)
        dt = (time.perf_counter() - t) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:200]}")
        if i >= args.warmup:
            ms.append(dt)
    return {**percentiles(ms), "n": len(ms)}


def levels(
    base: str, path: str, bodies: list[bytes], params: dict, args, headers: dict | None = None
) -> list[dict]:
    rows = []
    for c in args.levels:
        load = LoadClient(
            base,
            bodies,
            clients=c,
            params=params,
            path=path,
            headers=headers,
            keep_answers=False,
            timeout_s=30,
        )
        rows.append(load.run(seconds=args.seconds, max_requests=args.max_requests))
    return rows


def measure(
    name: str, base: str, path: str, bodies: list[bytes], args, *, paths=PATHS, headers: dict | None = None
) -> dict:
    out = {}
    for p, threshold in paths.items():
        params = {"threshold": threshold} if threshold is not None else {}
        if args.warmup_seconds > 0:
            LoadClient(
                base,
                bodies,
                clients=4,
                params=params,
                path=path,
                headers=headers,
                keep_answers=False,
                timeout_s=30,
            ).run(seconds=args.warmup_seconds, max_requests=args.max_requests)
        single = single_client(base + path, bodies, params, args, headers)
        rows = levels(base, path, bodies, params, args, headers)
        out[p] = {"single": single, "levels": rows}
        peak = max(r["throughput_rps"] for r in rows)
        print(
            f"  {name:17s} {p:9s} p50 {single['p50_ms']:7.2f} ms p99 {single['p99_ms']:7.2f} ms | "
            f"peak {peak:6.1f} req/s | "
            + " ".join(f"c{r['concurrency']}:{r['throughput_rps']:.0f}" for r in rows),
            flush=True,
        )
    return out


def agreement(url: str, bodies: list[bytes], reference: dict, headers=None) -> dict:
    """Share of (expert, exit, class) equal to the in-process answers, per path."""
    s = requests.Session()
    out = {}
    for p, threshold in PATHS.items():
        same = 0
        for body, ref in zip(bodies, reference[p], strict=True):
            got = s.post(url, data=body, params={"threshold": threshold}, timeout=60).json()
            same += (got["expert"], got["exit"], got["class"]) == (ref["expert"], ref["exit"], ref["class"])
        out[p] = {"same": same, "of": len(bodies)}
    return out
