"""Fine-tune an expert: the four exits of a trained backbone, on one distortion type.

The backbone (all four stages) stays frozen, BatchNorm statistics included, so every expert shares
the conventional model's backbone bit for bit and ships only its head-set; `--adapt-bn` lets the
BN statistics follow the distorted data instead (the expert then ships its own backbone segments).
Each batch is half pristine, half distorted at a uniformly random level of the type (on average:
each sample draws pristine or the distortion with equal odds). The exits start from the
backbone's. After training, one temperature per exit is fitted on the validation split, with the
same mix of distortions.

    python -m training.train_expert --backbone checkpoints/backbone.pt --distortion gaussian_blur \
        --out checkpoints/expert_gaussian_blur.pt
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from core import distortions
from core.cli import command_line, run_cli
from core.errors import UserInputError
from core.imaging import Preprocessing
from training import engine
from training.checkpoints import new_run_id, save_checkpoint
from training.datasets import DistortionPolicy, load_source


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--backbone", default="checkpoints/backbone.pt", help="checkpoint written by training.train_backbone"
    )
    p.add_argument(
        "--distortion",
        required=True,
        help=f"distortion type of the expert, one registered in core.distortions: "
        f"{', '.join(distortions.REGISTRY)}",
    )
    p.add_argument("--out", default=None, help="default: checkpoints/expert_<distortion>.pt")
    p.add_argument(
        "--adapt-bn",
        action="store_true",
        help="let BatchNorm statistics follow the distorted data (own backbone)",
    )
    p.add_argument("--epochs", type=int, default=10)
    engine.add_common_args(p)
    return p


def expert_policy(distortion: str, seed: int) -> DistortionPolicy:
    """Half pristine, half `distortion` at a random level (all pristine for the pristine expert)."""
    types = ("pristine",) if distortion == "pristine" else ("pristine", distortion)
    return DistortionPolicy(types=types, seed=seed)


def main(args: argparse.Namespace) -> dict:
    engine.check_common_args(args)
    # a registered type: the classifier learns to route to it when trained with it in --classes
    distortions.get(args.distortion)  # unknown: one-line error listing the known types
    out = args.out or f"checkpoints/expert_{args.distortion}.pt"
    started = time.time()
    torch.manual_seed(args.seed)
    device = engine.device_from_arg(args.device)
    model, backbone = engine.load_early_exit(args.backbone, role="backbone")
    preprocessing = Preprocessing.from_dict(backbone["preprocessing"])
    if args.split_seed != backbone.get("split_seed", 0):
        raise UserInputError(
            f"--split-seed {args.split_seed} differs from the backbone's "
            f"({backbone.get('split_seed', 0)}): validation would overlap its training set"
        )
    train_src = load_source(
        args.data, "train", seed=args.split_seed, limit=args.train_limit, data_root=args.data_root
    )
    val_src = load_source(
        args.data, "val", seed=args.split_seed, limit=args.val_limit, data_root=args.data_root
    )
    if tuple(train_src.classes) != tuple(backbone["class_names"]):
        raise UserInputError(f"{args.data} has other classes than the backbone was trained on")
    for p in model.stages.parameters():
        p.requires_grad_(False)
    model = model.to(device)
    train_loader = engine.image_loader(
        train_src,
        expert_policy(args.distortion, args.seed),
        preprocessing,
        batch_size=args.batch_size,
        workers=args.workers,
        shuffle=True,
        seed=args.seed,
    )
    val_loader = engine.image_loader(
        val_src,
        expert_policy(args.distortion, args.seed + 1),
        preprocessing,
        batch_size=256,
        workers=args.workers,
        shuffle=False,
    )
    optimizer = torch.optim.Adam(model.head_parameters(), lr=args.lr_heads, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.cosine_t)

    def new_epoch(epoch: int) -> None:  # fresh distortion draws every epoch
        train_loader.dataset.set_epoch(epoch)

    engine.log(
        f"fine-tuning the {args.distortion} expert's exits on {len(train_src)} images "
        f"(backbone {'frozen, BN adapting' if args.adapt_bn else 'and BN frozen'}), {device}"
    )
    history, calibration, val_accuracy = engine.fit_and_calibrate(
        model,
        args,
        train_loader=train_loader,
        val_loader=val_loader,
        optimizer=optimizer,
        scheduler=scheduler,
        device=device,
        freeze_backbone_bn=not args.adapt_bn,
        on_epoch_start=new_epoch,
    )
    engine.log("temperatures per exit: " + " ".join(f"{t:.3f}" for t in calibration["temperatures"]))
    payload = engine.base_payload(
        model.cpu(),
        role="expert",
        class_names=train_src.classes,
        preprocessing=preprocessing,
        run_id=new_run_id(),
        command=command_line(),
        started=started,
        args=args,
    )
    payload.update(
        {
            "distortion": args.distortion,
            "expert": args.distortion,
            "adapt_bn": bool(args.adapt_bn),
            "backbone_run_id": backbone["run_id"],
            "history": history,
            "calibration": calibration,
            "temperatures": calibration["temperatures"],
            "val_accuracy": val_accuracy,
        }
    )
    if not args.adapt_bn and payload["backbone_hash"] != backbone["backbone_hash"]:
        raise RuntimeError("the frozen backbone changed during expert training")  # a bug, not input
    save_checkpoint(out, payload)
    engine.log(f"saved {out} ({payload['wall_time_s']:.0f} s)")
    return payload


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
