"""Image distortions of the reference paper, as a registry.

Gaussian blur: sigma in {1, 2, 3, 4, 5} pixels, square kernel of side 4*sigma + 1 (OpenCV
GaussianBlur), as in the GLOBECOM 2021 prototype. Border: reflected by default; the prototype's
zero border (`border="constant"`) darkens the edges, a cue real blur does not give, so it is an
option only. Gaussian noise: sigma in {5, 10, 20, 30, 40} on the 0-255 scale, drawn independently
per pixel and channel, added in floating point, then **clipped** to [0, 255] and rounded (the
prototype's uint8 addition wrapped around).

Motion blur: a straight line of 7, 11, 15, 21 or 27 pixels at an angle drawn from the generator,
anti-aliased, reflected border (the blur of a shaking camera or a moving object; the levels come
from the measured cost to the conventional model, `python -m training.level_curve`).

Level 0 of any type is the pristine image. Distortions act on RGB uint8 HxWx3 images at the size
the model sees (resize first, then distort) and return a new array of the same shape and dtype.

A new distortion is one function and one `@register(...)` line, then training commands
(docs/adding-a-distortion.md):

    @register("motion_blur", levels=MOTION_BLUR_LENGTHS, fallback="gaussian_blur")
    def motion_blur(image, level, rng): ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from core.errors import UnknownDistortionError

DistortionFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Distortion:
    """A registered distortion type: its name, its levels (paper's units) and the function.

    `routed`: the distortion classifier learns this type as a class of its own and the edge routes
    it to an expert named after it. `fallback`: the type whose expert answers when this type's own
    expert is not registered (written into the classifier's manifest at export, so the router
    follows data, not code); None falls back to nothing (503 when the expert is missing).
    `unit`: what a level measures, for plots and tables.
    """

    name: str
    levels: tuple[float, ...]
    fn: DistortionFn
    routed: bool = True
    fallback: str | None = None
    unit: str = "sigma"

    def __call__(
        self, image: np.ndarray, level: float, rng: np.random.Generator | None = None, **options
    ) -> np.ndarray:
        if level == 0:
            return image.copy()
        if level not in self.levels:
            raise UnknownDistortionError(
                f"level {level:g} is not a level of {self.name} (levels: "
                f"{', '.join(f'{v:g}' for v in self.levels)}, or 0 for pristine)"
            )
        return self.fn(image, level, rng if rng is not None else np.random.default_rng(), **options)


REGISTRY: dict[str, Distortion] = {}


def register(
    name: str,
    *,
    levels: tuple[float, ...],
    routed: bool = True,
    fallback: str | None = None,
    unit: str = "sigma",
) -> Callable[[DistortionFn], DistortionFn]:
    """Decorator: add `fn(image, level, rng, **options)` to the registry under `name`."""

    def wrap(fn: DistortionFn) -> DistortionFn:
        if name in REGISTRY:
            raise ValueError(f"distortion {name!r} registered twice")
        if fallback is not None and fallback not in REGISTRY:
            raise ValueError(f"distortion {name!r} falls back to {fallback!r}, which is not registered")
        REGISTRY[name] = Distortion(
            name=name, levels=tuple(levels), fn=fn, routed=routed, fallback=fallback, unit=unit
        )
        return fn

    return wrap


def get(name: str) -> Distortion:
    """The registered distortion `name`, or a one-line error listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownDistortionError(
            f"unknown distortion type {name!r} (known: {', '.join(REGISTRY)})"
        ) from None


def apply(
    image: np.ndarray,
    name: str,
    level: float,
    *,
    rng: np.random.Generator | None = None,
    seed: int | None = None,
    **options,
) -> np.ndarray:
    """Apply distortion `name` at `level`; `seed` (or `rng`) makes noise reproducible."""
    if rng is None and seed is not None:
        rng = np.random.default_rng(seed)
    return get(name)(image, level, rng, **options)


def sample(rng: np.random.Generator, types: tuple[str, ...] | None = None) -> tuple[str, float]:
    """A uniformly random type from `types` (default: the routed ones), then a random level of it."""
    types = tuple(types or routed_classes())
    name = types[int(rng.integers(len(types)))]
    levels = get(name).levels
    return name, levels[int(rng.integers(len(levels)))]


# ----------------------------------------------------------------------------------- registry
# Kernel lengths in pixels at the model's input size, roughly geometric (x1.3-1.6 a step): from 7 px,
# where the conventional model loses about 5 points, to 27 px, where it loses about 40. Shorter
# kernels are left out: at 5 px a 64-px image's motion blur and Gaussian blur sigma 1 leave
# spectra the classifier cannot tell apart (docs/adding-a-distortion.md).
MOTION_BLUR_LENGTHS = (7, 11, 15, 21, 27)
_BORDERS = {"reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT}


def blur_kernel_size(sigma: float) -> int:
    """Side of the square Gaussian kernel used for `sigma`: 4*sigma + 1 (the paper's choice)."""
    return int(4 * sigma + 1)


@register("pristine", levels=(0,))
def _pristine(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    return image.copy()


@register("gaussian_blur", levels=(1, 2, 3, 4, 5))
def gaussian_blur(
    image: np.ndarray, level: float, rng: np.random.Generator, *, border: str = "reflect"
) -> np.ndarray:
    if border not in _BORDERS:
        raise UnknownDistortionError(f"unknown blur border {border!r} (known: {', '.join(_BORDERS)})")
    k = blur_kernel_size(level)
    out = cv2.GaussianBlur(
        image, (k, k), sigmaX=float(level), sigmaY=float(level), borderType=_BORDERS[border]
    )
    return out.reshape(image.shape)


@register("gaussian_noise", levels=(5, 10, 20, 30, 40))
def gaussian_noise(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0.0, float(level), size=image.shape)
    return np.clip(np.rint(image.astype(np.float64) + noise), 0, 255).astype(np.uint8)


def motion_blur_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A line of `length` pixels through the centre at `angle_deg`, anti-aliased, summing to 1."""
    k = int(length)
    kernel = np.zeros((k, k), dtype=np.float32)
    kernel[k // 2, :] = 1.0
    rotation = cv2.getRotationMatrix2D(((k - 1) / 2.0, (k - 1) / 2.0), float(angle_deg), 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (k, k), flags=cv2.INTER_LINEAR)
    return kernel / kernel.sum()


@register("motion_blur", levels=MOTION_BLUR_LENGTHS, fallback="gaussian_blur", unit="kernel length, px")
def motion_blur(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    angle = float(rng.uniform(0.0, 180.0))
    out = cv2.filter2D(image, -1, motion_blur_kernel(level, angle), borderType=cv2.BORDER_REFLECT_101)
    return out.reshape(image.shape)


def fallbacks(classes) -> dict[str, str]:
    """{type: its fallback} for the types among `classes` whose fallback is among them too: the
    table a classifier of those classes carries in its manifest (`Manifest.fallbacks`)."""
    out = {}
    for name in classes:
        d = REGISTRY.get(name)
        if d is not None and d.fallback in classes:
            out[name] = d.fallback
    return out


def routed_classes() -> tuple[str, ...]:
    """The registered types the classifier learns as classes, in registration order."""
    return tuple(name for name, d in REGISTRY.items() if d.routed)


# The classifier's class order: fixed here so checkpoints, manifests and handlers agree. A
# checkpoint records its own class list (`training.classifier`), and the served classifier's
# manifest carries it, so a model trained before a type was added keeps working.
DISTORTION_CLASSES: tuple[str, ...] = routed_classes()


def cells(classes: tuple[str, ...] | list[str] | None = None) -> list[tuple[str, float]]:
    """(type, level) of every evaluated condition of `classes` (default `DISTORTION_CLASSES`):
    pristine first (level 0), then every level of each other type in class order."""
    names = DISTORTION_CLASSES if classes is None else classes
    return [("pristine", 0)] + [
        (name, level) for name in names if name != "pristine" for level in get(name).levels
    ]
