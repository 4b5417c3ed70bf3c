"""Shared fixtures: tiny generated images and a fake Fashion-MNIST in the idx format."""

from __future__ import annotations

import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from core.distortions import DISTORTION_CLASSES


def textured_image(seed: int, size: int = 48) -> np.ndarray:
    """A smooth random RGB uint8 image with some edges: enough structure for every distortion."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.zeros((size, size, 3), dtype=np.float64)
    for c in range(3):
        fx, fy, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 6.28)
        image[:, :, c] = 127 + 90 * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
    x0, y0 = rng.integers(0, size // 2, size=2)
    image[y0 : y0 + size // 3, x0 : x0 + size // 3] = rng.uniform(0, 255, size=3)
    return np.clip(image, 0, 255).astype(np.uint8)


def wait_for(predicate, timeout: float = 30.0) -> bool:
    """Poll `predicate` every 0.2 s until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def fake_fashion_root(tmp_path_factory) -> Path:
    """A Fashion-MNIST look-alike: 28x28 gray 'garments' (blobs on black), 10 classes."""
    root = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 60)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        yy, xx = np.mgrid[0:28, 0:28]
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            r = 5 + label % 5 + rng.integers(0, 3)
            cy, cx = 14 + rng.integers(-3, 4), 14 + rng.integers(-3, 4)
            blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
            images[i][blob] = 120 + 10 * label + rng.integers(0, 30)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """An ImageFolder tree (Caltech-256 layout): 3 classes x 20 PNG images."""
    from core.imaging import encode_image

    root = tmp_path_factory.mktemp("folder")
    for c in range(3):
        d = root / f"{c:03d}.class{c}"
        d.mkdir()
        for i in range(20):
            (d / f"img_{i:03d}.png").write_bytes(encode_image(textured_image(100 * c + i, 40)))
    return root


# Tiny trained models, shared by the training, evaluation and export tests.
COMMON = [
    "--train-limit",
    "64",
    "--val-limit",
    "20",
    "--epochs",
    "1",
    "--batch-size",
    "16",
    "--workers",
    "0",
    "--quiet",
]


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    """One folder for the tiny backbone, experts and classifier, laid out as models/torch is."""
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def backbone(fake_fashion_root, checkpoint_dir):
    from training import train_backbone

    out = checkpoint_dir / "backbone.pt"
    args = train_backbone.get_args_parser().parse_args(
        [
            "--data-root",
            str(fake_fashion_root),
            "--out",
            str(out),
            "--weights",
            "none",
            "--input-size",
            "32",
            *COMMON,
        ]
    )
    train_backbone.main(args)
    return out


@pytest.fixture(scope="session")
def experts(fake_fashion_root, backbone, checkpoint_dir):
    from training import train_expert

    folder = checkpoint_dir
    paths = []
    for name in DISTORTION_CLASSES:
        args = train_expert.get_args_parser().parse_args(
            [
                "--data-root",
                str(fake_fashion_root),
                "--backbone",
                str(backbone),
                "--distortion",
                name,
                "--out",
                str(folder / f"expert_{name}.pt"),
                *COMMON,
            ]
        )
        train_expert.main(args)
        paths.append(str(folder / f"expert_{name}.pt"))
    return paths


def tiny_classifier_args(root: Path, out: Path, *, epochs: int, samples_per_epoch: int, extra=()):
    """`python -m training.train_classifier` arguments for a 32-px classifier on the fake data."""
    from training import train_classifier

    return train_classifier.get_args_parser().parse_args(
        [
            *("--data-root", str(root), "--out", str(out)),
            *("--input-size", "32", "--image-size", "32", "--photo-fraction", "0"),
            *("--epochs", str(epochs), "--samples-per-epoch", str(samples_per_epoch)),
            *("--val-limit", "20", "--workers", "0", "--quiet", *extra),
        ]
    )


@pytest.fixture(scope="session")
def tiny_classifier(fake_fashion_root, checkpoint_dir):
    from training import train_classifier

    out = checkpoint_dir / "classifier.pt"
    train_classifier.main(tiny_classifier_args(fake_fashion_root, out, epochs=2, samples_per_epoch=320))
    return out


@pytest.fixture(scope="session")
def exported(backbone, experts, tiny_classifier, fake_fashion_root, tmp_path_factory):
    """`python -m export` over the tiny checkpoints: (folder, export report)."""
    from export import __main__ as export_cli

    out = tmp_path_factory.mktemp("exported")
    args = export_cli.get_args_parser().parse_args(
        [
            "--backbone",
            str(backbone),
            "--experts",
            *experts,
            "--classifier",
            str(tiny_classifier),
            "--data-root",
            str(fake_fashion_root),
            "--parity-images",
            "12",
            "--out",
            str(out),
        ]
    )
    report = export_cli.main(args)
    return out, report


@pytest.fixture(scope="session")
def model_store(exported, tmp_path_factory):
    """Every archive built by `python -m export.archive` from the tiny export."""
    from export import archive

    store = tmp_path_factory.mktemp("model_store")
    archive.main(
        archive.get_args_parser().parse_args(["--exported", str(exported[0]), "--model-store", str(store)])
    )
    return store
