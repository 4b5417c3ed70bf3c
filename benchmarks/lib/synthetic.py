"""Model stores of any input size for the serving benchmarks: random weights, the real classifier.

Latency does not depend on the weights, so `benchmarks.overhead` and `benchmarks.peers` time the
serving stack at 224 px (the paper's size) with a randomly initialised early-exit MobileNetV2 and
three expert head-sets, beside the trained distortion classifier; a trained backbone of that size
can replace the random one. `build_store` exports them (`python -m export`) and archives them
(`python -m export.archive`) exactly as the shipped models are.
"""

from __future__ import annotations

import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import torch

from core.cli import command_line
from core.distortions import DISTORTION_CLASSES
from core.errors import UserInputError
from core.experts import CLASSIFIER, archive_name
from training.checkpoints import new_run_id, save_checkpoint
from training.early_exit import EarlyExitMobileNetV2, ExitConfig
from training.engine import base_payload, load_early_exit

EXPERTS = DISTORTION_CLASSES  # one expert per class the classifier routes to


def build_checkpoints(size: int, folder: Path, backbone: str | None) -> tuple[Path, list[Path]]:
    """A backbone checkpoint of `size` px and one expert checkpoint per distortion (same weights)."""
    if backbone:
        model, payload = load_early_exit(backbone, role="backbone")
        if payload["config"]["input_size"] != size:
            raise UserInputError(
                f"{backbone} was trained at {payload['config']['input_size']} px, not {size}"
            )
    else:
        torch.manual_seed(0)
        model = EarlyExitMobileNetV2(ExitConfig(input_size=size)).eval()
        from core.imaging import Preprocessing

        args = Namespace(data="fashion-mnist", split_seed=0)
        payload = base_payload(
            model,
            role="backbone",
            class_names=tuple(f"class{i}" for i in range(10)),
            preprocessing=Preprocessing(size=size),
            run_id=new_run_id(),
            command=command_line(),
            started=time.time(),
            args=args,
        )
        payload.update(
            distortion="pristine",
            expert="conventional",
            temperatures=[1.0] * 4,
            calibration={},
            val_accuracy=[],
            history=[],
        )
    bb = folder / "backbone.pt"
    save_checkpoint(bb, payload)
    experts = []
    for d in EXPERTS:
        path = folder / f"expert_{d}.pt"
        save_checkpoint(
            path,
            {
                **payload,
                "role": "expert",
                "distortion": d,
                "expert": d,
                "adapt_bn": False,
                "backbone_run_id": payload["run_id"],
            },
        )
        experts.append(path)
    return bb, experts


def build_store(
    size: int,
    folder: Path,
    *,
    classifier: str | Path,
    backbone: str | None = None,
    batch_size: int | None = None,
    max_batch_delay: int | None = None,
    data_root: str | None = None,
) -> Path:
    """Export and archive a `size`-px model set under `folder`; returns the model store. TorchServe
    batching as given, else `export.archive`'s defaults."""
    if not Path(classifier).is_file():
        raise UserInputError(f"{classifier} not found: train the distortion classifier first")
    bb, experts = build_checkpoints(size, folder / "ck", backbone)
    py = sys.executable
    roots = ["--data-root", data_root] if data_root else []
    subprocess.run(
        [
            py,
            "-m",
            "export",
            "--backbone",
            str(bb),
            "--experts",
            *map(str, experts),
            "--classifier",
            str(classifier),
            "--parity-images",
            "8",
            # no operating-point tables: what random exits are worth means nothing, and at 224 px
            # they cost about 12 minutes of one core; the serving paths timed here take thresholds
            "--operating-images",
            "0",
            "--out",
            str(folder / "exported"),
            *roots,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    only = [CLASSIFIER, *[archive_name(r, d) for r in ("edge", "cloud") for d in EXPERTS]]
    batching = [
        *(["--batch-size", str(batch_size)] if batch_size is not None else []),
        *(["--max-batch-delay", str(max_batch_delay)] if max_batch_delay is not None else []),
    ]
    subprocess.run(
        [
            py,
            "-m",
            "export.archive",
            "--exported",
            str(folder / "exported"),
            "--model-store",
            str(folder / "store"),
            *batching,
            "--only",
            *only,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return folder / "store"
