"""This stack beside the peers a user would pick instead, in one run, same images, same machine.

    python -m benchmarks.peers --out docs/results/peers

At 64 and 224 px (random-weight early-exit MobileNetV2 and the trained classifier, built by
`benchmarks.lib.synthetic`; latency does not depend on the weights), with every server process pinned
to CPU 0 and this client to CPU 1:

- (a) `in_process`: `export.pipeline.Pipeline` called directly (decode, classifier, edge stages,
  cloud segment when offloading), no HTTP;
- (b) `minimal`: the same onnxruntime pipeline in one uvicorn process (`benchmarks.lib.peers_minimal`),
  what a user would write instead of this bundle;
- (c) `torchserve_eager` (224 px only: its stock transforms crop to 224): the whole MobileNetV2 in
  one archive behind TorchServe's stock `image_classifier` handler, PyTorch eager, 1 thread, with
  this stack's TorchServe batching (batch size and delay); compared with this stack's offload
  path, so both sides run the whole network;
- (d) `this_stack`: the router (classifier inside) with the edge and cloud TorchServe on loopback
  (`benchmarks.lib.live`).

Two paths, forced by the threshold: `edge_exit` (0.01: the first side branch answers) and
`offload` (1.0: the split goes to the cloud segment). For each, after `--warmup-seconds` of
discarded 4-client load (the same for every server: a deployed server is warm, and a JVM's is not
after 20 requests): single-client p50/p99 over `--requests` sequential requests, then throughput
and p99 with 1, 4, 16 and 32 keep-alive clients (`benchmarks.lib.loadgen`, `--seconds` a level), and
the RSS of every server process. The answers of (b) and (d) are checked against (a) (expert, exit,
class) on the same images. The machine's noise is large at this scale, so every contender is
measured `--repeats` times, the runs one after another (each a pass over every size and
contender), and each ratio is reported as the median of its per-run values with the spread. Writes
peers.json (every run, the `ratios` the project tracks), peers.csv, peers.md and peers.png (the
medians) under `--out`.

Here: the contenders and the run; how each is measured: `benchmarks.peers.measure`; the ratios and
the CSV, Markdown and plot: `benchmarks.peers.report`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks.lib.live import LiveSystem
from benchmarks.lib.live_parts import rss_mb, torchserve_processes, wait_until_ready
from benchmarks.lib.loadgen import percentiles
from benchmarks.lib.synthetic import build_store
from benchmarks.peers.measure import (
    CLIENT_CPU,
    PATHS,
    SERVER_CPU,
    agreement,
    image_bodies,
    measure,
    pin,
    pin_client,
)
from benchmarks.peers.report import median_run, plot, ratios, summarise_ratios, write_csv, write_markdown
from core.cli import progress, write_json
from core.errors import UserInputError
from core.imaging import decode_image

LEVELS = (1, 4, 16, 32)
MINIMAL_PORT, EAGER_PORTS = 18500, (18580, 18581, 18582, 17580, 17581)
EAGER = "eager_mobilenet_v2"
EAGER_MODEL_FILE = """from torchvision.models.mobilenetv2 import MobileNetV2


class EagerMobileNetV2(MobileNetV2):
    def __init__(self):
        super().__init__(num_classes=10)
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.peers",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    p.add_argument("--classifier", default="models/torch/classifier.pt")
    p.add_argument("--requests", type=int, default=200, help="sequential requests per single-client run")
    p.add_argument(
        "--warmup", type=int, default=20, help="sequential requests discarded before each single-client run"
    )
    p.add_argument(
        "--warmup-seconds",
        type=float,
        default=5.0,
        help="4-client load before each path's measurements, discarded: every server "
        "is measured warm (TorchServe's JVM compiles its hot paths under load)",
    )
    p.add_argument("--seconds", type=float, default=6.0, help="length of each concurrency level")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of every contender; each ratio is the median over them (at least 3 for a median "
        "that one slow run cannot move)",
    )
    p.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    p.add_argument("--max-requests", type=int, default=20000, help="cap per concurrency level")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="TorchServe batch size of this stack's archives (default: export.archive's)",
    )
    p.add_argument("--max-batch-delay", type=int, default=None, help="TorchServe batching delay (ms)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="docs/results/peers")
    p.add_argument("--quiet", action="store_true")
    return p


def in_process(pipeline, bodies: list[bytes], args) -> dict:
    """(a): decode + Pipeline.infer on CPU 0, one request at a time."""
    pin(SERVER_CPU)
    try:
        out = {}
        for p, threshold in PATHS.items():
            ms = []
            for i in range(args.warmup + args.requests):
                t = time.perf_counter()
                pipeline.infer([decode_image(bodies[i % len(bodies)])], threshold)
                if i >= args.warmup:
                    ms.append((time.perf_counter() - t) * 1000)
            single = {**percentiles(ms), "n": len(ms)}
            # one thread is all it has: its throughput is the inverse of its mean time
            out[p] = {
                "single": single,
                "levels": [
                    {
                        "concurrency": 1,
                        "throughput_rps": round(1000 / float(np.mean(ms)), 2),
                        **percentiles(ms),
                    }
                ],
            }
            print(
                f"  {'in_process':17s} {p:9s} p50 {single['p50_ms']:7.2f} ms p99 {single['p99_ms']:7.2f} ms",
                flush=True,
            )
        return out
    finally:
        pin(CLIENT_CPU)


def run_minimal(store: Path, bodies, reference, args) -> dict:
    proc = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(SERVER_CPU),
            sys.executable,
            "-m",
            "benchmarks.lib.peers_minimal",
            "--models",
            str(store),
            "--port",
            str(MINIMAL_PORT),
        ]
    )
    try:
        base = f"http://127.0.0.1:{MINIMAL_PORT}"
        wait_until_ready(f"{base}/healthz", proc=proc, timeout=120)
        result = measure("minimal", base, "/v1/classify", bodies, args)
        result["agreement"] = agreement(base + "/v1/classify", bodies[:16], reference)
        result["rss_mb"] = rss_mb({"minimal": psutil.Process(proc.pid)})
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_stack(store: Path, run_dir: Path, bodies, reference, args) -> dict:
    cpu = str(SERVER_CPU)
    with LiveSystem(
        store,
        run_dir,
        cpus={"edge": cpu, "cloud": cpu, "router": cpu},
        router_options=["--deadline-ms", "30000"],
    ) as system:
        result = measure("this_stack", system.url, "/v1/classify", bodies, args)
        result["agreement"] = agreement(system.url + "/v1/classify", bodies[:16], reference)
        result["rss_mb"] = system.rss_mb()
        return result


def batching(args: argparse.Namespace) -> dict:
    """This stack's TorchServe batching: the flags given, else `export.archive`'s defaults."""
    from export.archive import get_args_parser as archive_args

    defaults = archive_args()
    return {
        "batchSize": args.batch_size if args.batch_size is not None else defaults.get_default("batch_size"),
        "maxBatchDelay": args.max_batch_delay
        if args.max_batch_delay is not None
        else defaults.get_default("max_batch_delay"),
    }


def build_eager_archive(folder: Path, args: argparse.Namespace) -> Path:
    """The whole torchvision MobileNetV2 (10 classes) for TorchServe's stock image_classifier, one
    worker with this stack's batching."""
    import torch
    import yaml
    from torchvision.models import mobilenet_v2

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(EAGER_MODEL_FILE)
    config = {"minWorkers": 1, "maxWorkers": 1, **batching(args), "responseTimeout": 30}
    (folder / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    torch.manual_seed(0)
    torch.save(mobilenet_v2(num_classes=10).state_dict(), folder / "weights.pth")
    store = folder / "store"
    store.mkdir(exist_ok=True)
    subprocess.run(
        [
            str(Path(sys.executable).parent / "torch-model-archiver"),
            "--model-name",
            EAGER,
            "--version",
            "1.0",
            "--model-file",
            str(folder / "model.py"),
            "--serialized-file",
            str(folder / "weights.pth"),
            "--handler",
            "image_classifier",
            "--config-file",
            str(folder / "model-config.yaml"),
            "--export-path",
            str(store),
            "--force",
        ],
        check=True,
    )
    return store


def run_eager(folder: Path, bodies, args) -> dict:
    from edge_router.torchserve import Ports, instance

    store = (
        folder / "store"
        if (folder / "store" / f"{EAGER}.mar").is_file()
        else build_eager_archive(folder, args)
    )
    inst = instance("edge", run_dir=folder / "run", ports=Ports(*EAGER_PORTS))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    ts = [sys.executable, "-m", "edge_router.torchserve"]
    where = ["--run-dir", str(folder / "run"), "--ports", *map(str, EAGER_PORTS)]
    subprocess.run(
        [
            "taskset",
            "-c",
            str(SERVER_CPU),
            *ts,
            "start",
            "edge",
            *where,
            "--model-store",
            str(store),
            "--models",
            EAGER,
            "--wait-s",
            "240",
            # TorchServe's stock image classifier runs eager PyTorch: its worker needs the real one
            "--worker-torch",
            "real",
        ],
        check=True,
        env=env,
    )
    try:
        headers = {"Authorization": f"Bearer {inst.keys()['inference']}"}
        result = measure(
            "torchserve_eager",
            inst.inference_url,
            f"/predictions/{EAGER}",
            bodies,
            args,
            paths={"whole_network": None},
            headers=headers,
        )
        result["rss_mb"] = rss_mb(torchserve_processes(inst, "torchserve"))
        return result
    finally:
        subprocess.run([*ts, "stop", "edge", *where], env=env, check=False)


def main(args: argparse.Namespace) -> dict:
    from export.pipeline import Pipeline

    if not Path(args.classifier).is_file():
        raise UserInputError(f"{args.classifier} not found: train the distortion classifier first")
    if args.repeats < 1:
        raise UserInputError(f"--repeats must be at least 1, got {args.repeats}")
    started = time.time()
    result = {
        **pin_client(),
        "paths": {k: f"threshold {v}" for k, v in PATHS.items()},
        "weights": "random early-exit MobileNetV2 + trained classifier (latency does not depend "
        "on the weights)",
        "sizes": {},
    }
    runs = []
    with tempfile.TemporaryDirectory(prefix="peers_") as tmp:
        tmp = Path(tmp)
        stores = {}
        for size in args.sizes:
            store = build_store(
                size,
                tmp / str(size),
                classifier=args.classifier,
                data_root=args.data_root,
                batch_size=args.batch_size,
                max_batch_delay=args.max_batch_delay,
            )
            bodies = image_bodies(size, 64, args.data_root)
            pipeline = Pipeline(store)
            reference = {
                p: pipeline.infer([decode_image(b) for b in bodies[:16]], t) for p, t in PATHS.items()
            }
            stores[size] = (store, bodies, reference)
        for run in progress(range(args.repeats), desc="runs", quiet=True):
            sizes = {}
            for size, (store, bodies, reference) in stores.items():
                print(f"run {run + 1}/{args.repeats}, {size} px:", flush=True)
                pipeline = Pipeline(store)
                r = {"in_process": in_process(pipeline, bodies, args)}
                del pipeline
                r["minimal"] = run_minimal(store, bodies, reference, args)
                r["this_stack"] = run_stack(store, tmp / str(size) / f"run{run}", bodies, reference, args)
                if size == 224:
                    r["torchserve_eager"] = run_eager(tmp / "eager", bodies, args)
                sizes[str(size)] = r
            runs.append(sizes)
            print("  ratios of this run:", ratios(sizes), flush=True)
    result["batching"] = batching(args)
    result["runs"] = runs
    result["sizes"] = median_run(runs)
    result.update(summarise_ratios(runs))
    result["agreement_ok"] = all(
        a["same"] == a["of"]
        for sizes in runs
        for r in sizes.values()
        for c in ("minimal", "this_stack")
        for a in r[c]["agreement"].values()
    )
    result["seconds"] = round(time.time() - started)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "peers.json", result)
    write_csv(result, out / "peers.csv")
    write_markdown(result, out / "peers.md")
    plot(result, out / "peers.png")
    print(
        f"ratios (median of {args.repeats} runs):",
        result["ratios"],
        "| spread:",
        result["ratio_spread"],
        "| answers agree:",
        result["agreement_ok"],
    )
    return result
