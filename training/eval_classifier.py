"""Evaluate the distortion classifier on the test split and on held-out natural photos.

Reports overall accuracy over random types and levels (one seeded draw per test image), accuracy
in every (type, level) cell (every test image at that fixed distortion), and the confusion matrix;
the same for crops of the photos held out from the training pool (`photos`), and every held-out
photo whole, resized as the router resizes a device's frame, at every condition (`frames`: per
condition, per photo, and which expert the router would pick; `frames_jpeg`: the same after a JPEG
round trip, as a device sending JPEG delivers them).

    python -m training.eval_classifier --checkpoint checkpoints/classifier.pt \
        --json docs/results/classifier.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from core import distortions
from core.cli import command_line, progress, run_cli, write_result
from core.errors import UserInputError
from core.manifest import Manifest, artifacts_entry
from training.checkpoints import load_checkpoint
from training.classifier import ClassifierConfig, DistortionClassifier
from training.datasets import DistortedDataset, DistortionPolicy, ImageSource, load_source
from training.photos import PhotoCrops, PhotoFrames, available_photos


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--checkpoint", default="models/torch/classifier.pt")
    p.add_argument(
        "--models",
        default=None,
        help="the ONNX export of this checkpoint (e.g. models/onnx): the classifier "
        "files' hashes are recorded in the result, and its run id must match",
    )
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder path")
    p.add_argument("--data-root", default=None, help="folder of the Fashion-MNIST idx files")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--limit", type=int, default=None, help="use the first N images of the split")
    p.add_argument(
        "--photo-crops",
        type=int,
        default=3000,
        help="crops of the held-out photos per evaluation (0 skips photos)",
    )
    p.add_argument(
        "--frames-jpeg-quality",
        type=int,
        default=90,
        help="the whole frames are evaluated once more after a JPEG round trip at this quality",
    )
    p.add_argument("--seed", type=int, default=1234, help="seed of the distortion draws")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", default=None, help="write the results here as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def load_classifier(path: str | Path) -> tuple[DistortionClassifier, dict]:
    payload = load_checkpoint(path, "distortion_classifier")
    model = DistortionClassifier(ClassifierConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload


@torch.no_grad()
def predict(
    model: torch.nn.Module, loader: DataLoader, device: torch.device | str = "cpu", desc: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted class, true distortion class, level) for every sample of `loader`."""
    model.eval()
    preds, targets, levels = [], [], []
    for x, _, target, level in progress(loader, desc=desc, quiet=desc is None):
        preds.append(model(x.to(device)).argmax(dim=1).cpu().numpy())
        targets.append(target.numpy())
        levels.append(level.numpy())
    return np.concatenate(preds), np.concatenate(targets), np.concatenate(levels)


def confusion(pred: np.ndarray, target: np.ndarray, n: int) -> list[list[int]]:
    """Row = true class, column = predicted class."""
    m = np.zeros((n, n), dtype=int)
    np.add.at(m, (target, pred), 1)
    return m.tolist()


def evaluate_source(
    model: DistortionClassifier, source: ImageSource, *, seed: int, workers: int, label: str, quiet: bool
) -> dict:
    """Random-draw accuracy and confusion, plus accuracy at every fixed (type, level)."""
    classes = list(model.config.classes)

    def run(policy: DistortionPolicy, desc: str):
        ds = DistortedDataset.for_classifier(source, model.config, policy)
        loader = DataLoader(ds, batch_size=256, num_workers=workers)
        return predict(model, loader, desc=None if quiet else desc)

    pred, target, _ = run(DistortionPolicy(types=tuple(classes), seed=seed), f"{label} random draw")
    result = {
        "accuracy": float((pred == target).mean()),
        "n": int(len(pred)),
        "confusion": {"labels": classes, "matrix": confusion(pred, target, len(classes))},
        "per_level": {},
        "per_level_n": {},
    }
    for k, name in enumerate(classes):
        for level in (0, *distortions.get(name).levels) if name != "pristine" else (0,):
            if level == 0 and name != "pristine":
                continue  # level 0 of every type is the pristine cell
            p, _, _ = run(DistortionPolicy(fixed=(name, level), seed=seed + 1), f"{label} {name} {level:g}")
            result["per_level"].setdefault(name, {})[f"{level:g}"] = float((p == k).mean())
            result["per_level_n"].setdefault(name, {})[f"{level:g}"] = int(len(p))
    return result


def cells(classes: list[str]) -> list[tuple[int, str, float]]:
    """(class index, distortion, level) of every evaluated condition: pristine, then each level."""
    out = []
    for k, name in enumerate(classes):
        for level in distortions.get(name).levels if name != "pristine" else (0,):
            out.append((k, name, level))
    return out


def evaluate_frames(
    model: DistortionClassifier,
    frames: PhotoFrames,
    *,
    seed: int,
    quiet: bool,
    jpeg_quality: int | None = None,
) -> dict:
    """Every held-out photo whole (resized as the router resizes a frame) at every condition:
    accuracy per condition, the class (= the expert the router would pick) per photo and condition,
    and how often each expert is picked per condition. With `jpeg_quality`, each distorted frame
    goes through a JPEG round trip at that quality first (what a device sending JPEG delivers)."""
    classes = list(model.config.classes)
    result = {"files": [frames.name(i) for i in range(len(frames))], "per_level": {}, "per_level_n": {}}
    result["jpeg_quality"] = jpeg_quality
    result["per_photo"] = {name: {} for name in result["files"]}
    result["routing"] = {}
    for k, name, level in progress(cells(classes), desc="whole frames", quiet=quiet):
        policy = DistortionPolicy(fixed=(name, level), seed=seed + 2)
        ds = DistortedDataset.for_classifier(frames, model.config, policy, jpeg_quality=jpeg_quality)
        pred, _, _ = predict(model, DataLoader(ds, batch_size=64, num_workers=0))
        cell = f"{level:g}"
        result["per_level"].setdefault(name, {})[cell] = float((pred == k).mean())
        result["per_level_n"].setdefault(name, {})[cell] = int(len(pred))
        result["routing"][f"{name} {cell}"] = {c: int((pred == j).sum()) for j, c in enumerate(classes)}
        for photo, p in zip(result["files"], pred, strict=True):
            result["per_photo"][photo][f"{name} {cell}"] = classes[int(p)]
    return result


def format_table(result: dict, title: str) -> str:
    lines = [f"{title}: accuracy {100 * result['accuracy']:.2f} % over {result['n']} random draws"]
    for name, cells in result["per_level"].items():
        row = "  ".join(f"{lvl:>3}: {100 * acc:6.2f}" for lvl, acc in cells.items())
        lines.append(f"  {name:<15} {row}")
    labels = result["confusion"]["labels"]
    lines.append("  confusion (rows true, columns predicted): " + " / ".join(labels))
    for name, row in zip(labels, result["confusion"]["matrix"], strict=True):
        lines.append(f"    {name:<15} " + " ".join(f"{v:6d}" for v in row))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict:
    started = time.time()
    model, payload = load_classifier(args.checkpoint)
    # checked before the long evaluation: the result must name the files it really used
    artifacts = artifacts_entry(None, [args.checkpoint])
    if args.models is not None:
        manifest = Manifest.load(Path(args.models) / "distortion_classifier.json")
        manifest.verify_files(args.models)
        if manifest.run_id != payload["run_id"]:
            raise UserInputError(
                f"{args.models} holds classifier run {manifest.run_id}, "
                f"{args.checkpoint} is run {payload['run_id']}"
            )
        artifacts.update(models=str(args.models), sha256=dict(manifest.files))
    source = load_source(
        args.data, args.split, limit=args.limit, data_root=args.data_root, seed=payload.get("split_seed", 0)
    )
    result = evaluate_source(
        model, source, seed=args.seed, workers=args.workers, label=args.split, quiet=args.quiet
    )
    result.update({"data": args.data, "split": args.split})
    print(format_table(result, f"{args.data} {args.split}"))
    if args.photo_crops > 0:
        photos = PhotoCrops("heldout", args.photo_crops, size=model.config.image_size, seed=args.seed)
        result["photos"] = evaluate_source(
            model, photos, seed=args.seed, workers=args.workers, label="photos", quiet=args.quiet
        )
        result["photos"]["files"] = [p.name for p in available_photos("heldout")]
        print(format_table(result["photos"], f"held-out photos ({len(photos.files)} files)"))
        frames = PhotoFrames("heldout", size=model.config.image_size)
        result["frames"] = evaluate_frames(model, frames, seed=args.seed, quiet=args.quiet)
        result["frames_jpeg"] = evaluate_frames(
            model, frames, seed=args.seed, quiet=args.quiet, jpeg_quality=args.frames_jpeg_quality
        )
        for key, what in (("frames", ""), ("frames_jpeg", f", as JPEG q{args.frames_jpeg_quality}")):
            print(f"held-out photos, whole frames ({len(frames)} photos{what}), accuracy per condition:")
            for name, row in result[key]["per_level"].items():
                print(f"  {name:<15} " + "  ".join(f"{lvl:>3}: {100 * a:6.2f}" for lvl, a in row.items()))
    result.update(
        {
            "artifacts": artifacts,
            "checkpoint": str(args.checkpoint),
            "run_id": payload["run_id"],
            "train_command": payload.get("command"),
            "train_wall_time_s": payload.get("wall_time_s"),
            "command": command_line(),
            "wall_time_s": round(time.time() - started, 1),
        }
    )
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
