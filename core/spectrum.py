"""The Fourier spectra the distortion classifier sees (CollabAR, IPSN 2020, via the GLOBECOM 2021
prototype), with the prototype's numerical bugs fixed, and three more beside CollabAR's: chroma,
and two at the image's own size that show which way a blur runs.

`luma`: gray (Rec.601 luma, in float32) -> 2-D DFT (OpenCV, float32) -> fftshift (zero frequency in
the centre) -> log(1 + |F|) -> min-max to [0, 1], float32 HxW. `chroma`: the same for the joint
magnitude sqrt(|F(Cb)|^2 + |F(Cr)|^2) of the two Rec.601 colour-difference planes. Training,
evaluation and serving all call `classifier_input`, so the classifier sees the same numbers
everywhere.

Why chroma. A whole camera frame shrunk to 64 px keeps a lot of fine detail, and in the luma
spectrum fine detail and weak noise look alike: on the whole frames of 21 photos held out by
source, a small network on ring averages of the luma spectrum got a third of the clean frames and a
quarter of the sigma-5 noises wrong; with the chroma spectrum beside it, none
(`python -m training.spectrum_probe`, docs/results/spectrum_probe.json). Detail in photographs lives
mostly in luma, while noise drawn per pixel and colour channel (the reference paper's, and most of
a camera sensor's) is as strong in chroma as anywhere; a gray image has no chroma at all, so any
colour-difference energy in it is noise (README, "Distortion classifier").

OpenCV's float32 DFT replaced numpy's float64 FFT for speed (the luma spectrum, 64 px to 192 px:
0.51 against 1.86 ms on one core here; both spectra together about 1.3 ms,
`benchmarks.spectrum_cost`); the two agree within 1e-4 after the min-max, far below what the
classifier resolves (docs/results/classifier.json was re-made with it). The prototype used
20*log|F| cast to uint8, which wraps around and gives -inf where |F| = 0.

Size matters because of the min-max step: at the image's own size, white noise lifts every
coefficient, the minimum included, and the scaling removes most of the lift (weak noise becomes
nearly invisible). Computing the spectrum of the image upsampled to 2-3x its size leaves a band of
frequencies the image cannot contain; its minimum stays near zero whatever the noise, so the
noise floor survives the scaling. The classifier's input size is therefore larger than the
backbone's (see README, "Distortion classifier").

`luma_native` and `anisotropy`, for telling motion blur from Gaussian blur (the shipped four-class
networks read all four spectra). The upsampled spectra put all of a 64-px image's frequencies in
the middle third of the map, and a Fashion-MNIST image's (28 px upsampled) in the middle seventh:
after the network's stride and two poolings that is a 3-4 cell patch of the bottleneck map, too
coarse to see which way a blur runs. `luma_native` is the luma spectrum at the image's own size
(the backbone's 64 px), each frequency bin scaled up to the input size, so the same frequencies
fill the map. `anisotropy` is that spectrum minus itself turned by 90 degrees: motion blur zeroes
stripes across one direction and leaves the other alone, Gaussian blur dims every direction alike,
and the network's small filters cannot compare frequencies at right angles, far apart in the map,
on their own. On a four-class network each lifted motion blur's and sigma-1 blur's accuracy by
points (docs/adding-a-distortion.md, "Motion blur, as it was added").
"""

from __future__ import annotations

import cv2
import numpy as np

from core.errors import UserInputError
from core.imaging import resize, to_rgb

# ITU-R BT.601 luma weights, the same as OpenCV's RGB2GRAY but without rounding to uint8.
REC601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Its colour differences Cb and Cr, written on (R - G, B - G): their weights sum to zero, and in
# this form a gray pixel gives exactly 0 (the RGB weights in float32 leave a rounding residue that
# the min-max scaling would blow up to a full-range pattern).
CB_ON_DIFFERENCES = (-0.168736, 0.5)
CR_ON_DIFFERENCES = (0.5, -0.081312)

# The spectra a classifier can be trained on; a classifier's input channels follow this order.
SPECTRA = ("luma", "chroma", "luma_native", "anisotropy")
# What a new classifier is trained on unless told otherwise (the shipped networks' input).
DEFAULT_SPECTRA = SPECTRA
# What a checkpoint or manifest that names none was trained on (CollabAR's single gray spectrum).
LEGACY_SPECTRA = ("luma",)


def _weighted(rgb: np.ndarray, weights: np.ndarray) -> np.ndarray:
    # A weighted sum, not a matrix product: BLAS kernels may sum in an order that depends on the
    # array's memory alignment, and training and serving must agree bit for bit.
    return rgb[..., 0] * weights[0] + rgb[..., 1] * weights[1] + rgb[..., 2] * weights[2]


def gray(image: np.ndarray) -> np.ndarray:
    """RGB uint8 HxWx3 to float32 HxW luma in [0, 255]."""
    return _weighted(to_rgb(image).astype(np.float32), REC601)


def _magnitude(plane: np.ndarray) -> np.ndarray:
    """|DFT| of a float32 plane, zero frequency in the centre."""
    f = cv2.dft(plane, flags=cv2.DFT_COMPLEX_OUTPUT)
    # |F| by numpy's complex abs (element by element, libm's hypot): cv2.magnitude's result
    # depended on its buffers' alignment, and training and serving must agree bit for bit.
    return np.fft.fftshift(np.abs(f.view(np.complex64)[..., 0]))


def _log_scaled(magnitude: np.ndarray) -> np.ndarray:
    """log(1 + magnitude), min-max scaled to [0, 1] (all zeros for a flat magnitude)."""
    m = np.log1p(magnitude)
    lo, hi = float(m.min()), float(m.max())
    if hi - lo <= 0.0:  # a constant image has one non-zero coefficient at most
        return np.zeros(m.shape, dtype=np.float32)
    return ((m - lo) / (hi - lo)).astype(np.float32)


def spectrum(image: np.ndarray, size: int | None = None) -> np.ndarray:
    """Log-magnitude luma spectrum of `image` (resized to `size x size` first when given), in [0, 1]."""
    if size is not None:
        image = resize(to_rgb(image), size)
    return _log_scaled(_magnitude(gray(image)))


def chroma_spectrum(image: np.ndarray, size: int | None = None) -> np.ndarray:
    """Log of the joint magnitude of the Cb and Cr planes' spectra, in [0, 1] (zeros for gray)."""
    rgb = to_rgb(image if size is None else resize(to_rgb(image), size)).astype(np.float32)
    r_g, b_g = rgb[..., 0] - rgb[..., 1], rgb[..., 2] - rgb[..., 1]  # exact: integers in float32
    planes = [
        np.float32(w_rg) * r_g + np.float32(w_bg) * b_g
        for w_rg, w_bg in (CB_ON_DIFFERENCES, CR_ON_DIFFERENCES)
    ]
    cb, cr = (_magnitude(p) for p in planes)
    return _log_scaled(np.sqrt(cb * cb + cr * cr))


def native_spectrum(image: np.ndarray, size: int) -> np.ndarray:
    """The luma spectrum of `image` at its own size, each frequency bin scaled up to fill
    `size x size` (nearest neighbour, so every bin keeps its value; `classifier_input` brings the
    image to the backbone's size first, smaller than the spectrum's)."""
    return _scaled_up(spectrum(image), size)


def _scaled_up(own: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(own, (size, size), interpolation=cv2.INTER_NEAREST)


def quarter_turn(s: np.ndarray) -> np.ndarray:
    """A centred square spectrum turned by 90 degrees about its zero frequency (at n // 2 after
    fftshift): the value at frequency (u, v) moves to (v, -u). (np.rot90 turns about the array's
    middle, half a bin off the zero frequency of an even-sized spectrum.)"""
    n, c = s.shape[0], s.shape[0] // 2
    i, j = np.mgrid[0:n, 0:n]
    return s[j, (2 * c - i) % n]


def anisotropy_spectrum(image: np.ndarray, size: int) -> np.ndarray:
    """The native luma spectrum minus itself turned by 90 degrees, mapped from [-1, 1] to
    [0, 1], each bin scaled up to `size x size` like `native_spectrum`.

    Each position holds the difference between one frequency and the one at right angles to it.
    Gaussian blur dims both alike and leaves this map as the image's own content made it; motion
    blur dims one of each pair, so its stripes show up here. The network's filters are local and
    cannot compare frequencies far apart in the map themselves."""
    return _scaled_up(_turn_difference(spectrum(image)), size)


def _turn_difference(own: np.ndarray) -> np.ndarray:
    if own.shape[0] != own.shape[1]:
        raise ValueError(f"the anisotropy spectrum needs a square image, got {own.shape}")
    return (0.5 + 0.5 * (own - quarter_turn(own))).astype(np.float32)


def parse_spectra(option: str, flag: str = "--spectra") -> tuple[str, ...]:
    """A command-line value ('luma,chroma') as a tuple, or a UserInputError naming `flag`."""
    try:
        return check_spectra([name.strip() for name in option.split(",")])
    except ValueError as exc:
        raise UserInputError(f"{flag}: {exc}") from None


_SPECTRUM_OF = {"luma": spectrum, "chroma": chroma_spectrum}  # of the image at the input size
# of the image at the backbone's size, from its luma spectrum (taken once for both)
_FROM_OWN_SPECTRUM = {"luma_native": lambda own: own, "anisotropy": _turn_difference}


def check_spectra(spectra: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`spectra` as a tuple, or ValueError: distinct known names, in the order of `SPECTRA` (the
    order of the input channels, so one set of spectra has one layout)."""
    if not isinstance(spectra, (list, tuple)):
        raise ValueError(f"spectra must be a list of names from {', '.join(SPECTRA)}, got {spectra!r}")
    spectra = tuple(spectra)
    known = all(isinstance(s, str) and s in SPECTRA for s in spectra)
    if not spectra or not known or list(spectra) != [s for s in SPECTRA if s in spectra]:
        raise ValueError(
            f"spectra must be distinct names from {', '.join(SPECTRA)}, in that order, got {list(spectra)}"
        )
    return spectra


def classifier_input(
    image: np.ndarray,
    size: int,
    *,
    image_size: int | None = None,
    spectra: tuple[str, ...],
) -> np.ndarray:
    """The classifier's float32 CxSxS input for an RGB uint8 image of any size (C = len(spectra)).

    The image is first brought to `image_size` (the size at which the classifier's training
    distortions were applied, the backbone's input size), then to the spectrum size `size`: a
    512-px camera frame and the 64-px image the classifier trained on go through the same steps.
    """
    image = to_rgb(image)
    if image_size is not None:
        image = resize(image, image_size)
    names = check_spectra(spectra)
    own = spectrum(image) if any(name in _FROM_OWN_SPECTRUM for name in names) else None
    at_size = resize(image, size)
    return np.stack(
        [
            _scaled_up(_FROM_OWN_SPECTRUM[name](own), size)
            if name in _FROM_OWN_SPECTRUM
            else _SPECTRUM_OF[name](at_size)
            for name in names
        ]
    )
