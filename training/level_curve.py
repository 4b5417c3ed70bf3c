"""How much a distortion costs the shipped models, level by level: the measurement behind a type's levels.

A new distortion type's levels should run from "costs the conventional model a little" to "costs it
a lot" (the paper's Gaussian blur and noise do). This command applies the type at candidate levels
(any values its function takes, not only the registered ones) to test images at the models' input
size and answers them with the exported experts through the in-process serving pipeline
(`export.pipeline`), each expert forced, at one p_tar; plus where the distortion classifier routes
them. Pick the registered levels from the curve it prints.

    python -m training.level_curve --distortion motion_blur --levels 3 5 7 9 11 13 15 17 19 21 25 \\
        --experts conventional gaussian_blur --json docs/results/motion_blur_levels.json
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from core import distortions
from core.cli import command_line, progress, run_cli, write_json
from core.errors import UserInputError
from core.imaging import resize
from export.pipeline import Pipeline
from training.datasets import load_source


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--distortion", required=True, help="a type registered in core.distortions")
    p.add_argument("--levels", type=float, nargs="+", required=True, help="candidate levels to measure")
    p.add_argument("--models", default="models/onnx", help="an export (python -m export) or model store")
    p.add_argument(
        "--experts", nargs="+", default=["conventional"], help="experts of the export to answer with"
    )
    p.add_argument("--p-tar", type=float, default=0.8, help="exit threshold")
    p.add_argument("--limit", type=int, default=400, help="test images (a seeded random subset)")
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder path")
    p.add_argument("--data-root", default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset and of the draws")
    p.add_argument("--json", default=None, help="write the curve here")
    p.add_argument("--quiet", action="store_true")
    return p


def main(args: argparse.Namespace) -> dict:
    started = time.time()
    entry = distortions.get(args.distortion)
    if any(level <= 0 for level in args.levels):
        raise UserInputError("--levels: every candidate must be positive (level 0 is the pristine image)")
    pipeline = Pipeline(args.models, threads=2)
    unknown = [e for e in args.experts if e not in pipeline.edge]
    if unknown:
        raise UserInputError(
            f"{args.models} holds no expert {', '.join(unknown)} (known: {', '.join(pipeline.edge)})"
        )
    source = load_source(args.data, "test", data_root=args.data_root)
    rng = np.random.default_rng(args.seed)
    index = rng.choice(len(source), size=min(args.limit, len(source)), replace=False)
    size = pipeline.classifier.manifest.preprocessing["size"]
    images = [resize(source.image(int(i)), size) for i in index]
    labels = np.array([source.label(int(i)) for i in index])
    rows = []
    for level in progress([0.0, *args.levels], desc=args.distortion, quiet=args.quiet):
        draws = np.random.default_rng([args.seed, int(level * 1000)])
        batch = images if level == 0 else [entry.fn(im, level, draws) for im in images]
        row = {"level": level}
        for expert in args.experts:
            answers = pipeline.infer(batch, args.p_tar, expert=expert)
            row[expert] = float(np.mean([a["class"] == y for a, y in zip(answers, labels, strict=True)]))
        routes = [a["distortion"] for a in pipeline.infer(batch, args.p_tar)]
        row["routed_to"] = {d: routes.count(d) for d in pipeline.distortions}
        rows.append(row)
        if not args.quiet:
            print(
                f"{args.distortion} {level:g}: "
                + "  ".join(f"{e} {100 * row[e]:.1f} %" for e in args.experts)
                + f"  routed {row['routed_to']}",
                file=sys.stderr,
            )
    result = {
        "distortion": args.distortion,
        "registered_levels": list(entry.levels),
        "p_tar": args.p_tar,
        "n_images": len(images),
        "size": size,
        "artifacts": pipeline.artifacts,
        "rows": rows,
        "command": command_line(),
        "wall_time_s": round(time.time() - started, 1),
    }
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
