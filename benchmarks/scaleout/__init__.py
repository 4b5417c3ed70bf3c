"""The cloud tier scaled out: every request offloaded, cloud on TorchServe or KServe, 1 or 2 replicas.

    python -m benchmarks.scaleout --out docs/results/scaleout

For each emulated link (`--profiles`, default lan and paris), cloud engine (`--engines`: the cloud
TorchServe, or `python -m cloud_kserve` from `.venv-kserve`) and replica count (`--replicas`), the
live system is started in the network namespaces (`benchmarks.latency.emulated_system`: edge
TorchServe and router on CPU 0, every cloud replica on CPU 1) with the router given every replica
(`--cloud`), and the device-side load client of `benchmarks.load` sends images with threshold 1.0
(no side branch can answer: every request is offloaded) at each of `--levels` concurrent clients
for `--seconds`. Records throughput, p50/p99, errors and lost requests per level, and the RSS of
every process. Writes scaleout.json, scaleout.md and scaleout.png under `--out`.

What two cores can show: whether the router spreads offloads and what a second replica costs in
memory and latency when both replicas share the cloud's one core. They cannot show a second
replica adding capacity: that needs a core (or a machine) per replica.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import psutil

from benchmarks.lib import target
from core.cli import command_line, write_json
from core.errors import UserInputError

ENGINES = ("torchserve", "kserve")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scaleout",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--profiles", nargs="+", default=["lan", "paris"])
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--policies",
        nargs="+",
        default=["least_outstanding", "round_robin"],
        choices=("least_outstanding", "round_robin"),
        help="the router's --cloud-policy; each is run where there is more than one replica",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=64,
        help="the router's admission limit: above its default (16, sized for edge exits), "
        "so that a 216-ms offload round trip does not cap the cloud at 16 / 0.25 s",
    )
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 32], help="concurrent clients")
    p.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    p.add_argument("--max-requests", type=int, default=3000, help="per concurrency level")
    p.add_argument("--model-store", default="model_store")
    p.add_argument("--run-dir", default="run/scaleout")
    target.add_backend_option(p)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="docs/results/scaleout")
    return p


def run_one(profile, engine: str, replicas: int, policy: str, args: argparse.Namespace, out: Path) -> dict:
    from benchmarks.latency import emulated_system
    from benchmarks.load import run_device_client

    minutes = len(args.levels) * args.seconds / 60 + 5
    started = time.time()
    run_dir = Path(args.run_dir) / engine / str(replicas)
    options = ["--cloud-policy", policy, "--max-in-flight", str(args.max_in_flight)]
    with emulated_system(
        profile,
        model_store=args.model_store,
        run_dir=run_dir,
        backend=args.backend,
        max_minutes=minutes,
        cloud_engine=engine,
        cloud_replicas=replicas,
        router_options=options,
    ) as system:
        results = (out / f"levels_{profile.name}_{engine}_{replicas}_{policy}.json").resolve()
        levels = run_device_client(system, results, args, threshold=1.0, minutes=minutes)
        rss = system.rss_mb()
        backend = system.link.backend
    row = {
        "profile": profile.name,
        "engine": engine,
        "replicas": replicas,
        "policy": policy,
        "link_backend": backend,
        "levels": levels,
        "errors": sum(lv["errors"] for lv in levels),
        "lost": sum(lv["lost"] for lv in levels),
        "shed": sum(lv["shed"] for lv in levels),
        "peak_rps": max(lv["throughput_rps"] for lv in levels),
        "rss_mb": rss,
        "cloud_rss_mb": round(sum(v for k, v in rss.items() if k.startswith("cloud")), 1),
        "seconds": round(time.time() - started),
    }
    print(
        f"{profile.name:9s} {engine:10s} x{replicas} {policy:17s}: peak {row['peak_rps']:6.1f} req/s, "
        + " ".join(f"c{lv['concurrency']}:{lv['throughput_rps']:.0f}/p99 {lv['p99_ms']}" for lv in levels)
        + f" | errors {row['errors']} lost {row['lost']} | cloud RSS {row['cloud_rss_mb']} MB",
        flush=True,
    )
    return row


def main(args: argparse.Namespace) -> dict:
    from benchmarks.lib import netem

    profiles = netem.load_profiles(None)
    unknown = [n for n in args.profiles if n not in profiles]
    if unknown:
        raise UserInputError(f"unknown profile(s): {', '.join(unknown)} (have: {', '.join(profiles)})")
    if any(r < 1 for r in args.replicas) or any(c < 1 for c in args.levels) or args.seconds <= 0:
        raise UserInputError("--replicas, --levels and --seconds must be positive")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows = [
        run_one(profiles[name], engine, n, policy, args, out)
        for name in args.profiles
        for engine in args.engines
        for n in args.replicas
        for policy in (args.policies if n > 1 else args.policies[:1])
    ]
    report = {
        "command": command_line(),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores",
        "threshold": 1.0,
        "router_max_in_flight": args.max_in_flight,
        "pinning": {"edge_and_router": 0, "cloud_replicas": 1},
        "rows": rows,
        "errors_total": sum(r["errors"] + r["lost"] for r in rows),
        "seconds": round(time.time() - started),
    }
    write_json(out / "scaleout.json", report)
    write_markdown(report, out / "scaleout.md")
    plot(report, out / "scaleout.png")
    return report


def write_markdown(report: dict, path: Path) -> None:
    levels = report["rows"][0]["levels"]
    head = " | ".join(f"c{lv['concurrency']} req/s (p50/p99 ms)" for lv in levels)
    lines = [
        "# The cloud tier scaled out: every request offloaded",
        "",
        f"`{report['command']}` ({report['machine']}; edge and router on CPU 0, every cloud replica "
        f"on CPU 1; router --max-in-flight {report['router_max_in_flight']}; {report['seconds']} s). "
        f"Errors and lost requests in all: "
        f"{report['errors_total']}.",
        "",
        f"| link | cloud | replicas | policy | {head} | errors | shed (503) | cloud RSS MB |",
        "|---" * (len(levels) + 7) + "|",
    ]
    for r in report["rows"]:
        cells = " | ".join(
            f"{lv['throughput_rps']:.0f} ({lv['p50_ms']}/{lv['p99_ms']})" for lv in r["levels"]
        )
        lines.append(
            f"| {r['profile']} | {r['engine']} | {r['replicas']} | {r['policy']} | {cells} | "
            f"{r['errors'] + r['lost']} | {r['shed']} | {r['cloud_rss_mb']} |"
        )
    path.write_text("\n".join(lines) + "\n")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = list(dict.fromkeys(r["profile"] for r in report["rows"]))
    fig, axes = plt.subplots(1, len(profiles), figsize=(5.5 * len(profiles), 4), squeeze=False)
    for ax, name in zip(axes[0], profiles, strict=True):
        for r in (r for r in report["rows"] if r["profile"] == name):
            xs = [lv["concurrency"] for lv in r["levels"]]
            ax.plot(
                xs,
                [lv["throughput_rps"] for lv in r["levels"]],
                marker="o",
                label=f"{r['engine']} x{r['replicas']}" + (f" {r['policy']}" if r["replicas"] > 1 else ""),
            )
        ax.set(
            title=f"{name}: every request offloaded",
            xlabel="concurrent clients",
            ylabel="answers/s",
            xscale="log",
        )
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
