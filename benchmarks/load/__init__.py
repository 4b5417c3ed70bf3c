"""Concurrent clients against the live router: throughput and tail latency per concurrency level.

Two modes:

    python -m benchmarks.load --profiles lan paris --out docs/results/load          # own stack
    python -m benchmarks.load --router http://127.0.0.1:8000 --levels 1 4 --seconds 10  # existing

**Own stack** (the default): for each emulated profile the same live system as
`benchmarks.latency` (`benchmarks.lib.live`: edge TorchServe + router pinned to CPU 0 in the edge
namespace, cloud TorchServe on CPU 1 in the cloud namespace) serves a client in the device
namespace; everything is stopped and the namespaces removed at the end. The RSS of every process
of the system (`LiveSystem.processes`) is sampled every second.

**Existing deployment** (`--router URL`): the client runs here against a router that is already
running (started e.g. as in README "The live system"); nothing is created, started or stopped, and
RSS is not sampled (the deployment's processes are not this run's). Results go to
`run/existing/load` unless `--out` says otherwise, under the profile name `existing`, and
`load.json` records `"mode": "existing deployment"` and the router URL. Only loopback URLs are
accepted unless `--allow-remote` is given.

In both modes the client (`benchmarks.lib.loadgen.LoadClient`) runs 1, 2, 4, 8, 16 and 32 concurrent
keep-alive connections (`--levels`), each level for `--seconds` and at most `--max-requests`
requests, sending pristine, blurred and noisy test images through the expert system at p_tar 0.8.
Reports throughput, p50/p95/p99, errors per level and the first concurrency at which p99 exceeds
twice the single-client p50.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from benchmarks.lib import target
from core.cli import write_json
from core.errors import UserInputError

LEVELS = (1, 2, 4, 8, 16, 32)
DEFAULT_PROFILES = ("lan", "paris")
DEFAULT_OUT = "docs/results/load"
EXISTING_OUT = "run/existing/load"
OWN_STACK_OPTIONS = ("profiles", "model_store", "run_dir", "backend")
RSS_NOT_SAMPLED = "not sampled: the existing deployment's processes are not this run's"


def run_levels(router: str, args: argparse.Namespace) -> list[dict]:
    """Every level of `args.levels` against `router`, one after the other."""
    from benchmarks.lib.loadgen import LoadClient
    from core.imaging import encode_image
    from training.datasets import DistortionPolicy, distorted_image, load_source

    source = load_source("fashion-mnist", "test", limit=60, data_root=args.data_root)
    policy = DistortionPolicy(seed=5)  # random type and level per image
    bodies = [encode_image(distorted_image(source, i, 64, policy)[0], "png") for i in range(len(source))]
    results = []
    for c in args.levels:
        row = LoadClient(router, bodies, clients=c, params={"threshold": args.threshold}).run(
            seconds=args.seconds, max_requests=args.max_requests
        )
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


def run_device_client(
    system, results: Path, args: argparse.Namespace, *, threshold: float, minutes: float
) -> list[dict]:
    """The client half (`--client`) inside the device namespace of `system`'s emulated link: every
    level of `args.levels` for `args.seconds`; returns the levels it wrote to `results`."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.load",
        "--client",
        "--client-router",
        system.url,
        "--results",
        str(results),
        "--threshold",
        repr(threshold),
        "--seconds",
        str(args.seconds),
        "--max-requests",
        str(args.max_requests),
        "--levels",
        *map(str, args.levels),
    ]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    subprocess.run(system.link.exec_args("dev", cmd), check=True, env=system.env, timeout=60 * minutes)
    return json.loads(Path(results).read_text())


def client(args: argparse.Namespace) -> int:
    """The client half of the own-stack mode (runs inside the device namespace)."""
    write_json(args.results, run_levels(args.client_router, args))
    return 0


class RssSampler(threading.Thread):
    """Samples the RSS of every process of `system` (a `LiveSystem`) every second."""

    def __init__(self, system):
        super().__init__(daemon=True)
        self.system = system
        self.samples: dict[str, list[float]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                for name, mb in self.system.rss_mb().items():
                    self.samples.setdefault(name, []).append(mb)
            except psutil.Error:  # the router exited between the look-up and the sample
                pass

    def summary(self) -> dict:
        return {
            k: {"first_mb": v[0], "last_mb": v[-1], "max_mb": max(v)} for k, v in self.samples.items() if v
        }


def get_args_parser() -> argparse.ArgumentParser:
    p = target.parser(
        "benchmarks.load",
        __doc__,
        own="builds the namespaces, TorchServe and the router for each\n    emulated profile, "
        "measures, then stops and removes everything.",
        existing="measures a router that is already running; nothing is\n    created, started "
        "or stopped, RSS is not sampled; loopback URLs only unless --allow-remote.",
    )
    p.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="concurrent clients")
    p.add_argument("--seconds", type=float, default=15.0, help="per concurrency level")
    p.add_argument("--max-requests", type=int, default=3000, help="per concurrency level")
    p.add_argument(
        "--out",
        default=None,
        help=f"results folder (default: {DEFAULT_OUT}; with --router: {EXISTING_OUT})",
    )
    p.add_argument("--data-root", default=None)
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild load.json / summary.md from the levels_*.json and RSS already in --out",
    )
    own = p.add_argument_group("own stack (the default: namespaces, TorchServe and router started here)")
    own.add_argument(
        "--profiles",
        nargs="+",
        default=None,
        help=f"emulated profiles (default: {' '.join(DEFAULT_PROFILES)})",
    )
    own.add_argument("--model-store", default=None, help="archives (default: model_store)")
    own.add_argument("--run-dir", default=None, help="working folders (default: run/load)")
    target.add_backend_option(own, default=None)
    target.add_existing_options(p)
    target.add_client_half_options(p)
    p.add_argument("--results", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--threshold",
        type=float,
        default=0.8,
        help="p_tar of every request (1.0: all offloaded, as benchmarks.scaleout runs)",
    )
    return p


def main(args: argparse.Namespace) -> dict | int:
    if args.client:
        return client(args)
    from benchmarks.lib import netem

    if any(c < 1 for c in args.levels) or args.seconds <= 0 or args.max_requests < 1:
        raise UserInputError("--levels, --seconds and --max-requests must be positive")
    targets = target.existing_targets(args, OWN_STACK_OPTIONS)
    out = Path(args.out or (EXISTING_OUT if targets else DEFAULT_OUT))
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        report = json.loads((out / "load.json").read_text())
        for name, r in report["profiles"].items():
            report["profiles"][name] = {
                **knees(json.loads((out / f"levels_{name}.json").read_text())),
                **{k: v for k, v in r.items() if k in ("rss", "rss_note")},
            }
        write_json(out / "load.json", report)
        write_markdown(report, out)
        return report
    report = {
        **target.provenance(
            "benchmarks.load", targets, None if targets else (args.model_store or "model_store")
        ),
        "profiles": {},
    }
    if targets:
        target.check_router_answers(targets["router"])
        levels = run_levels(targets["router"], args)
        write_json(out / f"levels_{target.EXISTING}.json", levels)
        report["profiles"][target.EXISTING] = {**knees(levels), "rss": {}, "rss_note": RSS_NOT_SAMPLED}
        print_knee(target.EXISTING, report)
        write_json(out / "load.json", report)
        write_markdown(report, out)
        return report
    from benchmarks.latency import emulated_system

    profiles = netem.load_profiles(None)
    names = args.profiles or list(DEFAULT_PROFILES)
    unknown = [n for n in names if n not in profiles]
    if unknown:
        raise UserInputError(f"unknown profile(s): {', '.join(unknown)}")
    for name in names:
        minutes = len(args.levels) * args.seconds / 60 + 5
        with emulated_system(
            profiles[name],
            model_store=args.model_store or "model_store",
            run_dir=args.run_dir or "run/load",
            backend=args.backend or "auto",
            max_minutes=minutes,
        ) as system:
            sampler = RssSampler(system)
            sampler.start()
            results = out / f"levels_{name}.json"
            levels = run_device_client(system, results.resolve(), args, threshold=0.8, minutes=minutes)
            sampler.stop.set()
        report["profiles"][name] = {**knees(levels), "rss": sampler.summary()}
        print_knee(name, report)
    write_json(out / "load.json", report)
    write_markdown(report, out)
    return report


def print_knee(name: str, report: dict) -> None:
    r = report["profiles"][name]
    print(
        f"{name}: p99 > 2 x single-client p50 from concurrency "
        f"{r['p99_exceeds_2x_single_p50_at']}; errors below it: {r['errors_below_knee']}"
    )


def knees(levels: list[dict]) -> dict:
    """Where the tail gives way. The specified knee compares p99 with the single-client p50; with
    a bimodal latency (edge exits vs offloads over a WAN) that is already crossed by one client,
    so the knee against the single-client p99 is reported beside it. A level without a single
    answer has no percentiles (None): its errors count, its latency cannot cross a knee."""

    def above(ms: float | None, ref: float | None) -> bool:
        return ms is not None and ref is not None and ms > 2 * ref

    p50, p99 = levels[0]["p50_ms"], levels[0]["p99_ms"]
    knee = next((r["concurrency"] for r in levels if above(r["p99_ms"], p50)), None)
    knee99 = next((r["concurrency"] for r in levels if above(r["p99_ms"], p99)), None)
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
    lines = [
        "# Load: concurrent clients against the live router",
        "",
        f"Produced by: {target.describe(report)}",
        "",
    ]
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
            "| clients | requests | errors | shed (503) | throughput (req/s) | p50 ms | p95 ms | p99 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {x['concurrency']} | {x['requests']} | {x['errors']} | {x.get('shed', 0)} | "
            f"{x['throughput_rps']} | {x['p50_ms']} | {x['p95_ms']} | {x['p99_ms']} |"
            for x in r["levels"]
        ]
        rss = "; ".join(f"{k} {v['first_mb']}/{v['last_mb']}/{v['max_mb']}" for k, v in r["rss"].items())
        lines += ["", f"RSS (MB, first / last / max sample): {rss or r.get('rss_note', 'no samples')}", ""]
    lines.append("![throughput and latency vs concurrency](throughput_vs_concurrency.png)")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
