"""Image sources and the distorted datasets built on them.

Sources give RGB uint8 images and object labels, torch-free:
- `FashionMNIST`: the embedded default, read from Debian's `dataset-fashion-mnist` (idx files);
  train/val are a seeded 90/10 split of the official 60,000 training images, test is the official
  10,000 test set.
- `ImageFolderSource`: any `root/<class>/<image>` tree (Caltech-256 layout), split 80/10/10 per
  class with a fixed seed; the three splits are disjoint by construction.
- `PhotoCrops` (in `training.photos`): random crops of natural photos, for the classifier.

`DistortedDataset` turns a source into model inputs: resize to the model size, distort at a fixed
or random type and level, then either the backbone input (`core.imaging.Preprocessing`) or the
classifier's spectrum (`core.spectrum`): the same functions the handlers call.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from core import distortions
from core.errors import UserInputError
from core.imaging import ImageWire, Preprocessing, decode_image, resize, to_rgb
from core.spectrum import check_spectra, classifier_input

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


class ImageSource(Protocol):
    classes: tuple[str, ...]

    def __len__(self) -> int: ...

    def image(self, index: int) -> np.ndarray: ...

    def label(self, index: int) -> int: ...


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserInputError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")


def _read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) idx file as used by MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise UserInputError(f"cannot read {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserInputError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise UserInputError(f"{path} is truncated")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _seeded_permutation(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


class FashionMNIST:
    """Fashion-MNIST as 28x28 RGB uint8 images (gray replicated); `limit` keeps the first N."""

    classes = FASHION_MNIST_CLASSES

    def __init__(
        self,
        split: str,
        *,
        root: Path | str = FASHION_MNIST_ROOT,
        val_fraction: float = 0.1,
        seed: int = 0,
        limit: int | None = None,
    ):
        _check_split(split)
        root = Path(root)
        prefix = "t10k" if split == "test" else "train"
        images_path = root / f"{prefix}-images-idx3-ubyte.gz"
        labels_path = root / f"{prefix}-labels-idx1-ubyte.gz"
        for p in (images_path, labels_path):
            if not p.exists():
                raise UserInputError(
                    f"Fashion-MNIST file {p} not found: install Debian's dataset-fashion-mnist "
                    f"(make deps does) or pass --data-root"
                )
        images = _read_idx(images_path)
        labels = _read_idx(labels_path)
        if split == "test":
            index = np.arange(len(images))
        else:
            perm = _seeded_permutation(len(images), seed)
            n_val = int(round(len(images) * val_fraction))
            index = np.sort(perm[:n_val] if split == "val" else perm[n_val:])
        if limit is not None:
            index = index[:limit]
        self.split = split
        self._images = images
        self._labels = labels
        self._index = index

    def __len__(self) -> int:
        return len(self._index)

    def image(self, index: int) -> np.ndarray:
        return to_rgb(self._images[self._index[index]])

    def label(self, index: int) -> int:
        return int(self._labels[self._index[index]])


class ImageFolderSource:
    """`root/<class>/<image>` with a seeded per-class 80/10/10 split (fractions configurable)."""

    def __init__(
        self,
        root: Path | str,
        split: str,
        *,
        seed: int = 0,
        fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        limit: int | None = None,
    ):
        _check_split(split)
        root = Path(root)
        if not root.is_dir():
            raise UserInputError(f"image folder {root} does not exist")
        class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
        if not class_dirs:
            raise UserInputError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
        self.classes = tuple(d.name for d in class_dirs)
        k = SPLITS.index(split)
        bounds = np.cumsum((0.0,) + tuple(fractions))
        files: list[tuple[Path, int]] = []
        for label, d in enumerate(class_dirs):
            members = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            perm = _seeded_permutation(len(members), seed + label)
            lo, hi = (int(round(b * len(members))) for b in bounds[k : k + 2])
            files.extend((members[i], label) for i in sorted(perm[lo:hi]))
        if not files:
            raise UserInputError(f"{root} has no JPEG/PNG images in its {split} split")
        if limit is not None and limit < len(files):
            # a seeded sample keeps every class represented (files are in class order)
            keep = np.sort(_seeded_permutation(len(files), seed + 7)[:limit])
            files = [files[i] for i in keep]
        self._files = files
        self.split = split

    def __len__(self) -> int:
        return len(self._files)

    def image(self, index: int) -> np.ndarray:
        path = self._files[index][0]
        try:
            return decode_image(path.read_bytes(), max_bytes=64 * 1024 * 1024, max_pixels=10_000 * 10_000)
        except UserInputError as exc:
            raise UserInputError(f"{path}: {exc}") from None

    def label(self, index: int) -> int:
        return self._files[index][1]


def load_source(
    data: str, split: str, *, seed: int = 0, limit: int | None = None, data_root: str | None = None
) -> ImageSource:
    """`fashion-mnist` (the embedded default) or the path of an ImageFolder tree."""
    if limit is not None and limit <= 0:
        raise UserInputError(f"a limit of {limit} images leaves nothing to work on")
    if data == "fashion-mnist":
        return FashionMNIST(split, root=data_root or FASHION_MNIST_ROOT, seed=seed, limit=limit)
    if os.path.isdir(data):
        return ImageFolderSource(data, split, seed=seed, limit=limit)
    raise UserInputError(f"dataset {data!r} is neither 'fashion-mnist' nor an existing folder")


@dataclass(frozen=True)
class DistortionPolicy:
    """Which distortion each sample gets.

    `fixed=(type, level)` distorts every sample the same way; otherwise each sample draws a
    uniformly random type from `types`, then a uniformly random level of it. Draws come from a
    generator seeded by (seed, epoch, index), so an evaluation set is reproducible and a training
    set changes every epoch.
    """

    types: tuple[str, ...] = distortions.DISTORTION_CLASSES
    fixed: tuple[str, float] | None = None
    seed: int = 0

    def __post_init__(self):
        for name in self.types:
            distortions.get(name)
        if self.fixed is not None:
            distortions.get(self.fixed[0])

    def rng(self, index: int, epoch: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index])

    def draw(self, rng: np.random.Generator) -> tuple[str, float]:
        if self.fixed is not None:
            return self.fixed
        return distortions.sample(rng, self.types)


def distorted_image(
    source: ImageSource,
    index: int,
    size: int,
    policy: DistortionPolicy,
    *,
    epoch: int = 0,
    blur_border: str = "reflect",
) -> tuple[np.ndarray, str, float]:
    """Resize `source.image(index)` to `size`, distort it; returns (image, type, level)."""
    rng = policy.rng(index, epoch)
    name, level = policy.draw(rng)
    image = resize(source.image(index), size)
    options = {"border": blur_border} if name == "gaussian_blur" else {}
    return distortions.apply(image, name, level, rng=rng, **options), name, level


class DistortedDataset(Dataset):
    """A source with on-the-fly distortions, as backbone inputs or classifier spectra.

    Items: (input tensor, object label, distortion class index, level); the index is into `classes`
    (default the routed types, `core.distortions.DISTORTION_CLASSES`), -1 for a type not among
    them. `representation` is
    'image' (3xSxS, normalised) or 'spectrum' (CxTxT in [0, 1], T = `spectrum_size`, default S, one
    channel per name in `spectra`).
    Distortions always act at `size`, the backbone's input size, where their levels are defined;
    the distorted image then crosses a wire (`wire_of`: lossless, or a JPEG round trip as a
    device's camera encoder makes it) and the input is taken by the functions the serving side
    calls on a received image (`core.spectrum.classifier_input`, `Preprocessing.model_input`).
    """

    def __init__(
        self,
        source: ImageSource,
        *,
        size: int,
        policy: DistortionPolicy,
        representation: str = "image",
        preprocessing: Preprocessing | None = None,
        blur_border: str = "reflect",
        spectrum_size: int | None = None,
        spectra: tuple[str, ...] | None = None,
        wire: ImageWire | None = None,
        jpeg_fraction: float = 0.0,
        jpeg_quality: tuple[int, int] = (60, 95),
        jpeg_444_fraction: float = 0.0,
        lossless_only: tuple[tuple[str, float], ...] = (),
        classes: tuple[str, ...] = distortions.DISTORTION_CLASSES,
    ):
        if representation not in ("image", "spectrum"):
            raise ValueError(f"unknown representation {representation!r}")
        self.source = source
        self.size = size
        self.policy = policy
        self.classes = tuple(classes)
        self.representation = representation
        self.preprocessing = preprocessing or Preprocessing(size=size)
        self.blur_border = blur_border
        self.spectrum_size = spectrum_size or size
        if representation == "spectrum" and spectra is None:
            raise ValueError("a spectrum dataset needs the classifier's spectra")
        self.spectra = None if spectra is None else check_spectra(spectra)
        for name, fraction in (("jpeg_fraction", jpeg_fraction), ("jpeg_444_fraction", jpeg_444_fraction)):
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if not 1 <= jpeg_quality[0] <= jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality must be a range within 1-100, got {jpeg_quality}")
        if wire is not None and jpeg_fraction:
            raise ValueError("a fixed wire and drawn JPEG round trips exclude each other")
        self.wire = wire
        self.jpeg_fraction, self.jpeg_quality = jpeg_fraction, jpeg_quality
        self.jpeg_444_fraction = jpeg_444_fraction
        for name, level in lossless_only:
            if float(level) not in distortions.get(name).levels:
                raise ValueError(f"lossless_only: {level:g} is not a level of {name}")
        self.lossless_only = frozenset((name, float(level)) for name, level in lossless_only)
        self.epoch = 0

    def wire_of(self, index: int, distortion: tuple[str, float] | None = None) -> ImageWire:
        """The wire sample `index` (distorted as `distortion`) arrives on: the fixed `wire`
        (evaluation), else lossless or, with probability `jpeg_fraction`, JPEG at a quality drawn
        from `jpeg_quality` with 4:4:4 chroma in `jpeg_444_fraction` of them and 4:2:0 otherwise
        (training on what devices send). A distortion in `lossless_only` always arrives lossless:
        a level whose evidence the encoder removes would teach the classifier to read any fine
        detail of a JPEG frame as that distortion."""
        if self.wire is not None:
            return self.wire
        rng = np.random.default_rng([self.policy.seed, self.epoch, index, 0x4A5047])
        if rng.random() >= self.jpeg_fraction:
            return ImageWire()
        if distortion is not None and (distortion[0], float(distortion[1])) in self.lossless_only:
            return ImageWire()
        quality = int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
        subsampling = "444" if rng.random() < self.jpeg_444_fraction else "420"
        return ImageWire("jpeg", quality, subsampling)

    @classmethod
    def for_classifier(
        cls, source: ImageSource, config, policy: DistortionPolicy, *, wire: ImageWire | None = None
    ) -> DistortedDataset:
        """What a distortion classifier with `config` (`training.classifier.ClassifierConfig`: image
        size, spectrum size, spectra) sees of `source` under `policy`, every distorted image sent
        on `wire` (default lossless)."""
        return cls(
            source,
            size=config.image_size,
            policy=policy,
            representation="spectrum",
            spectrum_size=config.input_size,
            spectra=config.spectra,
            wire=wire,
            classes=config.classes,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        image, name, level = distorted_image(
            self.source, index, self.size, self.policy, epoch=self.epoch, blur_border=self.blur_border
        )
        image = self.wire_of(index, (name, level)).round_trip(image)
        if self.representation == "spectrum":
            x = classifier_input(image, self.spectrum_size, image_size=self.size, spectra=self.spectra)
        else:
            x = self.preprocessing.model_input(image)
        return (
            torch.from_numpy(x),
            self.source.label(index),
            self.classes.index(name) if name in self.classes else -1,
            float(level),
        )
