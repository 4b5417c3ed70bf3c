"""What the serving stack costs: router + TorchServe vs the in-process pipeline, same images.

    python -m benchmarks.overhead --size 224 --json docs/results/overhead.json

Builds an early-exit model at `--size` px (random weights unless `--backbone` gives a trained one
of that size: latency does not depend on the weights) with three expert head-sets and the trained
distortion classifier, exports and archives them, starts an edge and a cloud TorchServe and the
router (its own process) on loopback test ports, warms the stack with `--warmup-seconds` of
4-client load per path (discarded), and then, image by image and alternating so noise
hits both alike, times:

- in-process: decode + `export.pipeline.Pipeline.infer` (classifier, edge stages, cloud segment);
- stack: HTTP POST to the router, which calls the classifier and the edge expert on the edge
  TorchServe and, when offloading, the cloud TorchServe.

Two paths, forced by the threshold: `edge_exit` (threshold 0.01: the first branch answers) and
`offload` (threshold 1.0: no branch can answer, the split tensor goes to the cloud). Reports p50 /
p95 per path and side, their ratio, the router's per-step timings, and the RSS of every process.
Bounded: `--requests` per path, `--max-seconds` overall; everything started is stopped.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import requests

from benchmarks.lib.live import LiveSystem
from benchmarks.lib.loadgen import LoadClient
from benchmarks.lib.synthetic import build_store
from core.cli import command_line, progress, write_json
from core.errors import UserInputError
from core.imaging import decode_image, encode_image
from export.pipeline import Pipeline
from training.datasets import DistortionPolicy, distorted_image, load_source

PATHS = {"edge_exit": 0.01, "offload": 1.0}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--size", type=int, default=224, help="model input size (px)")
    p.add_argument("--backbone", default=None, help="a trained backbone of --size px (optional)")
    p.add_argument("--classifier", default="models/torch/classifier.pt")
    p.add_argument("--requests", type=int, default=150, help="timed requests per path and side")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument(
        "--warmup-seconds",
        type=float,
        default=5.0,
        help="4-client load on the stack before each path, discarded: the stack is "
        "measured warm (TorchServe's JVM compiles its hot paths under load)",
    )
    p.add_argument("--router-port", type=int, default=18200)
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="TorchServe batch size of the archives (default: export.archive's)",
    )
    p.add_argument(
        "--max-batch-delay",
        type=int,
        default=None,
        help="TorchServe batching delay in ms (default: export.archive's)",
    )
    p.add_argument("--data-root", default=None)
    p.add_argument("--max-seconds", type=float, default=900)
    p.add_argument("--json", default=None)
    p.add_argument("--quiet", action="store_true")
    return p


def percentiles(values: list[float]) -> dict:
    return {
        "p50_ms": round(float(np.median(values)), 3),
        "p95_ms": round(float(np.percentile(values, 95)), 3),
        "n": len(values),
    }


def main(args: argparse.Namespace) -> dict:
    if args.requests < 5 or args.size < 32:
        raise UserInputError("--requests must be at least 5 and --size at least 32")
    if not Path(args.classifier).is_file():
        raise UserInputError(f"{args.classifier} not found: train the distortion classifier first")
    stop_at = time.time() + args.max_seconds
    result = {
        "command": command_line(),
        "size": args.size,
        "torchserve_batching": {
            "batch_size": args.batch_size or "export.archive default",
            "max_batch_delay_ms": args.max_batch_delay
            if args.max_batch_delay is not None
            else "export.archive default",
        },
        "weights": "trained" if args.backbone else "random (latency does not depend on weights)",
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores",
        "paths": {},
    }
    with tempfile.TemporaryDirectory(prefix="overhead_") as tmp:
        tmp = Path(tmp)
        store = build_store(
            args.size,
            tmp,
            classifier=args.classifier,
            backbone=args.backbone,
            batch_size=args.batch_size,
            max_batch_delay=args.max_batch_delay,
            data_root=args.data_root,
        )
        with LiveSystem(
            store, tmp / "run", router_port=args.router_port, router_options=["--deadline-ms", "30000"]
        ) as system:
            url = system.url
            pipeline = Pipeline(tmp / "store")
            source = load_source(
                "fashion-mnist", "test", limit=args.requests + args.warmup, data_root=args.data_root
            )
            policy = DistortionPolicy(fixed=("pristine", 0), seed=0)
            bodies = [
                encode_image(distorted_image(source, i, args.size, policy)[0], "png")
                for i in range(len(source))
            ]
            session = requests.Session()
            for path, threshold in PATHS.items():
                inproc, stack, steps = [], [], {}
                if args.warmup_seconds > 0:
                    LoadClient(
                        url, bodies, clients=4, params={"threshold": threshold}, keep_answers=False
                    ).run(seconds=args.warmup_seconds, max_requests=20000)
                for i, body in enumerate(progress(bodies, desc=path, quiet=args.quiet)):
                    if time.time() > stop_at:
                        break
                    t = time.perf_counter()
                    ref = pipeline.infer([decode_image(body)], threshold)[0]
                    t_in = time.perf_counter() - t
                    t = time.perf_counter()
                    r = session.post(
                        f"{url}/v1/classify", data=body, params={"threshold": threshold}, timeout=60
                    )
                    t_stack = time.perf_counter() - t
                    if r.status_code != 200:
                        raise RuntimeError(f"router answered {r.status_code}: {r.text[:200]}")
                    got = r.json()
                    if (got["exit"], got["class"]) != (ref["exit"], ref["class"]):
                        raise RuntimeError(f"stack and pipeline disagree on image {i}: {got} vs {ref}")
                    if i < args.warmup:
                        continue
                    inproc.append(t_in * 1000)
                    stack.append(t_stack * 1000)
                    for k, v in got["timings_ms"].items():
                        steps.setdefault(k, []).append(v)
                ip, st = percentiles(inproc), percentiles(stack)
                result["paths"][path] = {
                    "threshold": threshold,
                    "in_process": ip,
                    "stack": st,
                    "p50_ratio": round(st["p50_ms"] / ip["p50_ms"], 2),
                    "p95_ratio": round(st["p95_ms"] / ip["p95_ms"], 2),
                    "router_steps_p50_ms": {k: round(float(np.median(v)), 3) for k, v in steps.items()},
                    "exit": got["exit"],
                    "offloaded": got["offloaded"],
                }
                row = result["paths"][path]
                print(
                    f"{path:9s} in-process p50 {ip['p50_ms']:7.2f} ms p95 {ip['p95_ms']:7.2f} | stack p50 "
                    f"{st['p50_ms']:7.2f} ms p95 {st['p95_ms']:7.2f} | ratio p50 x{row['p50_ratio']:.2f}"
                    f"  router steps p50 {row['router_steps_p50_ms']}"
                )
            result["rss_mb"] = system.rss_mb()
            result["rss_mb"]["benchmark_client_with_pipeline"] = round(
                psutil.Process().memory_info().rss / 2**20, 1
            )
    key = f"_{args.size}" if args.size != 224 else ""
    result[f"edge_exit_p50_ratio{key}"] = result["paths"]["edge_exit"]["p50_ratio"]
    result[f"offload_p50_ratio{key}"] = result["paths"]["offload"]["p50_ratio"]
    print(f"RSS (MB): {result['rss_mb']}")
    if args.json:
        write_json(args.json, result)
    return result
