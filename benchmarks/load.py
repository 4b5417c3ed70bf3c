"""Concurrent clients against the live router over emulated links: throughput and tail latency.

    python -m benchmarks.load --profiles lan paris --out docs/results/load

For each profile the same live system as `benchmarks.latency` (edge TorchServe + router pinned to
CPU 0 in the edge namespace, cloud TorchServe on CPU 1 in the cloud namespace) serves a client in
the device namespace that runs 1, 2, 4, 8, 16 and 32 concurrent connections, each level for
`--seconds` (bounded also by `--max-requests`), sending pristine, blurred and noisy test images
through the expert system at p_tar 0.8. Reports throughput, p50/p95/p99, errors per level, the
first concurrency at which p99 exceeds twice the single-client p50, and the RSS of every process
(sampled every second during the run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from core.cli import run_cli, write_json
from core.errors import UserInputError

LEVELS = (1, 2, 4, 8, 16, 32)


def run_level(c: int, args: argparse.Namespace, bodies: list[bytes]) -> dict:
    """`c` keep-alive clients for `args.seconds` (at most `args.max_requests` requests in all)."""
    import numpy as np
    import requests

    latencies: list[float] = []
    errors: list[float] = []
    lock = threading.Lock()
    stop_at = time.time() + args.seconds
    budget = [args.max_requests]

    def worker(seed: int) -> None:
        s = requests.Session()
        i = seed
        while time.time() < stop_at:
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            t = time.perf_counter()
            try:
                r = s.post(
                    f"{args.router}/v1/classify",
                    data=bodies[i % len(bodies)],
                    params={"threshold": 0.8},
                    timeout=30,
                )
                ok = r.status_code == 200
            except requests.RequestException:
                ok = False
            dt = (time.perf_counter() - t) * 1000
            with lock:
                (latencies if ok else errors).append(dt)
            i += c

    started = time.time()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - started
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "concurrency": c,
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "seconds": round(elapsed, 2),
        "throughput_rps": round(len(latencies) / elapsed, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
    }


def client(args: argparse.Namespace) -> int:
    from core.imaging import encode_image
    from training.datasets import DistortionPolicy, distorted_image, load_source

    source = load_source("fashion-mnist", "test", limit=60, data_root=args.data_root)
    policy = DistortionPolicy(seed=5)  # random type and level per image
    bodies = [encode_image(distorted_image(source, i, 64, policy)[0], "png") for i in range(len(source))]
    results = []
    for c in args.levels:
        row = run_level(c, args, bodies)
        results.append(row)
        print(json.dumps(row), flush=True)
    write_json(args.results, results)
    return 0


class RssSampler(threading.Thread):
    """Samples the RSS of the router and of both TorchServe trees every second."""

    def __init__(self, router_pid: int, run_dir: Path):
        super().__init__(daemon=True)
        self.router_pid, self.run_dir = router_pid, run_dir
        self.samples: dict[str, list[float]] = {}
        self.stop = threading.Event()

    def processes(self) -> dict[str, psutil.Process]:
        procs = {"router": psutil.Process(self.router_pid)}
        for role in ("edge", "cloud"):
            try:
                pid_file = self.run_dir / role / "tmp" / ".model_server.pid"
                frontend = psutil.Process(int(pid_file.read_text()))
            except (OSError, ValueError, psutil.Error):
                continue
            procs[f"{role}_frontend_java"] = frontend
            for i, child in enumerate(sorted(frontend.children(recursive=True), key=lambda p: p.pid)):
                procs[f"{role}_worker_{i}"] = child
        return procs

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                for name, proc in self.processes().items():
                    self.samples.setdefault(name, []).append(proc.memory_info().rss / 2**20)
            except psutil.Error:
                pass

    def summary(self) -> dict:
        return {
            k: {"first_mb": round(v[0], 1), "last_mb": round(v[-1], 1), "max_mb": round(max(v), 1)}
            for k, v in self.samples.items()
            if v
        }


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--profiles", nargs="+", default=["lan", "paris"])
    p.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    p.add_argument("--seconds", type=float, default=15.0, help="per concurrency level")
    p.add_argument("--max-requests", type=int, default=3000, help="per concurrency level")
    p.add_argument("--model-store", default="model_store")
    p.add_argument("--run-dir", default="run/load")
    p.add_argument("--backend", default="auto", choices=("auto", "netem", "tun"))
    p.add_argument("--out", default="docs/results/load")
    p.add_argument("--data-root", default=None)
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild load.json / summary.md from the levels_*.json and RSS already in --out",
    )
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--router", default=None, help=argparse.SUPPRESS)
    p.add_argument("--results", default=None, help=argparse.SUPPRESS)
    return p


def main(args: argparse.Namespace) -> dict | int:
    if args.client:
        return client(args)
    from benchmarks import netem
    from benchmarks.latency import live_system

    if any(c < 1 for c in args.levels) or args.seconds <= 0 or args.max_requests < 1:
        raise UserInputError("--levels, --seconds and --max-requests must be positive")
    profiles = netem.load_profiles(None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        report = json.loads((out / "load.json").read_text())
        for name, r in report["profiles"].items():
            report["profiles"][name] = {
                **knees(json.loads((out / f"levels_{name}.json").read_text())),
                "rss": r["rss"],
            }
        write_json(out / "load.json", report)
        write_markdown(report, out)
        return report
    report = {"command": " ".join(["python -m benchmarks.load", *sys.argv[1:]]), "profiles": {}}
    for name in args.profiles:
        if name not in profiles:
            raise UserInputError(f"unknown profile {name}")
        minutes = len(args.levels) * args.seconds / 60 + 5
        with live_system(
            profiles[name],
            model_store=args.model_store,
            run_dir=args.run_dir,
            backend=args.backend,
            max_minutes=minutes,
        ) as (link, url, run_dir, env, router):
            sampler = RssSampler(router.pid, run_dir)
            sampler.start()
            results = out / f"levels_{name}.json"
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.load",
                "--client",
                "--router",
                url,
                "--results",
                str(results.resolve()),
                "--seconds",
                str(args.seconds),
                "--max-requests",
                str(args.max_requests),
                "--levels",
                *map(str, args.levels),
            ]
            if args.data_root:
                cmd += ["--data-root", args.data_root]
            subprocess.run(link.exec_args("dev", cmd), check=True, env=env, timeout=60 * minutes)
            sampler.stop.set()
            levels = json.loads(results.read_text())
        report["profiles"][name] = {**knees(levels), "rss": sampler.summary()}
        print(
            f"{name}: p99 > 2 x single-client p50 from concurrency "
            f"{report['profiles'][name]['p99_exceeds_2x_single_p50_at']}; errors below it: "
            f"{report['profiles'][name]['errors_below_knee']}"
        )
    write_json(out / "load.json", report)
    write_markdown(report, out)
    return report


def knees(levels: list[dict]) -> dict:
    """Where the tail gives way. The specified knee compares p99 with the single-client p50; with
    a bimodal latency (edge exits vs offloads over a WAN) that is already crossed by one client,
    so the knee against the single-client p99 is reported beside it."""
    p50, p99 = levels[0]["p50_ms"], levels[0]["p99_ms"]
    knee = next((r["concurrency"] for r in levels if r["p99_ms"] > 2 * p50), None)
    knee99 = next((r["concurrency"] for r in levels if r["p99_ms"] > 2 * p99), None)
    return {
        "levels": levels,
        "single_client_p50_ms": p50,
        "single_client_p99_ms": p99,
        "p99_exceeds_2x_single_p50_at": knee,
        "errors_below_knee": sum(r["errors"] for r in levels if knee is None or r["concurrency"] < knee),
        "p99_exceeds_2x_single_p99_at": knee99,
        "errors_below_p99_knee": sum(
            r["errors"] for r in levels if knee99 is None or r["concurrency"] < knee99
        ),
        "errors_total": sum(r["errors"] for r in levels),
    }


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, r in report["profiles"].items():
        c = [x["concurrency"] for x in r["levels"]]
        ax1.plot(c, [x["throughput_rps"] for x in r["levels"]], marker="o", label=name)
        ax2.plot(c, [x["p99_ms"] for x in r["levels"]], marker="o", label=f"{name} p99")
        ax2.plot(c, [x["p50_ms"] for x in r["levels"]], marker=".", linestyle="--", label=f"{name} p50")
    for ax, label in ((ax1, "throughput (req/s)"), (ax2, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput_vs_concurrency.png", dpi=110)
    plt.close(fig)


def write_markdown(report: dict, out: Path) -> None:
    plot(report, out)
    lines = ["# Load: concurrent clients against the live router", "", f"Command: `{report['command']}`", ""]
    for name, r in report["profiles"].items():
        lines += [
            f"## {name}",
            "",
            f"p99 first exceeds twice the single-client p50 ({r['single_client_p50_ms']} ms) at "
            f"concurrency **{r['p99_exceeds_2x_single_p50_at']}**; errors below it: "
            f"**{r['errors_below_knee']}**. p99 first exceeds twice the single-client p99 "
            f"({r['single_client_p99_ms']} ms) at concurrency **{r['p99_exceeds_2x_single_p99_at']}**; "
            f"errors below it: **{r['errors_below_p99_knee']}**; errors at any level: "
            f"**{r['errors_total']}**.",
            "",
            "| clients | requests | errors | throughput (req/s) | p50 ms | p95 ms | p99 ms |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {x['concurrency']} | {x['requests']} | {x['errors']} | {x['throughput_rps']} | "
            f"{x['p50_ms']} | {x['p95_ms']} | {x['p99_ms']} |"
            for x in r["levels"]
        ]
        lines += [
            "",
            "RSS (MB, first / last / max sample): "
            + "; ".join(f"{k} {v['first_mb']}/{v['last_mb']}/{v['max_mb']}" for k, v in r["rss"].items()),
            "",
        ]
    lines.append("![throughput and latency vs concurrency](throughput_vs_concurrency.png)")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
