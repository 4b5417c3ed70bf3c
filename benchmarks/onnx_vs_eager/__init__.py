"""onnxruntime vs PyTorch eager for the edge path and the cloud segment, side by side in one run.

    python -m benchmarks.onnx_vs_eager --json docs/results/onnx_vs_eager.json

At each input size (64 px: the trained model from `--backbone`; 224 px: the same architecture,
randomly initialised, since speed does not depend on the weights) both runtimes get the same
module, batch 1, one thread (`torch.set_num_threads(1)`, onnxruntime `intra_op_num_threads=1`),
and are timed alternately, round by round, so machine noise hits both alike. The edge path is
what the edge does when no branch exits: stages 0-2 and the three branch heads; the cloud
segment is stage 3 and the final exit. Reports median and p90 milliseconds, the ratio
eager / onnxruntime, and the ONNX file sizes.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from core.cli import command_line, progress, write_json
from core.errors import UserInputError
from export.segments import OPSET, export_module, ort_session
from training.early_exit import EarlyExitMobileNetV2, ExitConfig
from training.engine import load_early_exit


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.onnx_vs_eager",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--backbone",
        default="models/torch/backbone.pt",
        help="trained model for the 64-px row ('none': random weights there too)",
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    p.add_argument("--rounds", type=int, default=200, help="timed runs per runtime and path")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--json", default=None)
    p.add_argument("--quiet", action="store_true")
    return p


def model_for(size: int, args) -> EarlyExitMobileNetV2:
    if args.backbone != "none" and Path(args.backbone).is_file():
        model, payload = load_early_exit(args.backbone)
        if payload["config"]["input_size"] == size:
            return model
        config = ExitConfig.from_dict({**payload["config"], "input_size": size})
    else:
        config = ExitConfig(input_size=size)
    torch.manual_seed(0)
    return EarlyExitMobileNetV2(config).eval()


class EdgePath(torch.nn.Module):
    """Stages 0-2 with their branch heads: the edge's work when no branch is confident."""

    def __init__(self, model):
        super().__init__()
        self.stages, self.heads = model.stages[:3], model.heads[:3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for stage, head in zip(self.stages, self.heads, strict=True):
            x = stage(x)
            outs.append(head(x))
        return x, *outs


class CloudPath(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.stage, self.head = model.stages[3], model.heads[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(x))


def time_pair(
    module, session: ort.InferenceSession, x: torch.Tensor, rounds: int, warmup: int, desc: str, quiet: bool
) -> dict:
    feed = {session.get_inputs()[0].name: x.numpy()}
    eager, onnx = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            module(x)
            session.run(None, feed)
        for _ in progress(range(rounds), desc=desc, quiet=quiet):
            t = time.perf_counter()
            module(x)
            eager.append(time.perf_counter() - t)
            t = time.perf_counter()
            session.run(None, feed)
            onnx.append(time.perf_counter() - t)
    e, o = np.median(eager) * 1e3, np.median(onnx) * 1e3
    return {
        "eager_ms": round(float(e), 3),
        "onnxruntime_ms": round(float(o), 3),
        "eager_p90_ms": round(float(np.percentile(eager, 90) * 1e3), 3),
        "onnxruntime_p90_ms": round(float(np.percentile(onnx, 90) * 1e3), 3),
        "speedup": round(float(e / o), 2),
    }


def main(args: argparse.Namespace) -> dict:
    if args.rounds < 5 or args.warmup < 0:
        raise UserInputError("--rounds must be at least 5 and --warmup non-negative")
    torch.set_num_threads(1)
    result = {
        "command": command_line(),
        "batch": 1,
        "threads": 1,
        "opset": OPSET,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp:
        for size in args.sizes:
            model = model_for(size, args)
            edge, cloud = EdgePath(model).eval(), CloudPath(model).eval()
            x = torch.randn(1, 3, size, size)
            with torch.no_grad():
                split = edge(x)[0]
            row = {
                "weights": "trained" if size == 64 and args.backbone != "none" else "random",
                "split_shape": list(split.shape[1:]),
            }
            for name, module, example in (("edge", edge, x), ("cloud", cloud, split)):
                path = Path(tmp) / f"{name}_{size}.onnx"
                export_module(module, example, path, input_name="input", output_name="out0")
                row[name] = time_pair(
                    module,
                    ort_session(path),
                    example,
                    args.rounds,
                    args.warmup,
                    f"{name} {size}px",
                    args.quiet,
                )
                row[name]["onnx_bytes"] = path.stat().st_size
            result["sizes"][str(size)] = row
            result[f"edge_speedup_{size}"] = row["edge"]["speedup"]
            result[f"cloud_speedup_{size}"] = row["cloud"]["speedup"]
            print(
                f"{size:4d} px  edge  eager {row['edge']['eager_ms']:7.2f} ms  onnxruntime "
                f"{row['edge']['onnxruntime_ms']:7.2f} ms  x{row['edge']['speedup']:.2f}   "
                f"cloud eager {row['cloud']['eager_ms']:7.2f} ms  onnxruntime "
                f"{row['cloud']['onnxruntime_ms']:7.2f} ms  x{row['cloud']['speedup']:.2f}   "
                f"files {row['edge']['onnx_bytes'] / 1e6:.1f} + {row['cloud']['onnx_bytes'] / 1e6:.1f} MB"
            )
    if args.json:
        write_json(args.json, result)
    return result
