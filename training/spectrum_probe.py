"""Which spectra tell fine detail from weak noise on whole frames? A probe, not the classifier.

A whole camera frame shrunk to the backbone's 64 px keeps much fine detail, and the distortion
classifier's luma spectrum confused it with weak noise. This probe measures how much of that is in
the input itself: for each set of spectra (`core.spectrum`, exactly as the classifier gets them),
each spectrum is averaged over rings (32 radii), and a small MLP on those profiles is trained on
views of the training photos (crops and, by default half of them, whole frames; the classifier's
training pool) and tested
on every held-out photo whole at the weak conditions (the ones the classifier got wrong) and the
next level up. A probe that fails with luma alone and succeeds with chroma beside it says the
information is in the chroma spectrum, whatever network reads it.

    python -m training.spectrum_probe --json docs/results/spectrum_probe.json
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from core import distortions
from core.cli import command_line, progress, run_cli, write_result
from core.errors import UserInputError
from core.spectrum import classifier_input, parse_spectra
from training.photos import PhotoCrops, PhotoFrames

CONDITIONS = (
    ("pristine", 0),
    ("gaussian_blur", 1),
    ("gaussian_blur", 2),
    ("gaussian_noise", 5),
    ("gaussian_noise", 10),
)
CLASSES = ("pristine", "gaussian_blur", "gaussian_noise")
RINGS = 32


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--compare",
        nargs="+",
        default=["luma", "luma,chroma"],
        help="sets of spectra to compare (each comma-separated)",
    )
    p.add_argument("--image-size", type=int, default=64, help="side the distortions act on")
    p.add_argument("--input-size", type=int, default=192, help="side of the spectra")
    p.add_argument("--train-views", type=int, default=600, help="views of the training photos")
    p.add_argument("--frame-fraction", type=float, default=0.5, help="share of whole frames among them")
    p.add_argument("--draws", type=int, default=3, help="noise draws per held-out frame and condition")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def ring_profiles(channels: np.ndarray) -> np.ndarray:
    """Mean of each CxSxS spectrum over `RINGS` rings around the centre, concatenated."""
    side = channels.shape[-1]
    y, x = np.indices((side, side))
    radius = np.hypot(y - side // 2, x - side // 2).ravel()
    ring = np.minimum((radius / (radius.max() + 1e-9) * RINGS).astype(int), RINGS - 1)
    counts = np.bincount(ring, minlength=RINGS)
    return np.concatenate([np.bincount(ring, c.ravel(), RINGS) / counts for c in channels])


def features(
    images, spectra, args, rng, draws: int, quiet: bool, desc: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, class index, condition index) for every image at every condition."""
    rows, labels, conds = [], [], []
    for image in progress(images, desc=desc, quiet=quiet):
        for k, (name, level) in enumerate(CONDITIONS):
            for _ in range(draws):
                distorted = distortions.apply(image, name, level, rng=rng)
                x = classifier_input(distorted, args.input_size, image_size=args.image_size, spectra=spectra)
                rows.append(ring_profiles(x))
                labels.append(CLASSES.index(name))
                conds.append(k)
    return np.array(rows, np.float32), np.array(labels), np.array(conds)


def fit_and_test(train, test, seed: int) -> np.ndarray:
    """Predicted classes of `test` by an MLP (64 hidden units) fitted to `train` (full batch, Adam)."""
    (x, y, _), (xt, _, _) = train, test
    mean, std = x.mean(0), x.std(0) + 1e-6
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, len(CLASSES))
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
    xs, ys = torch.from_numpy((x - mean) / std), torch.from_numpy(y)
    for _ in range(1500):
        loss = torch.nn.functional.cross_entropy(net(xs), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return net(torch.from_numpy((xt - mean) / std)).argmax(1).numpy()


def main(args: argparse.Namespace) -> dict:
    started = time.time()
    for name in ("image_size", "input_size", "train_views", "draws"):
        if getattr(args, name) <= 0:
            raise UserInputError(f"--{name.replace('_', '-')} must be positive")
    if not 0.0 <= args.frame_fraction <= 1.0:
        raise UserInputError("--frame-fraction must be in [0, 1]")
    sets = [parse_spectra(s, "--compare") for s in args.compare]
    views = PhotoCrops(
        "train", args.train_views, size=args.image_size, seed=args.seed, frame_fraction=args.frame_fraction
    )
    frames = PhotoFrames("heldout", size=args.image_size)
    train_images = [views.image(i) for i in range(len(views))]
    test_images = [frames.image(i) for i in range(len(frames))]
    result = {
        "conditions": [f"{n} {lvl:g}" for n, lvl in CONDITIONS],
        "heldout_frames": len(frames),
        "probes": {},
    }
    for spectra in sets:
        rng = np.random.default_rng(args.seed)
        train = features(train_images, spectra, args, rng, 1, args.quiet, f"{'+'.join(spectra)} train")
        test = features(test_images, spectra, args, rng, args.draws, args.quiet, f"{'+'.join(spectra)} test")
        pred = fit_and_test(train, test, args.seed)
        per = {
            cond: float((pred[test[2] == k] == test[1][test[2] == k]).mean())
            for k, cond in enumerate(result["conditions"])
        }
        result["probes"]["+".join(spectra)] = per
        print(f"{'+'.join(spectra):<12} " + "  ".join(f"{c}: {100 * a:5.1f}" for c, a in per.items()))
    result.update({"command": command_line(), "wall_time_s": round(time.time() - started, 1)})
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
