"""Train the whole early-exit MobileNetV2 on pristine images: the conventional early-exit model.

The prototype's recipe as defaults: loss = sum of the four exits' cross-entropies, Adam with
lr 1.5e-4 for the backbone and 1e-2 for the exits, weight decay 5e-4, cosine schedule with
T = 10 epochs, batch 32, early stopping on the validation loss (patience 10). ImageNet weights
are loaded when torchvision can fetch them (`--weights imagenet`); otherwise a clear warning and
random initialisation. After training, one temperature per exit is fitted on the validation split
and stored with the checkpoint, with ECE before and after.

    python -m training.train_backbone --out checkpoints/backbone.pt
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

import torch

from core.cli import command_line, run_cli
from core.imaging import Preprocessing
from training import engine
from training.checkpoints import new_run_id, save_checkpoint
from training.datasets import DistortionPolicy, load_source
from training.early_exit import EarlyExitMobileNetV2, ExitConfig


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", default="checkpoints/backbone.pt", help="checkpoint to write")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument(
        "--exit-fractions",
        type=float,
        nargs=3,
        default=(0.25, 0.5, 0.75),
        help="place the branches where cumulative conv MACs reach these fractions",
    )
    p.add_argument(
        "--exit-after",
        type=int,
        nargs=3,
        default=None,
        help="explicit block indices of the branches (overrides --exit-fractions)",
    )
    p.add_argument(
        "--weights",
        choices=("imagenet", "none"),
        default="imagenet",
        help="initial backbone weights; falls back to random when unavailable",
    )
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr-backbone", type=float, default=1.5e-4)
    engine.add_common_args(p)
    return p


def main(args: argparse.Namespace) -> dict:
    engine.check_common_args(args)
    started = time.time()
    torch.manual_seed(args.seed)
    device = engine.device_from_arg(args.device)
    train_src = load_source(
        args.data, "train", seed=args.split_seed, limit=args.train_limit, data_root=args.data_root
    )
    val_src = load_source(
        args.data, "val", seed=args.split_seed, limit=args.val_limit, data_root=args.data_root
    )
    config = ExitConfig(
        num_classes=len(train_src.classes),
        input_size=args.input_size,
        width_mult=args.width_mult,
        exit_fractions=tuple(args.exit_fractions),
        exit_after=tuple(args.exit_after) if args.exit_after else None,
    )
    model = _build(config, args.weights).to(device)
    preprocessing = Preprocessing(size=args.input_size)
    pristine = DistortionPolicy(fixed=("pristine", 0), seed=args.seed)
    train_loader = engine.image_loader(
        train_src,
        pristine,
        preprocessing,
        batch_size=args.batch_size,
        workers=args.workers,
        shuffle=True,
        seed=args.seed,
    )
    val_loader = engine.image_loader(
        val_src, pristine, preprocessing, batch_size=256, workers=args.workers, shuffle=False
    )
    optimizer = torch.optim.Adam(
        [
            {"params": model.backbone_parameters(), "lr": args.lr_backbone},
            {"params": model.head_parameters(), "lr": args.lr_heads},
        ],
        weight_decay=args.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.cosine_t)
    engine.log(
        f"training the early-exit MobileNetV2 on {len(train_src)} pristine {args.data} images "
        f"at {args.input_size} px, exits after features{list(model.exit_after)}, {device}"
    )
    history, calibration, val_accuracy = engine.fit_and_calibrate(
        model,
        args,
        train_loader=train_loader,
        val_loader=val_loader,
        optimizer=optimizer,
        scheduler=scheduler,
        device=device,
    )
    engine.log(
        "temperatures per exit: "
        + " ".join(f"{t:.3f}" for t in calibration["temperatures"])
        + " | ECE before "
        + " ".join(f"{e:.3f}" for e in calibration["ece_before"])
        + " | after "
        + " ".join(f"{e:.3f}" for e in calibration["ece_after"])
    )
    payload = engine.base_payload(
        model.cpu(),
        role="backbone",
        class_names=train_src.classes,
        preprocessing=preprocessing,
        run_id=new_run_id(),
        command=command_line(),
        started=started,
        args=args,
    )
    payload.update(
        {
            "distortion": "pristine",
            "expert": "conventional",
            "history": history,
            "calibration": calibration,
            "temperatures": calibration["temperatures"],
            "val_accuracy": val_accuracy,
        }
    )
    save_checkpoint(args.out, payload)
    engine.log(f"saved {args.out} ({payload['wall_time_s']:.0f} s)")
    return payload


def _build(config: ExitConfig, weights: str) -> EarlyExitMobileNetV2:
    if weights == "none":
        return EarlyExitMobileNetV2(config)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # an unreachable weights host must not hang the run
    try:
        return EarlyExitMobileNetV2(config, pretrained=True)
    finally:
        socket.setdefaulttimeout(previous)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
