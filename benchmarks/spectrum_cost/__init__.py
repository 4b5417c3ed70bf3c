"""What the classifier's input costs per image: luma alone, luma and chroma, the shipped spectra.

    python -m benchmarks.spectrum_cost --json docs/results/spectrum_cost.json

Times, on one thread, `core.spectrum.classifier_input` with each set of spectra (luma; luma and
chroma; the ones the shipped classifier reads, when they are others) and the shipped
classifier end to end (`handlers.runtime.DistortionClassifierRuntime.probabilities`: spectra and
the ONNX network), for a 64-px image and a 480-px frame, interleaved so that machine noise hits
every variant alike; reports medians. The figures depend on how the allocator reuses the freed
temporaries (about 2 MB per image): timing one variant alone in a tight loop, glibc handed the
memory back to the OS after each image and page faults added about 1 ms to the chroma variant.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from core.cli import command_line, write_result
from core.errors import UserInputError
from core.imaging import resize
from core.manifest import Manifest
from core.spectrum import classifier_input


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.spectrum_cost",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", default="models/onnx", help="export holding distortion_classifier.json")
    p.add_argument("--repeats", type=int, default=400, help="timed calls per variant and image")
    p.add_argument("--json", default=None, help="write the result here")
    return p


def main(args: argparse.Namespace) -> dict:
    from handlers.runtime import DistortionClassifierRuntime

    if not 10 <= args.repeats <= 100_000:
        raise UserInputError("--repeats must be in [10, 100000]")
    manifest_path = Path(args.models) / "distortion_classifier.json"
    if not manifest_path.is_file():
        raise UserInputError(f"{manifest_path} not found: pass --models with an export folder")
    cv2.setNumThreads(1)
    runtime = DistortionClassifierRuntime(Manifest.load(manifest_path), Path(args.models), threads=1)
    size, image_size = runtime.size, runtime.image_size
    rng = np.random.default_rng(0)
    frame = resize(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), 480)  # smooth, as photos are
    images = {"64px": resize(frame, image_size), "480px": frame}
    variants = {
        "spectra luma": lambda im: classifier_input(im, size, image_size=image_size, spectra=("luma",)),
        "spectra luma+chroma": lambda im: classifier_input(
            im, size, image_size=image_size, spectra=("luma", "chroma")
        ),
    }
    shipped = tuple(runtime.spectra)
    if shipped not in (("luma",), ("luma", "chroma")):
        variants[f"spectra {'+'.join(shipped)}"] = lambda im: classifier_input(
            im, size, image_size=image_size, spectra=shipped
        )
    variants[f"classifier ({'+'.join(shipped)})"] = lambda im: runtime.probabilities([im])
    times: dict[str, dict[str, list[float]]] = {v: {k: [] for k in images} for v in variants}
    for _ in range(10):  # warm-up
        for fn in variants.values():
            for im in images.values():
                fn(im)
    for _ in range(args.repeats):
        for name, fn in variants.items():
            for key, im in images.items():
                started = time.perf_counter()
                fn(im)
                times[name][key].append(time.perf_counter() - started)
    medians = {
        v: {k: round(1000 * float(np.median(t)), 3) for k, t in per.items()} for v, per in times.items()
    }
    for name, per in medians.items():
        print(f"{name:<32} " + "  ".join(f"{k}: {ms:.3f} ms" for k, ms in per.items()))
    result = {
        "median_ms": medians,
        "repeats": args.repeats,
        "models": str(args.models),
        "run_id": runtime.manifest.run_id,
        "command": command_line(),
    }
    write_result(args.json, result)
    return result
