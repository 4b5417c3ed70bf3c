"""A pool of natural photographs from registry packages, for the distortion classifier.

The classifier learns the distortion, not the object, so it can train on any image; but trained
on upscaled Fashion-MNIST alone it takes every sharp natural photo for a noisy one. These photos
fix that: scikit-image's bundled sample images and the sample photos of Debian's `opencv-doc`;
the original photos of opencv-doc's HTML tutorials are a third source, held out whole.
The list is explicit (`PHOTOS`): synthetic drawings, logos and images that are already blurred
(`text_defocus`, `*_motion`) are left out on purpose, since their label would be wrong.

Photos are split into a training pool and a held-out pool by a stable hash of their group name
(stereo pairs and sequences share a group, so near-duplicates never straddle the split).
`PhotoCrops` serves random square crops (random scale and position, random horizontal flip),
resized to the model size, and with `frame_fraction` whole frames, resized exactly as the router
resizes a device's frame (`core.imaging.resize` of the whole picture, aspect not kept);
reproducible per (seed, epoch, index). `PhotoFrames` serves every photo of a pool whole, for
evaluation.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import UserInputError
from core.imaging import decode_image, resize

OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples")
OPENCV_DOC_HTML = Path("/usr/share/doc/opencv-doc/opencv4/html")
# Sources the classifier never trains on: every photo of theirs is held out (a test on a source
# unseen in training, not only on unseen scenes of the training sources).
HELDOUT_SOURCES = ("opencv-doc-html",)

# (package, path relative to its image folder)
PHOTOS: tuple[tuple[str, str], ...] = (
    *(
        ("opencv-doc", f"data/{name}")
        for name in (
            "aero1.jpg",
            "aero3.jpg",
            "aloeL.jpg",
            "aloeR.jpg",
            "apple.jpg",
            "baboon.jpg",
            "board.jpg",
            "building.jpg",
            "butterfly.jpg",
            "fruits.jpg",
            "home.jpg",
            "left.jpg",
            "right.jpg",
            "leuvenA.jpg",
            "leuvenB.jpg",
            "messi5.jpg",
            "orange.jpg",
            "squirrel_cls.jpg",
            "stuff.jpg",
            "HappyFish.jpg",
            "ela_original.jpg",
            "basketball1.png",
            "graf1.png",
            "rubberwhale1.png",
            "smarties.png",
            "box_in_scene.png",
            "sudoku.png",
            "left01.jpg",
            "left07.jpg",
            "right12.jpg",
        )
    ),
    *(("opencv-doc", f"text/scenetext0{i}.jpg") for i in range(1, 7)),
    *(("opencv-doc", f"hfs/data/00{i}.jpg") for i in range(3)),
    ("opencv-doc", "alphamat/input_images/plant.jpg"),
    # the original photographs of opencv-doc's tutorials (not their processed outputs, drawings,
    # screenshots, or copies of the examples' photos), picked by eye from the HTML tree
    *(
        ("opencv-doc-html", name)
        for name in (
            "227943776_1.jpg",
            "230501201_1.jpg",
            "Back_Projection1_Source_Image.jpg",
            "Histogram_Calculation_Original_Image.jpg",
            "Hough_Lines_Tutorial_Original_Image.jpg",
            "Laplace_Operator_Tutorial_Original_Image.jpg",
            "Morphology_1_Tutorial_Original_Image.jpg",
            "Pyramids_Tutorial_Original_Image.jpg",
            "Warp_Affine_Tutorial_Original_Image.jpg",
            "bus_det.jpg",
            "cat_det.jpg",
            "detect_test1.jpg",
            "detect_test2.jpg",
        )
    ),
    *(
        ("scikit-image", name)
        for name in (
            "astronaut.png",
            "brick.png",
            "camera.png",
            "chelsea.png",
            "coffee.png",
            "coins.png",
            "grass.png",
            "gravel.png",
            "hubble_deep_field.jpg",
            "ihc.png",
            "moon.png",
            "motorcycle_left.png",
            "retina.jpg",
            "rocket.jpg",
            "cell.png",
        )
    ),
)

HELDOUT_FRACTION = 0.25


def _package_root(package: str) -> Path | None:
    if package == "opencv-doc":
        return OPENCV_DOC if OPENCV_DOC.is_dir() else None
    if package == "opencv-doc-html":
        return OPENCV_DOC_HTML if OPENCV_DOC_HTML.is_dir() else None
    if package == "scikit-image":
        try:
            import skimage.data
        except ImportError:
            return None
        return Path(skimage.data.__file__).parent
    raise ValueError(package)


def group_of(path: str) -> str:
    """Photos of one scene (stereo pairs, numbered sequences) share a group."""
    stem = Path(path).stem.lower()
    stem = re.sub(r"(left|right)", "", stem)
    stem = re.sub(r"[0-9]+|[ab]$|[lr]$", "", stem)
    return f"{Path(path).parent.name}/{stem}"


def is_heldout(path: str) -> bool:
    digest = hashlib.sha256(group_of(path).encode()).digest()
    return digest[0] / 256.0 < HELDOUT_FRACTION


def available_photos(pool: str) -> list[Path]:
    """Files of the `train` or `heldout` pool present on this machine."""
    if pool not in ("train", "heldout"):
        raise UserInputError(f"unknown photo pool {pool!r} (train or heldout)")
    found = []
    for package, rel in PHOTOS:
        root = _package_root(package)
        heldout = package in HELDOUT_SOURCES or is_heldout(rel)
        if root is not None and (root / rel).is_file() and heldout == (pool == "heldout"):
            found.append(root / rel)
    return found


@dataclass
class PhotoCrops:
    """`length` random views of the photos in `pool`, at `size x size`; labels are -1 (no object).

    A view is the whole frame with probability `frame_fraction` (what a device sends: the router
    resizes the whole frame), else a square crop whose side is drawn uniformly between `size` and
    the photo's short side (pixel scale to the short side's full width). Flipped half the time.
    """

    pool: str
    length: int
    size: int = 64
    seed: int = 0
    epoch: int = 0
    classes: tuple[str, ...] = ()
    frame_fraction: float = 0.0

    def __post_init__(self):
        self.files = available_photos(self.pool)
        if not self.files:
            raise UserInputError(
                f"no natural photos found for the {self.pool} pool: install Debian's opencv-doc and "
                f"scikit-image (make deps does), or pass --photo-fraction 0"
            )
        self._images = [
            decode_image(p.read_bytes(), max_bytes=64 << 20, max_pixels=1 << 26) for p in self.files
        ]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def image(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, index, 7])
        photo = self._images[index % len(self._images)]
        if self.frame_fraction and rng.random() < self.frame_fraction:
            frame = photo[:, ::-1] if rng.random() < 0.5 else photo
            return resize(np.ascontiguousarray(frame), self.size)
        h, w = photo.shape[:2]
        side = int(rng.integers(min(self.size, h, w), min(h, w) + 1))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        crop = photo[y : y + side, x : x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        return resize(np.ascontiguousarray(crop), self.size)

    def label(self, index: int) -> int:
        return -1


class PhotoFrames(PhotoCrops):
    """Every photo of `pool` once, whole, resized as the router resizes a frame (evaluation)."""

    def __init__(self, pool: str, size: int = 64):
        super().__init__(pool, 0, size=size)
        self.length = len(self._images)

    def image(self, index: int) -> np.ndarray:
        return resize(self._images[index], self.size)

    def name(self, index: int) -> str:
        return self.files[index].name
