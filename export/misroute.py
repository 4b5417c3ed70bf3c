"""`python -m export.misroute`: what a misroute costs, each expert on each distortion.

    python -m export.misroute --exported models/onnx --json docs/results/misroute.json

The classifier picks the expert; when it is wrong (a clean frame called noisy, a light blur called
pristine), the image is answered by another distortion's expert. This runs the test split, at every
condition (pristine, each blur and noise level), through every expert with the exported segments
and the served rule (`export.pipeline.Pipeline`, expert forced, fixed p_tar), so the accuracy of
each expert on each condition sits side by side: the diagonal is routing done right, the rest is
what a misroute costs.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from core import distortions
from core.cli import command_line, progress, run_cli, write_json
from core.errors import UserInputError
from export.pipeline import Pipeline


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--exported", default="models/onnx", help="an export folder or a model store")
    p.add_argument("--data-root", default=None)
    p.add_argument("--limit", type=int, default=2000, help="test images per condition")
    p.add_argument("--p-tar", type=float, default=0.8)
    p.add_argument("--experts", nargs="+", default=None, help="default: the classifier's classes")
    p.add_argument("--json", default=None)
    p.add_argument("--quiet", action="store_true")
    return p


def main(args: argparse.Namespace) -> dict:
    from training.datasets import DistortionPolicy, distorted_image, load_source

    if not 0 < args.p_tar <= 1:
        raise UserInputError("--p-tar must be in (0, 1]")
    started = time.time()
    pipeline = Pipeline(args.exported, threads=2)
    names = args.experts or list(pipeline.distortions)
    unknown = [n for n in names if n not in pipeline.edge]
    if unknown:
        raise UserInputError(
            f"no expert {', '.join(unknown)} in {args.exported} (have: {', '.join(pipeline.edge)})"
        )
    source = load_source("fashion-mnist", "test", limit=args.limit, data_root=args.data_root)
    labels = np.array([source.label(i) for i in range(len(source))])
    size = pipeline.edge[names[0]].preprocessing.size
    table: dict[str, dict[str, float]] = {}
    offload: dict[str, dict[str, float]] = {}
    for name, level in progress(distortions.cells(), desc="conditions", quiet=args.quiet):
        policy = DistortionPolicy(fixed=(name, level), seed=31)
        images = [distorted_image(source, i, size, policy)[0] for i in range(len(source))]
        cell = f"{name} {level:g}"
        for expert in names:
            answers = pipeline.infer(images, args.p_tar, expert=expert)
            table.setdefault(cell, {})[expert] = round(
                float(np.mean(np.array([a["class"] for a in answers]) == labels)), 4
            )
            offload.setdefault(cell, {})[expert] = round(float(np.mean([a["offloaded"] for a in answers])), 4)
    result = {
        "command": command_line(),
        "p_tar": args.p_tar,
        "n_per_condition": int(len(labels)),
        "accuracy": table,
        "offload_rate": offload,
        "artifacts": pipeline.artifacts,
        "wall_time_s": round(time.time() - started, 1),
    }
    print("accuracy (rows: condition, columns: expert answering)")
    print("  " + " ".join(f"{e:>15}" for e in names))
    for cell, row in table.items():
        print(f"  {cell:<18}" + " ".join(f"{100 * row[e]:15.2f}" for e in names))
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
