"""Training and inference loops shared by `train_backbone` and `train_expert`.

The loss is the weighted sum of the cross-entropies of the four exits (the prototype's recipe).
`collect_logits` runs a loader through the network once and keeps every exit's logits, so that
calibration and evaluation can replay any threshold without recomputing the network.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from core.cli import progress
from core.errors import UserInputError
from core.imaging import ImageWire, Preprocessing
from training.calibration import calibrate_exits
from training.checkpoints import load_checkpoint
from training.datasets import DistortedDataset, DistortionPolicy, ImageSource
from training.early_exit import NUM_EXITS, EarlyExitMobileNetV2, ExitConfig

CHECKPOINT_KIND = "early_exit"


def device_from_arg(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError("--device cuda asked for, but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserInputError(f"unknown --device {name!r} (cpu, cuda, cuda:N or auto)") from None


def image_loader(
    source: ImageSource,
    policy: DistortionPolicy,
    preprocessing: Preprocessing,
    *,
    batch_size: int,
    workers: int,
    shuffle: bool,
    seed: int = 0,
    wire: ImageWire | None = None,
) -> DataLoader:
    ds = DistortedDataset(
        source,
        size=preprocessing.size,
        policy=policy,
        representation="image",
        preprocessing=preprocessing,
        wire=wire,
    )
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        drop_last=shuffle,
    )


def exit_loss(logits: list[torch.Tensor], target: torch.Tensor, weights: tuple[float, ...]) -> torch.Tensor:
    return sum(w * nn.functional.cross_entropy(z, target) for w, z in zip(weights, logits, strict=True))


def train_epoch(
    model: EarlyExitMobileNetV2,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    weights: tuple[float, ...],
    device: torch.device,
    *,
    desc: str,
    quiet: bool,
    freeze_backbone_bn: bool = False,
) -> float:
    """One pass over `loader`; with `freeze_backbone_bn` the stages stay in eval mode (BN frozen)."""
    model.train()
    if freeze_backbone_bn:
        model.stages.eval()
    total, seen = 0.0, 0
    bar = progress(loader, desc=desc, quiet=quiet)
    for x, y, _, _ in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = exit_loss(model(x), y, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(x)
        seen += len(x)
        bar.set_postfix(loss=f"{total / seen:.3f}")
    return total / max(seen, 1)


@torch.no_grad()
def collect_logits(
    model: EarlyExitMobileNetV2, loader: DataLoader, device: torch.device, *, desc: str | None = None
) -> tuple[list[np.ndarray], np.ndarray]:
    """Every exit's logits (a list of K arrays N x C) and the labels, in loader order."""
    model.eval()
    per_exit: list[list[np.ndarray]] = [[] for _ in range(NUM_EXITS)]
    labels = []
    for x, y, _, _ in progress(loader, desc=desc, quiet=desc is None):
        for k, z in enumerate(model(x.to(device))):
            per_exit[k].append(z.float().cpu().numpy())
        labels.append(y.numpy())
    return [np.concatenate(z) for z in per_exit], np.concatenate(labels)


def exit_accuracies(logits: list[np.ndarray], labels: np.ndarray) -> list[float]:
    return [float((z.argmax(axis=1) == labels).mean()) for z in logits]


def backbone_hash(model: EarlyExitMobileNetV2) -> str:
    """SHA-256 over the stages' parameters and buffers: equal hashes mean one shared backbone."""
    h = hashlib.sha256()
    for name, tensor in model.stages.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_early_exit(path: str, *, role: str | None = None) -> tuple[EarlyExitMobileNetV2, dict]:
    """Model and payload of an early-exit checkpoint (`role` 'backbone' or 'expert' if given)."""
    payload = load_checkpoint(path, CHECKPOINT_KIND)
    if role is not None and payload.get("role") != role:
        raise UserInputError(f"{path} is a {payload.get('role')} checkpoint, expected a {role}")
    model = EarlyExitMobileNetV2(ExitConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload


def base_payload(
    model: EarlyExitMobileNetV2,
    *,
    role: str,
    class_names: tuple[str, ...],
    preprocessing: Preprocessing,
    run_id: str,
    command: str,
    started: float,
    args: argparse.Namespace,
) -> dict:
    return {
        "kind": CHECKPOINT_KIND,
        "role": role,
        "config": model.config.to_dict(),
        "exit_after": list(model.exit_after),
        "class_names": list(class_names),
        "preprocessing": preprocessing.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "backbone_hash": backbone_hash(model),
        "run_id": run_id,
        "command": command,
        "data": args.data,
        "split_seed": args.split_seed,
        "wall_time_s": round(time.time() - started, 1),
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def epoch_would_overrun(fit_started: float, last_epoch_s: float, max_minutes: float | None) -> bool:
    """True when another epoch as long as the last one would end past the wall-time budget."""
    return max_minutes is not None and time.time() - fit_started + last_epoch_s > 60 * max_minutes


def fit(
    model: EarlyExitMobileNetV2,
    *,
    train_loader: DataLoader,
    val_loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    epochs: int,
    patience: int,
    weights: tuple[float, ...],
    device: torch.device,
    quiet: bool,
    freeze_backbone_bn: bool = False,
    on_epoch_start=None,
    max_minutes: float | None = None,
) -> tuple[dict, list[dict]]:
    """Train with early stopping on the validation loss; returns (best state dict, history).

    `max_minutes` bounds the wall time: no epoch starts that the last one's duration says would
    end past the budget, so the best state is always a whole epoch's.
    """
    fit_started = time.time()
    if len(train_loader.dataset) < train_loader.batch_size:
        raise UserInputError(
            f"{len(train_loader.dataset)} training images are fewer than one batch "
            f"of {train_loader.batch_size}: lower --batch-size"
        )
    best_loss, best_state, history, stale = float("inf"), None, [], 0
    for epoch in range(epochs):
        if history and epoch_would_overrun(fit_started, history[-1]["seconds"], max_minutes):
            log(f"stopping after {epoch} epochs: another would overrun the {max_minutes:g}-min budget")
            break
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        started = time.time()
        train_loss = train_epoch(
            model,
            train_loader,
            optimizer,
            weights,
            device,
            desc=f"epoch {epoch + 1}/{epochs}",
            quiet=quiet,
            freeze_backbone_bn=freeze_backbone_bn,
        )
        scheduler.step()
        logits, labels = collect_logits(model, val_loader, device)
        val_loss = float(exit_loss([torch.from_numpy(z) for z in logits], torch.from_numpy(labels), weights))
        accs = exit_accuracies(logits, labels)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_accuracy": accs,
                "seconds": round(time.time() - started, 1),
            }
        )
        log(
            f"epoch {epoch + 1:3d}  train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
            f"val acc per exit {' '.join(f'{a:.3f}' for a in accs)}  ({history[-1]['seconds']:.0f} s)"
        )
        if val_loss < best_loss:
            best_loss, stale = val_loss, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= patience:
                log(f"early stop: validation loss did not improve for {patience} epochs")
                break
    if best_state is None:
        raise UserInputError("the validation loss was never finite (diverged): lower the learning rates")
    return best_state, history


def fit_and_calibrate(
    model: EarlyExitMobileNetV2,
    args: argparse.Namespace,
    *,
    train_loader: DataLoader,
    val_loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    device: torch.device,
    **options,
) -> tuple[list[dict], dict, list[float]]:
    """`fit` with the training commands' shared options (--epochs, --patience, --exit-weights,
    --quiet, --max-minutes), then the best state loaded and each exit's temperature fitted on the
    validation split; returns (history, calibration, validation accuracy per exit).
    `options`: the rest of `fit`'s keywords."""
    best_state, history = fit(
        model,
        train_loader=train_loader,
        val_loader=val_loader,
        optimizer=optimizer,
        scheduler=scheduler,
        epochs=args.epochs,
        patience=args.patience,
        weights=tuple(args.exit_weights),
        device=device,
        quiet=args.quiet,
        max_minutes=args.max_minutes,
        **options,
    )
    model.load_state_dict(best_state)
    logits, labels = collect_logits(model, val_loader, device)
    return history, calibrate_exits(logits, labels), exit_accuracies(logits, labels)


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Data, schedule and runtime options shared by the backbone and expert trainers."""
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder path")
    p.add_argument("--data-root", default=None, help="folder of the Fashion-MNIST idx files")
    p.add_argument("--train-limit", type=int, default=None, help="use the first N training images")
    p.add_argument("--val-limit", type=int, default=None, help="use the first N validation images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr-heads", type=float, default=1e-2, help="learning rate of the four exits")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--cosine-t", type=int, default=10, help="period of the cosine schedule (epochs)")
    p.add_argument("--patience", type=int, default=10, help="early stopping on the validation loss")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-time budget: no epoch starts that would end past it",
    )
    p.add_argument(
        "--exit-weights",
        type=float,
        nargs=NUM_EXITS,
        default=(1.0,) * NUM_EXITS,
        help="weights of the four exits' cross-entropies in the loss",
    )
    add_runtime_args(p)


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """Workers, seeds, device and progress options of every training CLI."""
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and distortion draws")
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the train/val(/test) split; recorded so evaluation uses the same split",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def check_common_args(args: argparse.Namespace) -> None:
    for name in ("epochs", "batch_size", "cosine_t"):
        if getattr(args, name) <= 0:
            raise UserInputError(f"--{name.replace('_', '-')} must be positive")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise UserInputError("--max-minutes must be positive")
    if any(w < 0 for w in args.exit_weights) or sum(args.exit_weights) == 0:
        raise UserInputError("--exit-weights must be non-negative and not all zero")
