"""Train the distortion classifier on spectra of distorted images.

Each sample is an image (Fashion-MNIST, or a random crop of a natural photo with probability
`--photo-fraction`) with a uniformly random distortion class (`--classes`, by default every routed
type: pristine / gaussian_blur / gaussian_noise / motion_blur) at a uniformly random level of it,
drawn anew every epoch, and arrives as a device would send it: lossless, or (`--jpeg-fraction`)
after a JPEG round trip at a drawn quality and chroma subsampling. Validation uses a fixed draw over
the Fashion-MNIST validation split and crops of the training photos (the held-out photos are kept
for `training.eval_classifier`). Adam with a cosine learning-rate schedule, cross-entropy, early
stopping on validation accuracy; the best epoch is saved (after every improvement, so an interrupted
run leaves a usable checkpoint) with its config, class order and a run id.

    python -m training.train_classifier --out checkpoints/classifier.pt
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, WeightedRandomSampler

from core import distortions
from core.cli import command_line, progress, run_cli
from core.errors import UserInputError
from core.spectrum import DEFAULT_SPECTRA, parse_spectra
from training.checkpoints import new_run_id, save_checkpoint
from training.classifier import ClassifierConfig, DistortionClassifier, initial_state, widened
from training.datasets import DistortedDataset, DistortionPolicy, load_source
from training.engine import add_runtime_args, device_from_arg, epoch_would_overrun
from training.eval_classifier import predict
from training.photos import PhotoCrops


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder path")
    p.add_argument("--data-root", default=None, help="folder of the Fashion-MNIST idx files")
    p.add_argument("--out", default="checkpoints/classifier.pt", help="checkpoint to write")
    p.add_argument(
        "--image-size",
        type=int,
        default=64,
        help="side of the images the distortions act on (the experts' input size)",
    )
    p.add_argument(
        "--input-size",
        type=int,
        default=192,
        help="side of the classifier's spectrum; the image is resized to it first. Twice "
        "the image size keeps an empty band whose minimum anchors the min-max "
        "scaling, so a noise floor is not normalised away (see README)",
    )
    p.add_argument(
        "--spectra",
        default=",".join(DEFAULT_SPECTRA),
        help="comma-separated spectra the classifier sees, one input channel each, in this order: "
        "'luma' (CollabAR's), 'chroma' (tells fine detail from noise on whole frames; see README), "
        "'luma_native' and 'anisotropy' (show which way a blur runs; core/spectrum.py)",
    )
    p.add_argument(
        "--photo-fraction",
        type=float,
        default=0.5,
        help="share of samples that are natural-photo views (0 disables photos)",
    )
    p.add_argument(
        "--frame-fraction",
        type=float,
        default=0.3,
        help="share of the photo views that are whole frames resized as the router resizes a "
        "device's frame (the rest are random crops)",
    )
    p.add_argument(
        "--jpeg-fraction",
        type=float,
        default=0.5,
        help="share of samples passed through a JPEG round trip after the distortion, as a "
        "device's JPEG frame arrives (the rest arrive lossless, as PNG)",
    )
    p.add_argument(
        "--jpeg-quality",
        default="60-98",
        help="range LO-HI of the JPEG qualities drawn for those samples (cameras and apps: 70-95)",
    )
    p.add_argument(
        "--jpeg-444-fraction",
        type=float,
        default=0.25,
        help="share of the JPEG samples encoded with full-resolution colour (4:4:4); the rest "
        "4:2:0, as OpenCV and most cameras encode",
    )
    p.add_argument(
        "--lossless-only",
        nargs="*",
        default=["gaussian_noise:5", "gaussian_noise:10"],
        metavar="TYPE:LEVEL",
        help="distortion levels the natural-photo views are never sent as JPEG at: on a detailed "
        "photo the encoder removes most of their evidence (weak noise), and learning them from "
        "such JPEG frames teaches the classifier to call a detailed clean JPEG frame noisy (a "
        "misroute at these levels costs about nothing); the smooth Fashion-MNIST images keep them",
    )
    p.add_argument(
        "--bottleneck",
        type=int,
        default=4,
        help="channels of the classifier's 1x1 bottleneck (CollabAR: 1); more let it weigh luma "
        "against chroma evidence per frequency band",
    )
    p.add_argument(
        "--hidden",
        type=int,
        default=0,
        help="units of a hidden layer beside the linear read-out (0: none, CollabAR's): it lets the "
        "network combine frequency bands, e.g. a drop along one direction only (motion blur at a "
        "random angle); a checkpoint without one (--init) grows it, answering as before at first",
    )
    p.add_argument(
        "--classes",
        default=",".join(distortions.DISTORTION_CLASSES),
        help="comma-separated distortion types the classifier tells apart, in output order (each "
        "registered in core.distortions; the router sends each to the expert named after it)",
    )
    p.add_argument(
        "--init",
        default=None,
        help="start from this classifier checkpoint (same input size and bottleneck) instead of a "
        "random initialisation: fine-tuning. Its classes may be a prefix of --classes (the output "
        "rows of the added types start from a fresh initialisation) and its spectra a prefix of "
        "--spectra (the added channels' weights start at zero)",
    )
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--samples-per-epoch", type=int, default=20000)
    p.add_argument("--train-limit", type=int, default=None, help="use the first N training images")
    p.add_argument("--val-limit", type=int, default=1500, help="validation images (Fashion-MNIST)")
    p.add_argument("--val-photo-crops", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--patience", type=int, default=8, help="epochs without improvement before stopping")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-time budget: no epoch starts that would end past it",
    )
    p.add_argument(
        "--restarts",
        type=int,
        default=3,
        help="fresh initialisations to try if the narrow bottleneck dies",
    )
    add_runtime_args(p)
    return p


def _check_args(args: argparse.Namespace) -> None:
    if not 0.0 <= args.photo_fraction <= 1.0:
        raise UserInputError("--photo-fraction must be in [0, 1]")
    if not 0.0 <= args.frame_fraction <= 1.0:
        raise UserInputError("--frame-fraction must be in [0, 1]")
    for name in ("jpeg_fraction", "jpeg_444_fraction"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise UserInputError(f"--{name.replace('_', '-')} must be in [0, 1]")
    args.jpeg_quality = parse_quality_range(args.jpeg_quality)
    args.classes = parse_classes(args.classes)
    args.lossless_only = parse_levels(args.lossless_only)
    for name in (
        "epochs",
        "samples_per_epoch",
        "batch_size",
        "input_size",
        "image_size",
        "patience",
        "bottleneck",
    ):
        if getattr(args, name) <= 0:
            raise UserInputError(f"--{name.replace('_', '-')} must be positive")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise UserInputError("--max-minutes must be positive")
    if args.samples_per_epoch < args.batch_size:  # incomplete batches are dropped
        raise UserInputError(
            f"--samples-per-epoch {args.samples_per_epoch} is below --batch-size {args.batch_size}: "
            "an epoch would train on nothing"
        )
    args.spectra = parse_spectra(args.spectra)
    if args.input_size < 13:
        raise UserInputError("--input-size must be at least 13 for the classifier's convolutions")


def parse_quality_range(text: str) -> tuple[int, int]:
    """'60-98' as (60, 98), or a UserInputError naming --jpeg-quality."""
    lo, sep, hi = str(text).partition("-")
    if not (sep and lo.strip().isdigit() and hi.strip().isdigit() and 1 <= int(lo) <= int(hi) <= 100):
        raise UserInputError(f"--jpeg-quality: expected a range LO-HI within 1-100, got {text!r}")
    return int(lo), int(hi)


def parse_classes(text: str) -> tuple[str, ...]:
    """'pristine,gaussian_blur' as a tuple of registered types, pristine first, no repeats."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        distortions.get(name)  # an unknown type raises its own one-line error
    if len(set(names)) != len(names) or len(names) < 2 or names[0] != "pristine":
        raise UserInputError(
            f"--classes: expected distinct registered types, pristine first and at least one "
            f"distortion, got {text!r}"
        )
    return names


def parse_levels(texts: list[str]) -> tuple[tuple[str, float], ...]:
    """['gaussian_noise:5'] as (('gaussian_noise', 5.0),), or a UserInputError naming --lossless-only."""
    out = []
    for text in texts:
        name, _, level = text.partition(":")
        try:
            value = float(level)
        except ValueError:
            raise UserInputError(f"--lossless-only: {text!r} is not TYPE:LEVEL") from None
        if value not in distortions.get(name).levels:  # an unknown type raises its own error
            raise UserInputError(f"--lossless-only: {value:g} is not a level of {name}")
        out.append((name, value))
    return tuple(out)


def build_datasets(args: argparse.Namespace) -> tuple[list, np.ndarray, ConcatDataset]:
    """(train dataset, sampler weights, validation dataset) as described in the module docstring."""
    size = args.image_size
    policy = functools.partial(DistortionPolicy, types=args.classes)
    spec = {
        "classes": args.classes,
        "representation": "spectrum",
        "spectrum_size": args.input_size,
        "spectra": args.spectra,
        "jpeg_fraction": args.jpeg_fraction,
        "jpeg_quality": args.jpeg_quality,
        "jpeg_444_fraction": args.jpeg_444_fraction,
    }
    # weak noise on a detailed photo does not survive the encoder; on an upsampled Fashion-MNIST
    # image (smooth, no fine detail) it does, and the classifier must still learn it there
    photo_spec = {**spec, "lossless_only": args.lossless_only}
    train_src = load_source(
        args.data, "train", seed=args.split_seed, limit=args.train_limit, data_root=args.data_root
    )
    val_src = load_source(
        args.data, "val", seed=args.split_seed, limit=args.val_limit, data_root=args.data_root
    )
    train_parts = [DistortedDataset(train_src, size=size, **spec, policy=policy(seed=args.seed))]
    val_parts = [DistortedDataset(val_src, size=size, **spec, policy=policy(seed=args.seed + 1))]
    weights = [np.full(len(train_src), (1.0 - args.photo_fraction) / len(train_src))]
    if args.photo_fraction > 0:
        # as many distinct crops per epoch as samples drawn from them
        n_crops = max(1, int(args.samples_per_epoch * args.photo_fraction))
        photos = PhotoCrops("train", n_crops, size=size, seed=args.seed, frame_fraction=args.frame_fraction)
        train_parts.append(
            DistortedDataset(photos, size=size, **photo_spec, policy=policy(seed=args.seed + 2))
        )
        weights.append(np.full(n_crops, args.photo_fraction / n_crops))
        val_photos = PhotoCrops(
            "train", args.val_photo_crops, size=size, seed=args.seed + 100, frame_fraction=args.frame_fraction
        )
        val_parts.append(
            DistortedDataset(val_photos, size=size, **photo_spec, policy=policy(seed=args.seed + 3))
        )
    return train_parts, np.concatenate(weights), ConcatDataset(val_parts)


def main(args: argparse.Namespace) -> dict:
    _check_args(args)
    started = time.time()
    device = device_from_arg(args.device)
    train_parts, weights, val_set = build_datasets(args)
    config = ClassifierConfig(
        input_size=args.input_size,
        dropout=args.dropout,
        image_size=args.image_size,
        spectra=args.spectra,
        bottleneck=args.bottleneck,
        hidden=args.hidden,
        classes=args.classes,
    )
    val_loader = DataLoader(val_set, batch_size=256, num_workers=args.workers)
    print(
        f"training the distortion classifier on {len(train_parts[0])} {args.data} images"
        f"{' + natural-photo crops' if len(train_parts) > 1 else ''}, "
        f"{args.samples_per_epoch} samples/epoch, spectra {'+'.join(args.spectra)}, "
        f"validation {len(val_set)} samples, {device}",
        file=sys.stderr,
    )
    run_id = new_run_id()
    init = initial_state(args.init, config)

    def checkpoint(state: dict, epoch: int, acc: float, history: list, attempt: int) -> dict:
        """Write the best model so far: an interrupted run still leaves a usable checkpoint."""
        payload = {
            "kind": "distortion_classifier",
            "config": config.to_dict(),
            "class_names": list(config.classes),
            "state_dict": {k: v.detach().cpu().clone() for k, v in state.items()},
            "run_id": run_id,
            "best_epoch": epoch,
            "attempts": attempt + 1,
            "val_accuracy": acc,
            "history": history,
            "data": args.data,
            "photo_fraction": args.photo_fraction,
            "frame_fraction": args.frame_fraction,
            "jpeg_fraction": args.jpeg_fraction,
            "jpeg_quality": list(args.jpeg_quality),
            "jpeg_444_fraction": args.jpeg_444_fraction,
            "lossless_only": [f"{name}:{level:g}" for name, level in args.lossless_only],
            "init": None if init is None else {"checkpoint": str(args.init), "run_id": init[1]},
            "split_seed": args.split_seed,
            "command": command_line(),
            "wall_time_s": round(time.time() - started, 1),
        }
        save_checkpoint(args.out, payload)
        return payload

    # CollabAR's narrow 1x1 conv feeds everything through a few ReLUs, which can die and
    # collapse the classifier to one class. Detect it after each epoch and start over from a
    # fresh initialisation (up to --restarts times) instead of training a dead network.
    for attempt in range(args.restarts + 1):
        torch.manual_seed(args.seed + 7919 * attempt)
        model = DistortionClassifier(config)
        if init is not None:
            model.load_state_dict(widened(init[0], model.state_dict()))
        model = model.to(device)
        outcome = _fit(
            model,
            args,
            train_parts,
            weights,
            val_set,
            val_loader,
            device,
            on_best=lambda *a, attempt=attempt: checkpoint(*a, attempt),
        )
        if outcome is not None:
            break
        print(
            f"the bottleneck died (attempt {attempt + 1}); restarting from a new initialisation",
            file=sys.stderr,
        )
    else:
        raise UserInputError(
            f"the classifier's bottleneck died in all {args.restarts + 1} attempts: "
            f"lower --lr or change --seed"
        )
    best_acc, best_state, best_epoch, history = outcome
    payload = checkpoint(best_state, best_epoch, best_acc, history, attempt)  # full history, wall time
    print(
        f"saved {args.out}: best epoch {best_epoch}, val accuracy {best_acc:.4f}, "
        f"{payload['wall_time_s']:.0f} s",
        file=sys.stderr,
    )
    return payload


def _fit(model, args, train_parts, weights, val_set, val_loader, device, on_best):
    """Train with early stopping, calling `on_best(state, epoch, acc, history)` on every new best;
    returns (best val acc, best state, best epoch, history), or None if the bottleneck died."""
    train_set = ConcatDataset(train_parts)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    loss_fn = nn.CrossEntropyLoss()
    best_acc, best_state, best_epoch, history, stale = -1.0, None, -1, [], 0
    fit_started = time.time()
    for epoch in range(args.epochs):
        if history and epoch_would_overrun(fit_started, history[-1]["seconds"], args.max_minutes):
            print(
                f"stopping after {epoch} epochs: another would overrun the {args.max_minutes:g}-min budget",
                file=sys.stderr,
            )
            break
        epoch_started = time.time()
        for part in train_parts:
            part.set_epoch(epoch)
            if hasattr(part.source, "set_epoch"):
                part.source.set_epoch(epoch)
        sampler = WeightedRandomSampler(
            torch.as_tensor(weights),
            args.samples_per_epoch,
            generator=torch.Generator().manual_seed(args.seed * 1000 + epoch),
        )
        loader = DataLoader(
            train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers, drop_last=True
        )
        model.train()
        total_loss, seen = 0.0, 0
        bar = progress(loader, desc=f"epoch {epoch + 1}/{args.epochs}", quiet=args.quiet)
        for x, _, target, _ in bar:
            x, target = x.to(device), target.to(device)
            loss = loss_fn(model(x), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(x)
            seen += len(x)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        schedule.step()
        pred, target, _ = predict(model, val_loader, device)
        val_acc = float((pred == target).mean())
        alive = _bottleneck_alive(model, val_set, device)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": total_loss / max(seen, 1),
                "val_accuracy": val_acc,
                "bottleneck_alive": alive,
                "seconds": round(time.time() - epoch_started, 1),
            }
        )
        print(
            f"epoch {epoch + 1:3d}  loss {total_loss / max(seen, 1):.4f}  val acc {val_acc:.4f}"
            f"  live bottleneck {alive:.2f}",
            file=sys.stderr,
        )
        if alive == 0.0:
            return None
        if val_acc > best_acc:
            best_acc, best_state, best_epoch, stale = val_acc, copy.deepcopy(model.state_dict()), epoch + 1, 0
            on_best(best_state, best_epoch, best_acc, history)
        else:
            stale += 1
            if stale >= args.patience:
                print(f"early stop: no improvement for {args.patience} epochs", file=sys.stderr)
                break
    return best_acc, best_state, best_epoch, history


@torch.no_grad()
def _bottleneck_alive(model: DistortionClassifier, val_set, device: torch.device) -> float:
    """Fraction of validation samples whose bottleneck has any non-zero activation."""
    model.eval()
    xs = torch.stack([val_set[i][0] for i in range(min(64, len(val_set)))]).to(device)
    return float((model.bottleneck(xs).flatten(1).amax(dim=1) > 0).float().mean())


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
