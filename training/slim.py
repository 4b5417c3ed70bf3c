"""Slim expert checkpoints to what differs from their backbone, so the shipped tree stays small.

An expert fine-tunes only its exits (and, with `--adapt-bn`, the BatchNorm statistics), yet the
trainer saves the whole network: 9 MB per expert, most of it a copy of the backbone checkpoint's
weights. Slimming keeps the tensors that differ and records the backbone's file name and run id;
`training.checkpoints.load_checkpoint` rebuilds the full network from the backbone checkpoint
beside it and refuses a backbone of another run, so a slim checkpoint loads like a full one (and
slimming it again writes the same file).

    python -m training.slim --backbone models/torch/backbone.pt models/torch/expert_*.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli import run_cli
from core.errors import UserInputError
from training.checkpoints import load_checkpoint, save_checkpoint, slim_payload
from training.engine import CHECKPOINT_KIND


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--backbone", required=True, help="the backbone checkpoint the experts share")
    p.add_argument("experts", nargs="+", help="expert checkpoints to slim in place")
    return p


def main(args: argparse.Namespace) -> None:
    backbone_path = Path(args.backbone)
    backbone = load_checkpoint(backbone_path, CHECKPOINT_KIND)
    for name in args.experts:
        path = Path(name)
        if path.resolve() == backbone_path.resolve():
            continue  # `models/torch/*.pt` names the backbone too
        if path.resolve().parent != backbone_path.resolve().parent:
            raise UserInputError(
                f"{path} must sit beside {backbone_path}: a slim checkpoint finds its backbone by file name"
            )
        payload = load_checkpoint(path, CHECKPOINT_KIND)
        before = path.stat().st_size
        save_checkpoint(path, slim_payload(payload, backbone, backbone_file=backbone_path.name))
        print(f"{path}: {before / 1e6:.1f} MB -> {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
