"""Bias a classifier network's decision towards the answers that cost least: per-class logit offsets
chosen on validation data to minimise the accuracy a misroute loses.

A routing error's cost is not a label error's. Sending a sigma-20 noisy frame to the pristine
expert loses about 7 points of accuracy, sending a clean frame to the noise expert about half a
point, and a sigma-5 noise to either nothing (`export.misroute` measures every pair:
docs/results/misroute.json). A network trained for plain accuracy splits its doubt evenly; this
step adds one offset per class to its logits (baked into the output layer's bias, so nothing changes
on the serving side) so that, on validation images sent on the given wires, the expected accuracy
lost to misroutes is smallest, while no condition's share of right labels on that data falls by more
than `--max-label-loss` points (the unconstrained optimum gives up clean frames freely, since a
clean frame sent to the noise expert loses only half a point; the labels are what the classifier's
own figures report). Offsets are searched on a grid relative to the first class; of the allowed
offsets within `--tolerance` of the least cost the smallest (in the sum of their absolute values)
wins, so a flat cost keeps the network as it was.

How much evidence survives depends on the encoder's quality: below about quality 85 a JPEG
encoder quantises much of sigma-20 noise away, and the best offsets there differ from those at
quality 90 and up. So the wires below `--low-quality-below` are fitted as a band of their own; its
offsets (relative to the baked ones) travel in the checkpoint (`route_bias.low_quality`) and the
export's manifest (`preprocessing.quality_offsets`), and the serving side adds them when the body's
quantisation table shows such a quality (`core.imaging.jpeg_quality`, `core.manifest.band_offsets`).

Validation data, never the evaluation's: the Fashion-MNIST validation split and whole frames and
crops of the training pool's photos (the held-out photos stay for `training.eval_classifier`), at
every distortion type and level.

    python -m training.route_bias --checkpoint checkpoints/classifier_jpeg_tuned.pt \\
        --out models/torch/classifier_jpeg.pt
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from core.cli import command_line, parse_wires, progress, run_cli
from core.errors import UserInputError
from core.imaging import ImageWire
from training.checkpoints import save_checkpoint
from training.datasets import DistortedDataset, DistortionPolicy, load_source
from training.eval_classifier import cells, load_classifier
from training.photos import PhotoCrops


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="the classifier network to bias")
    p.add_argument("--out", required=True, help="the biased checkpoint to write")
    p.add_argument(
        "--wires",
        nargs="+",
        default=["jpeg:90", "jpeg:90:444", "jpeg:98", "jpeg:75", "jpeg:75:444", "jpeg:60"],
        help="validation wires; those below --low-quality-below are fitted as their own band",
    )
    p.add_argument(
        "--low-quality-below",
        type=int,
        default=85,
        help="JPEG quality below which the network gets offsets of its own, applied by the serving "
        "side from the body's quantisation table (0: one set of offsets for every wire)",
    )
    p.add_argument(
        "--costs", default="docs/results/misroute.json", help="each expert's accuracy per condition"
    )
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--val-limit", type=int, default=600, help="Fashion-MNIST validation images")
    p.add_argument("--photo-views", type=int, default=200, help="whole frames, and as many crops")
    p.add_argument("--grid", default="-1:2:0.25", help="offsets searched per class: LO:HI:STEP")
    p.add_argument("--tolerance", type=float, default=1e-4, help="accuracy points treated as equal")
    p.add_argument(
        "--max-label-loss",
        type=float,
        default=1.0,
        help="points of right labels any one condition may lose on the validation data",
    )
    p.add_argument("--seed", type=int, default=77, help="seed of the distortion draws")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quiet", action="store_true")
    return p


def misroute_costs(path: str, classes: list[str]) -> dict[str, np.ndarray]:
    """Condition ('gaussian_noise 20') -> accuracy points lost when each class's expert answers
    it instead of the condition's own expert."""
    try:
        table = json.loads(open(path).read())["accuracy"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserInputError(f"--costs {path}: not a misroute result ({exc})") from None
    costs = {}
    for condition, by_expert in table.items():
        missing = [c for c in (condition.split()[0], *classes) if c not in by_expert]
        if missing:
            raise UserInputError(
                f"--costs {path}: no accuracy of the {', '.join(missing)} expert on {condition}: "
                f"re-run python -m export.misroute on an export with every class's expert"
            )
        own = by_expert[condition.split()[0]]
        costs[condition] = np.array([100 * (own - by_expert[c]) for c in classes])
    return costs


def parse_grid(text: str) -> np.ndarray:
    try:
        lo, hi, step = (float(v) for v in text.split(":"))
    except ValueError:
        raise UserInputError(f"--grid: expected LO:HI:STEP, got {text!r}") from None
    if step <= 0 or hi < lo:
        raise UserInputError(f"--grid: expected LO <= HI and STEP > 0, got {text!r}")
    return np.round(np.arange(lo, hi + step / 2, step), 6)


def best_offsets(
    logits: np.ndarray,
    conditions: list[str],
    costs: dict[str, np.ndarray],
    grid: np.ndarray,
    *,
    classes: list[str],
    tolerance: float,
    max_label_loss: float,
) -> tuple[np.ndarray, float, float]:
    """(offsets per class, first class 0; mean cost with them; mean cost without), searched on
    `grid` for every class but the first, among the offsets that cost no condition more than
    `max_label_loss` points of right labels (a condition 'gaussian_noise 20' is labelled
    gaussian_noise)."""
    row_cost = np.stack([costs[c] for c in conditions])  # N x classes: what each answer loses
    own = np.array([classes.index(c.split()[0]) for c in conditions])
    names = np.array(conditions)
    groups = [np.flatnonzero(names == c) for c in dict.fromkeys(conditions)]

    def score(offsets: np.ndarray) -> tuple[float, np.ndarray]:
        pred = (logits + offsets).argmax(axis=1)
        right = pred == own
        return float(row_cost[np.arange(len(pred)), pred].mean()), np.array([right[g].mean() for g in groups])

    k = logits.shape[1]
    base_cost, base_labels = score(np.zeros(k))
    allowed = []
    for o in itertools.product(grid, repeat=k - 1):
        offsets = np.array((0.0, *o))
        cost, labels = score(offsets)
        if 100 * (base_labels - labels).max() <= max_label_loss + 1e-9:
            allowed.append((cost, float(np.abs(offsets).sum()), offsets))
    if not allowed:  # the grid lacks zero offsets
        raise UserInputError("--grid: no offsets keep the labels; include 0 in the grid")
    least = min(c for c, _, _ in allowed)
    cost, _, chosen = min((a for a in allowed if a[0] <= least + tolerance), key=lambda a: a[1])
    return chosen, cost, base_cost


@torch.no_grad()
def validation_logits(model, args, wires) -> tuple[np.ndarray, list[str]]:
    """Logits and condition names of every validation image, condition and wire."""
    sources = {
        "fashion-mnist val": load_source(args.data, "val", limit=args.val_limit, data_root=args.data_root),
        "training-photo frames": PhotoCrops(
            "train", args.photo_views, size=model.config.image_size, seed=args.seed, frame_fraction=1.0
        ),
        "training-photo crops": PhotoCrops(
            "train", args.photo_views, size=model.config.image_size, seed=args.seed + 1
        ),
    }
    logits, conditions = [], []
    todo = [(w, c, s) for w in wires for c in cells(list(model.config.classes)) for s in sources.values()]
    for wire, (_, name, level), source in progress(todo, desc="validation logits", quiet=args.quiet):
        policy = DistortionPolicy(fixed=(name, level), seed=args.seed)
        ds = DistortedDataset.for_classifier(source, model.config, policy, wire=wire)
        for x, _, _, _ in DataLoader(ds, batch_size=256, num_workers=args.workers):
            logits.append(model(x).numpy())
            conditions += [f"{name} {level:g}"] * len(x)
    return np.concatenate(logits), conditions


def split_bands(wires: list[ImageWire], below: int) -> tuple[list[ImageWire], list[ImageWire]]:
    """(wires whose offsets are baked into the network, wires of the low-quality band): JPEG wires
    encoded below quality `below` form the band (`below` 0: no band)."""
    low = [w for w in wires if not w.lossless and w.quality < below]
    return [w for w in wires if w not in low], low


def fit(model, args, wires, costs, grid, classes) -> tuple[np.ndarray, float, float, int]:
    """(offsets, mean cost with them, mean cost without, validation images) on `wires`."""
    logits, conditions = validation_logits(model, args, wires)
    missing = sorted(set(conditions) - set(costs))
    if missing:
        raise UserInputError(f"--costs {args.costs} has no row for {', '.join(missing)}")
    offsets, cost, before = best_offsets(
        logits,
        conditions,
        costs,
        grid,
        classes=classes,
        tolerance=args.tolerance,
        max_label_loss=args.max_label_loss,
    )
    return offsets, cost, before, len(conditions)


def main(args: argparse.Namespace) -> dict:
    started = time.time()
    wires = parse_wires(args.wires)
    grid = parse_grid(args.grid)
    baked_wires, low_wires = split_bands(wires, args.low_quality_below)
    if not baked_wires:
        raise UserInputError(
            f"--wires: every wire is below --low-quality-below {args.low_quality_below}; "
            "give at least one at or above it"
        )
    model, payload = load_classifier(args.checkpoint)
    classes = list(model.config.classes)
    costs = misroute_costs(args.costs, classes)
    offsets, cost, before, n = fit(model, args, baked_wires, costs, grid, classes)
    record = {
        "offsets": {c: float(o) for c, o in zip(classes, offsets, strict=True)},
        "wires": [str(w) for w in baked_wires],
        "validation_images": n,
        "mean_cost_points": {"before": before, "after": cost},
    }
    if low_wires:
        # fitted from the unbiased network like the baked offsets; stored relative to them
        low, low_cost, low_before, low_n = fit(model, args, low_wires, costs, grid, classes)
        record["low_quality"] = {
            "below": args.low_quality_below,
            "offsets": [float(v) for v in low - offsets],
        }
        record["low_quality_fit"] = {
            "offsets": {c: float(o) for c, o in zip(classes, low, strict=True)},
            "wires": [str(w) for w in low_wires],
            "validation_images": low_n,
            "mean_cost_points": {"before": low_before, "after": low_cost},
        }
    record |= {
        "max_label_loss_points": args.max_label_loss,
        "costs": args.costs,
        "from_checkpoint": str(args.checkpoint),
        "command": command_line(),
        "wall_time_s": round(time.time() - started, 1),
    }
    state = model.with_logit_offsets(offsets).state_dict()
    save_checkpoint(args.out, {**payload, "state_dict": state, "route_bias": record})
    band = record.get("low_quality_fit")
    print(
        f"offsets {record['offsets']} (on {', '.join(record['wires'])}): mean misroute cost on {n} "
        f"validation images {before:.4f} -> {cost:.4f} accuracy points"
        + (
            f"; below quality {args.low_quality_below} ({', '.join(band['wires'])}) offsets "
            f"{band['offsets']}: {band['mean_cost_points']['before']:.4f} -> "
            f"{band['mean_cost_points']['after']:.4f}"
            if band
            else ""
        )
        + f"; wrote {args.out}",
        file=sys.stderr,
    )
    return record


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
