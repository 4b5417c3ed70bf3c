"""Evaluate the distortion classifier on the test split and on held-out natural photos, per wire.

For every image wire in `--wires` (`png`, `jpeg:QUALITY`: how the device sends the distorted
image), reports overall accuracy over random types and levels (one seeded draw per test image),
accuracy in every (type, level) cell (every test image at that fixed distortion), and the confusion
matrix; the same for crops of the photos held out from the training pool (`photos`). For every wire
in `--frame-wires`, every held-out photo whole, resized as the router resizes a device's frame, at
every condition (`frames`: per condition, per photo, and which expert the router would pick).
Results sit under `wires[WIRE]`. Where a second network answers JPEG bodies (`--jpeg-checkpoint`,
as the router picks it by the body's format), the JPEG wires are evaluated with it.

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
from core.cli import command_line, parse_wires, progress, run_cli, write_result
from core.errors import UserInputError
from core.imaging import ImageWire
from core.manifest import Manifest, artifacts_entry, band_offsets, network_for_format
from training.checkpoints import jpeg_classifier_path, load_checkpoint
from training.classifier import ClassifierConfig, DistortionClassifier
from training.datasets import DistortedDataset, DistortionPolicy, ImageSource, load_source
from training.photos import PhotoCrops, PhotoFrames, available_photos


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--checkpoint", default="models/torch/classifier.pt")
    p.add_argument(
        "--jpeg-checkpoint",
        default=None,
        help="the network that answers JPEG bodies (the router picks it by the body's format); "
        "default: classifier_jpeg.pt beside --checkpoint when it exists; 'none': one for all",
    )
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
        "--wires",
        nargs="+",
        default=["png", "jpeg:90"],
        help="wires the test split and the photo crops are sent on: png, jpeg:QUALITY (4:2:0) "
        "or jpeg:QUALITY:444",
    )
    p.add_argument(
        "--frame-wires",
        nargs="+",
        default=["png", "jpeg:90", "jpeg:75"],
        help="wires the whole held-out frames are sent on",
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


def load_classifiers(path: str | Path, jpeg_path: str | Path | None) -> dict[str, tuple]:
    """{'any': (model, payload)}, plus 'jpeg' when a network for JPEG bodies is given; refused
    unless both take the same input and answer the same classes."""
    out = {"any": load_classifier(path)}
    if jpeg_path is not None:
        out["jpeg"] = load_classifier(jpeg_path)
        for field in ("input_size", "image_size", "spectra", "classes"):
            theirs, ours = (getattr(out[k][0].config, field) for k in ("jpeg", "any"))
            if theirs != ours:
                raise UserInputError(f"{jpeg_path}: its {field} is {theirs}, {path}'s is {ours}")
    return out


def for_wire(classifiers: dict[str, tuple], wire: ImageWire) -> tuple:
    """(model, payload) that answers images sent on `wire`, by the serving side's rules: the
    network kept for the wire's format (`core.manifest.network_for_format`), with its low-quality
    offsets when the wire's JPEG quality falls in that band (`core.manifest.band_offsets`)."""
    formats = list(classifiers)
    fmt = formats[network_for_format(formats, wire.format)]
    model, payload = entry = classifiers[fmt]
    offsets = band_offsets(payload.get("route_bias", {}).get("low_quality"), wire.quality)
    return entry if offsets is None else (model.with_logit_offsets(offsets), payload)


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
    model: DistortionClassifier,
    source: ImageSource,
    *,
    seed: int,
    workers: int,
    label: str,
    quiet: bool,
    wire: ImageWire | None = None,
) -> dict:
    """Random-draw accuracy and confusion, plus accuracy at every fixed (type, level), every image
    sent on `wire` (default lossless)."""
    classes = list(model.config.classes)

    def run(policy: DistortionPolicy, desc: str):
        ds = DistortedDataset.for_classifier(source, model.config, policy, wire=wire)
        loader = DataLoader(ds, batch_size=256, num_workers=workers)
        return predict(model, loader, desc=None if quiet else desc)

    pred, target, _ = run(DistortionPolicy(types=tuple(classes), seed=seed), f"{label} random draw")
    result = {
        "accuracy": float((pred == target).mean()),
        "n": int(len(pred)),
        "confusion": {"labels": classes, "matrix": confusion(pred, target, len(classes))},
        "per_level": {},
        "per_level_n": {},
        "per_level_routes": {},
    }
    for k, name in enumerate(classes):
        for level in (0, *distortions.get(name).levels) if name != "pristine" else (0,):
            if level == 0 and name != "pristine":
                continue  # level 0 of every type is the pristine cell
            p, _, _ = run(DistortionPolicy(fixed=(name, level), seed=seed + 1), f"{label} {name} {level:g}")
            result["per_level"].setdefault(name, {})[f"{level:g}"] = float((p == k).mean())
            result["per_level_n"].setdefault(name, {})[f"{level:g}"] = int(len(p))
            result["per_level_routes"].setdefault(name, {})[f"{level:g}"] = {
                c: int((p == j).sum()) for j, c in enumerate(classes)
            }
    result["fallback_confusion"] = fallback_confusion(result["per_level_routes"], classes)
    return result


def fallback_confusion(routes: dict, classes: list[str]) -> dict[str, float]:
    """{'a->b': share}: for each type `a` and its fallback `b` (`core.distortions`), both ways,
    the share of images of `a` from its second level up that the classifier called `b`. Types
    close enough to share an expert are the ones worth telling apart; the first level of each is
    too faint to hold to it."""
    out = {}
    for a, b in distortions.fallbacks(classes).items():
        for src, dst in ((a, b), (b, a)):
            cells = [routes[src][f"{level:g}"] for level in distortions.get(src).levels[1:]]
            out[f"{src}->{dst}"] = sum(c[dst] for c in cells) / max(1, sum(sum(c.values()) for c in cells))
    return out


def cells(classes: list[str]) -> list[tuple[int, str, float]]:
    """(class index, distortion, level) of every evaluated condition (`core.distortions.cells`)."""
    return [(classes.index(name), name, level) for name, level in distortions.cells(classes)]


def evaluate_frames(
    model: DistortionClassifier,
    frames: PhotoFrames,
    *,
    seed: int,
    quiet: bool,
    wire: ImageWire | None = None,
) -> dict:
    """Every held-out photo whole (resized as the router resizes a frame) at every condition:
    accuracy per condition, the class (= the expert the router would pick) per photo and condition,
    and how often each expert is picked per condition. Each distorted frame is sent on `wire`
    (default lossless): a JPEG wire decodes what the device's encoder left of it."""
    classes = list(model.config.classes)
    result = {"files": [frames.name(i) for i in range(len(frames))], "per_level": {}, "per_level_n": {}}
    result["wire"] = str(wire or ImageWire())
    result["per_photo"] = {name: {} for name in result["files"]}
    result["routing"] = {}
    for k, name, level in progress(cells(classes), desc="whole frames", quiet=quiet):
        policy = DistortionPolicy(fixed=(name, level), seed=seed + 2)
        ds = DistortedDataset.for_classifier(frames, model.config, policy, wire=wire)
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
    wires = parse_wires(args.wires)
    frame_wires = parse_wires(args.frame_wires, "--frame-wires")
    jpeg_path = jpeg_classifier_path(args.checkpoint, args.jpeg_checkpoint)
    classifiers = load_classifiers(args.checkpoint, jpeg_path)
    model, payload = classifiers["any"]
    run_ids = [p["run_id"] for _, p in classifiers.values()]
    # checked before the long evaluation: the result must name the files it really used
    artifacts = artifacts_entry(None, [args.checkpoint, *([jpeg_path] if jpeg_path else [])])
    if args.models is not None:
        manifest = Manifest.load(Path(args.models) / "distortion_classifier.json")
        manifest.verify_files(args.models)
        shipped = manifest.preprocessing.get("run_ids", [manifest.run_id])
        if shipped != run_ids:
            raise UserInputError(
                f"{args.models} holds classifier runs {shipped}, the checkpoints are {run_ids}"
            )
        artifacts.update(models=str(args.models), sha256=dict(manifest.files))
    source = load_source(
        args.data, args.split, limit=args.limit, data_root=args.data_root, seed=payload.get("split_seed", 0)
    )
    result = {"data": args.data, "split": args.split, "wires": {}}
    for wire in wires:
        net, net_payload = for_wire(classifiers, wire)
        common = {"seed": args.seed, "workers": args.workers, "quiet": args.quiet, "wire": wire}
        entry = evaluate_source(net, source, label=f"{args.split} {wire}", **common)
        entry["run_id"] = net_payload["run_id"]
        print(format_table(entry, f"{args.data} {args.split}, sent as {wire}"))
        if args.photo_crops > 0:
            photos = PhotoCrops("heldout", args.photo_crops, size=model.config.image_size, seed=args.seed)
            entry["photos"] = evaluate_source(net, photos, label=f"photos {wire}", **common)
            entry["photos"]["files"] = [p.name for p in available_photos("heldout")]
            print(
                format_table(entry["photos"], f"held-out photos ({len(photos.files)} files), sent as {wire}")
            )
        result["wires"][str(wire)] = entry
    if args.photo_crops > 0:
        frames = PhotoFrames("heldout", size=model.config.image_size)
        for wire in frame_wires:
            net, net_payload = for_wire(classifiers, wire)
            entry = result["wires"].setdefault(str(wire), {"run_id": net_payload["run_id"]})
            entry["frames"] = evaluate_frames(net, frames, seed=args.seed, quiet=args.quiet, wire=wire)
            print(
                f"held-out photos, whole frames ({len(frames)} photos), sent as {wire}, "
                "accuracy per condition:"
            )
            for name, row in entry["frames"]["per_level"].items():
                print(f"  {name:<15} " + "  ".join(f"{lvl:>3}: {100 * a:6.2f}" for lvl, a in row.items()))
    result.update(
        {
            "artifacts": artifacts,
            "checkpoint": str(args.checkpoint),
            "jpeg_checkpoint": jpeg_path,
            "run_id": payload["run_id"],
            "run_ids": run_ids,
            "train_command": payload.get("command"),
            "train_wall_time_s": payload.get("wall_time_s"),
            "jpeg_train_command": classifiers["jpeg"][1].get("command") if jpeg_path else None,
            "command": command_line(),
            "wall_time_s": round(time.time() - started, 1),
        }
    )
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
