"""What the edge tier costs in memory: PSS and RSS of every process, by number of experts.

    python -m benchmarks.footprint                       # writes docs/results/footprint/
    python -m benchmarks.footprint --experts 1 3 --load-s 20 --out /tmp/footprint   # quicker

For 1, 3 and 6 experts (the shipped store's edge archives, in a fixed order) the live system is
started through the one harness (`benchmarks.lib.live.LiveSystem`: edge and cloud TorchServe and the
router, on loopback), warmed up, and every process sampled idle; then 4 keep-alive clients send
mixed test images (pristine, blurred, noisy: edge exits and offloads) for `--load-s` seconds,
sampled every few seconds, and the last sample under load is kept with each process's peak.
The edge tier is what runs on the edge box: the router, the edge TorchServe frontend and its
workers. PSS (proportional set size, from `/proc/PID/smaps_rollup`) charges shared pages to the
processes sharing them, so the tier's PSS is what the box really gives; RSS double-counts them.

Measured side by side in the same run: the same 3 experts with TorchServe's workers importing
the real PyTorch (`--worker-torch real`, what a stock TorchServe environment does), and the
minimal peer (`benchmarks.lib.peers_minimal`: one uvicorn process running the same onnxruntime
pipeline on the same 3 experts) under the same load. Writes `footprint.json` and `footprint.png`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.lib.live import LiveSystem
from benchmarks.lib.live_parts import wait_until_ready
from benchmarks.lib.loadgen import LoadClient
from core.cli import command_line, write_json
from core.errors import UserInputError
from core.experts import CLASSIFIER
from core.imaging import encode_image

# the order experts are added in: the first three types' first, so 3 experts serve every class
# (a motion-blurred frame falls back to the Gaussian-blur expert); motion blur, added later, comes
# last, so the committed runs (1, 3 and 6 experts) measured the same archives a re-run does
EXPERT_ORDER = (
    "pristine",
    "gaussian_blur",
    "gaussian_noise",
    "conventional",
    "gaussian_blur_adapt_bn",
    "gaussian_noise_adapt_bn",
    "motion_blur",
)
EDGE_TIER = ("router", "edge_")  # process-name prefixes of what runs on the edge box
MINIMAL_PORT = 18520


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.footprint",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model-store", default="demo_runs/model_store", help="archives (python -m export.archive)"
    )
    p.add_argument("--experts", type=int, nargs="+", default=[1, 3, 6], help="expert counts to measure")
    p.add_argument("--load-s", type=float, default=60.0, help="seconds of 4-client load per configuration")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--images", type=int, default=200, help="distinct test images sent round-robin")
    p.add_argument("--no-real-torch", action="store_true", help="skip the run with PyTorch in the workers")
    p.add_argument("--no-minimal", action="store_true", help="skip the minimal peer")
    p.add_argument("--run-dir", default="run/footprint")
    p.add_argument("--out", default="docs/results/footprint")
    return p


def memory(processes: dict[str, psutil.Process]) -> dict[str, dict[str, float]]:
    """{name: {'pss_mb', 'rss_mb'}} of every process still alive."""
    out = {}
    for name, proc in processes.items():
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        out[name] = {"pss_mb": round(info.pss / 2**20, 1), "rss_mb": round(info.rss / 2**20, 1)}
    return out


def tier(sample: dict[str, dict[str, float]], key: str = "pss_mb") -> float:
    return round(sum(v[key] for n, v in sample.items() if n.startswith(EDGE_TIER)), 1)


def under_load(url: str, bodies: list[bytes], processes, args, params: dict) -> tuple[dict, dict, dict]:
    """(last sample, per-process peak, load summary) over `args.load_s` seconds of load."""
    peak: dict[str, dict[str, float]] = {}
    last: dict = {}
    with LoadClient(url, bodies, clients=args.clients, params=params, keep_answers=False) as load:
        deadline = time.time() + args.load_s
        while time.time() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.time())))
            last = memory(processes())
            for name, v in last.items():
                old = peak.get(name, {"pss_mb": 0.0, "rss_mb": 0.0})
                peak[name] = {k: max(old[k], v[k]) for k in v}
    summary = load.summary()
    statuses = summary.get("statuses", {})
    if not statuses.get("200") or set(statuses) != {"200"}:
        raise RuntimeError(f"the load was not answered in full (statuses {statuses}): no figure from it")
    return last, peak, summary


def measure_stack(store: Path, run_dir: Path, names: list[str], bodies, args, worker_torch: str) -> dict:
    models = {role: [f"{role}_{n}" for n in names] for role in ("edge", "cloud")}
    with LiveSystem(
        store,
        run_dir,
        edge_models=models["edge"],
        cloud_models=models["cloud"],
        router_options=["--deadline-ms", "30000"],
        worker_torch=worker_torch,
    ) as system:
        # fewer experts than classes: the first answers every image (the classifier would route
        # some to an expert that is not there); otherwise the classifier routes as in service
        params = {"threshold": 0.8, **({"expert": names[0]} if len(names) < len(EXPERT_ORDER[:3]) else {})}
        LoadClient(system.url, bodies, clients=1, params=params).run(seconds=30, max_requests=40)
        time.sleep(3)
        idle = memory(system.processes())
        loaded, peak, summary = under_load(system.url, bodies, system.processes, args, params)
    return {
        "experts": names,
        "worker_torch": worker_torch,
        "idle": idle,
        "under_load": loaded,
        "peak": peak,
        "edge_tier_pss_mb": {"idle": tier(idle), "under_load": tier(loaded), "peak": tier(peak)},
        "edge_tier_rss_mb": {"idle": tier(idle, "rss_mb"), "under_load": tier(loaded, "rss_mb")},
        "load": summary,
    }


def subset_store(store: Path, names: list[str], folder: Path) -> Path:
    """The classifier and `names`' archives only, for the minimal peer (it loads all it finds)."""
    for archive in (CLASSIFIER, *(f"{r}_{n}" for n in names for r in ("edge", "cloud"))):
        shutil.copy2(store / f"{archive}.mar", folder / f"{archive}.mar")
    return folder


def measure_minimal(store: Path, names: list[str], bodies, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="footprint_minimal_") as tmp:
        subset = subset_store(store, names, Path(tmp))
        argv = [sys.executable, "-m", "benchmarks.lib.peers_minimal", "--models", str(subset)]
        proc = subprocess.Popen([*argv, "--port", str(MINIMAL_PORT)])
        try:
            url = f"http://127.0.0.1:{MINIMAL_PORT}"
            wait_until_ready(f"{url}/healthz", proc=proc, timeout=120)
            processes = {"minimal": psutil.Process(proc.pid)}
            LoadClient(url, bodies, clients=1).run(seconds=30, max_requests=40)
            time.sleep(3)
            idle = memory(processes)
            loaded, peak, summary = under_load(url, bodies, lambda: processes, args, {"threshold": 0.8})
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {"experts": names, "idle": idle, "under_load": loaded, "peak": peak, "load": summary}


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares MB per expert over (experts, MB) points."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return round(sum((x - mx) * (y - my) for x, y in points) / var, 1) if var else 0.0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    runs = [r for r in result["runs"] if r["worker_torch"] == "stub"]
    xs = [len(r["experts"]) for r in runs]
    parts = {"router": "router", "edge_frontend_java": "TorchServe frontend (Java)", "edge_worker": "workers"}
    bottom = [0.0] * len(runs)
    for key, label in parts.items():
        ys = [sum(v["pss_mb"] for n, v in r["under_load"].items() if n.startswith(key)) for r in runs]
        ax.bar(xs, ys, bottom=bottom, label=label, width=0.6)
        bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
    for r in result["runs"]:
        if r["worker_torch"] == "real":
            x = len(r["experts"])
            ax.scatter([x], [r["edge_tier_pss_mb"]["under_load"]], color="black", marker="x", zorder=3)
            ax.annotate(" workers with PyTorch", (x, r["edge_tier_pss_mb"]["under_load"]), fontsize=8)
    if result.get("minimal"):
        ax.axhline(result["minimal_pss_mb"], color="grey", linestyle="--", label="minimal peer (3 experts)")
    ax.set_xlabel("experts on the edge")
    ax.set_ylabel("PSS under load (MB)")
    ax.set_title("Edge tier memory: router + TorchServe frontend + workers")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: argparse.Namespace) -> dict:
    started = time.time()
    store = Path(args.model_store)
    if not (store / f"{CLASSIFIER}.mar").is_file():
        raise UserInputError(f"{store}: no archives; run python -m export.archive --model-store {store}")
    counts = sorted(set(args.experts))
    if counts[0] < 1 or counts[-1] > len(EXPERT_ORDER):
        raise UserInputError(f"--experts: counts between 1 and {len(EXPERT_ORDER)}")
    from benchmarks.reliability.system import test_images

    bodies = [encode_image(im, "png") for im in test_images(args.images, seed=3)]
    run_dir = Path(args.run_dir)
    configs = [(n, "stub") for n in counts] + ([] if args.no_real_torch else [(3, "real")])
    runs = []
    for n, worker_torch in configs:
        names = list(EXPERT_ORDER[:n])
        print(f"footprint: {n} experts, workers with torch {worker_torch}", file=sys.stderr)
        runs.append(measure_stack(store, run_dir / f"{n}_{worker_torch}", names, bodies, args, worker_torch))
    stub = {len(r["experts"]): r for r in runs if r["worker_torch"] == "stub"}
    result = {
        "command": command_line(),
        "load": {"clients": args.clients, "seconds": args.load_s, "threshold": 0.8, "images": args.images},
        "edge_tier_pss_mb": stub[3]["edge_tier_pss_mb"]["under_load"] if 3 in stub else None,
        "per_expert_pss_mb": slope([(n, r["edge_tier_pss_mb"]["under_load"]) for n, r in stub.items()]),
        "runs": runs,
    }
    real = [r for r in runs if r["worker_torch"] == "real"]
    if real:
        result["edge_tier_pss_mb_workers_with_torch"] = real[0]["edge_tier_pss_mb"]["under_load"]
    if not args.no_minimal:
        print("footprint: the minimal peer", file=sys.stderr)
        result["minimal"] = measure_minimal(store, list(EXPERT_ORDER[:3]), bodies, args)
        result["minimal_pss_mb"] = result["minimal"]["under_load"]["minimal"]["pss_mb"]
    result["wall_time_s"] = round(time.time() - started, 1)
    out = Path(args.out)
    write_json(out / "footprint.json", result)
    plot(result, out / "footprint.png")
    print(
        f"edge tier PSS under load, 3 experts: {result['edge_tier_pss_mb']} MB; per expert "
        f"{result['per_expert_pss_mb']} MB; workers with PyTorch: "
        f"{result.get('edge_tier_pss_mb_workers_with_torch')} MB; minimal peer: "
        f"{result.get('minimal_pss_mb')} MB; wrote {out}/footprint.json and footprint.png"
    )
    return result
