"""Write a distorted copy of a dataset split to disk (the paper's dataset generator).

For one distortion type, every image of the split is resized to `--size`, distorted at each level
(level 0 = the pristine copy) and written as `OUT/<type>/<level>/<class>/<index>.png`, an ImageFolder
tree per level, with `OUT/<type>/labels.csv` keeping the object label, type, level and source index.

`--classifier-set` instead writes the distortion classifier's data (the paper's classifier-dataset
generator): each image gets a uniformly random distortion class and level, and its spectra
(`--spectra`, the classifier's input channels side by side, luma first) are written as a 16-bit PNG
under `OUT/classifier_<split>/<distortion class>/`. Training does not need
these files (it works on the fly); they are for inspection and for other tools.

    python -m training.distort --split test --distortion-type gaussian_blur --out data/distorted
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

import cv2
import numpy as np

from core import distortions
from core.cli import progress, run_cli
from core.errors import UserInputError
from core.imaging import encode_image
from core.spectrum import DEFAULT_SPECTRA, classifier_input, parse_spectra
from training.datasets import DistortionPolicy, distorted_image, load_source


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder path")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--data-root", default=None, help="folder of the Fashion-MNIST idx files")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument(
        "--distortion-type",
        default=None,
        help=f"one of {', '.join(distortions.REGISTRY)} (not with --classifier-set)",
    )
    p.add_argument(
        "--levels",
        type=float,
        nargs="+",
        default=None,
        help="levels to write (default: 0 and all of the type's levels)",
    )
    p.add_argument("--size", type=int, default=64, help="side of the written images")
    p.add_argument(
        "--format",
        default="png",
        choices=("png", "jpg"),
        help="png is lossless; jpg adds compression artefacts as the paper's JPEGs did",
    )
    p.add_argument("--blur-border", default="reflect", choices=("reflect", "constant"))
    p.add_argument("--limit", type=int, default=None, help="first N images of the split")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and of the random draws")
    p.add_argument("--out", default="data/distorted", help="output folder")
    p.add_argument(
        "--spectrum-size",
        type=int,
        default=128,
        help="with --classifier-set: side of the spectra (the classifier's input size)",
    )
    p.add_argument(
        "--spectra",
        default=",".join(DEFAULT_SPECTRA),
        help="with --classifier-set: comma-separated spectra, written side by side",
    )
    p.add_argument(
        "--classifier-set",
        action="store_true",
        help="write spectra per distortion class instead (random type and level)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_distorted(args: argparse.Namespace, source) -> int:
    dist = distortions.get(args.distortion_type)
    levels = args.levels if args.levels is not None else [0, *dist.levels]
    for level in levels:
        if level != 0 and level not in dist.levels:
            raise UserInputError(
                f"level {level:g} is not a level of {dist.name} "
                f"({', '.join(f'{v:g}' for v in dist.levels)}, or 0)"
            )
    root = Path(args.out) / dist.name
    rows = []
    jobs = [(level, i) for level in levels for i in range(len(source))]
    for level, i in progress(jobs, desc=f"{dist.name}", quiet=args.quiet):
        name = "pristine" if level == 0 else dist.name
        policy = DistortionPolicy(fixed=(name, level), seed=args.seed)
        image, _, _ = distorted_image(source, i, args.size, policy, blur_border=args.blur_border)
        label = source.label(i)
        rel = Path(f"{level:g}") / safe_name(source.classes[label]) / f"{i:06d}.{args.format}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(encode_image(image, args.format))
        rows.append((str(rel), label, source.classes[label], dist.name, f"{level:g}", i))
    _write_csv(root / "labels.csv", ("path", "label", "class", "distortion", "level", "index"), rows)
    print(f"wrote {len(rows)} images under {root}")
    return len(rows)


def write_classifier_set(args: argparse.Namespace, source) -> int:
    root = Path(args.out) / f"classifier_{args.split}"
    policy = DistortionPolicy(seed=args.seed)
    spectra = args.spectra  # parsed by main, before any data is loaded
    rows = []
    for i in progress(range(len(source)), desc="spectra", quiet=args.quiet):
        image, name, level = distorted_image(source, i, args.size, policy, blur_border=args.blur_border)
        channels = classifier_input(image, args.spectrum_size, image_size=args.size, spectra=spectra)
        spec = np.hstack(list(channels))
        spec16 = np.round(spec * 65535.0).astype(np.uint16)
        rel = Path(name) / f"{i:06d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(root / rel), spec16):
            raise OSError(f"could not write {root / rel}")
        rows.append((str(rel), distortions.DISTORTION_CLASSES.index(name), name, f"{level:g}", i))
    _write_csv(root / "labels.csv", ("path", "label", "distortion", "level", "index"), rows)
    print(f"wrote {len(rows)} spectra under {root}")
    return len(rows)


def _write_csv(path: Path, header: tuple[str, ...], rows: list) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def main(args: argparse.Namespace) -> int:
    if args.size <= 0:
        raise UserInputError("--size must be positive")
    if args.classifier_set == (args.distortion_type is not None):
        raise UserInputError("give either --distortion-type or --classifier-set")
    if args.distortion_type is not None:
        distortions.get(args.distortion_type)  # fail before loading data
    args.spectra = parse_spectra(args.spectra)
    source = load_source(
        args.data, args.split, limit=args.limit, data_root=args.data_root, seed=args.split_seed
    )
    if args.classifier_set:
        return write_classifier_set(args, source)
    return write_distorted(args, source)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
