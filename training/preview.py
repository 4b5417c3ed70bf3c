"""Render a contact sheet of the distortions: one row per type, one column per level.

python -m training.preview --out demo_runs/distortions.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from core import distortions
from core.cli import run_cli
from core.errors import UserInputError
from core.imaging import encode_image, resize
from core.spectrum import SPECTRA, classifier_input
from training.datasets import load_source


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder path")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--data-root", default=None)
    p.add_argument("--index", type=int, default=0, help="which test image to show")
    p.add_argument("--size", type=int, default=64, help="model input size (distortions act here)")
    p.add_argument("--scale", type=int, default=2, help="magnification of each tile")
    p.add_argument(
        "--spectra",
        action="store_true",
        help="add each tile's spectra (every one in core.spectrum.SPECTRA, in that order; at the tile's "
        "size, not the classifier's)",
    )
    p.add_argument("--out", default="demo_runs/distortions.png")
    return p


def _tile(image: np.ndarray, text: str, scale: int) -> np.ndarray:
    big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    band = np.full((18, big.shape[1], 3), 255, np.uint8)
    cv2.putText(band, text, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([band, big])


def contact_sheet(image: np.ndarray, *, scale: int = 2, spectra: bool = False) -> np.ndarray:
    rows = []
    width = max(len(d.levels) for d in distortions.REGISTRY.values()) + 1
    for name, dist in distortions.REGISTRY.items():
        if name == "pristine":
            continue
        tiles = []
        for level in (0, *dist.levels):
            out = distortions.apply(image, name, level, seed=0)
            tiles.append(_tile(out, f"{name.replace('gaussian_', '').replace('_', ' ')} {level:g}", scale))
            if spectra:
                channels = classifier_input(out, out.shape[0], spectra=SPECTRA)
                for kind, s in zip(SPECTRA, channels, strict=True):
                    s = (s * 255).astype(np.uint8)
                    tiles.append(_tile(np.dstack([s, s, s]), kind, scale))
        per_row = width * (1 + len(SPECTRA) if spectra else 1)
        tiles += [np.full_like(tiles[0], 255)] * (per_row - len(tiles))
        rows.append(np.hstack(tiles))
    return np.vstack(rows)


def main(args: argparse.Namespace) -> None:
    if args.index < 0:
        raise UserInputError("--index must be >= 0")
    source = load_source(
        args.data, "test", limit=args.index + 1, data_root=args.data_root, seed=args.split_seed
    )
    if args.index >= len(source):
        raise UserInputError(f"--index {args.index} is past the end of the test split ({len(source)} images)")
    image = resize(source.image(args.index), args.size)
    sheet = contact_sheet(image, scale=args.scale, spectra=args.spectra)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_bytes(encode_image(sheet, "png"))
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]})")


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
