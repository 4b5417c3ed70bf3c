"""The Fourier spectrum the distortion classifier sees (CollabAR, IPSN 2020, via the GLOBECOM 2021
prototype), with the prototype's numerical bugs fixed.

gray (Rec.601 luma, in float) -> 2-D FFT -> fftshift (zero frequency in the centre) ->
log(1 + |F|) -> min-max to [0, 1], float32 HxW. The prototype used 20*log|F| cast to uint8, which
wraps around and gives -inf where |F| = 0.

Size matters because of the min-max step: at the image's own size, white noise lifts every
coefficient, the minimum included, and the scaling removes most of the lift (weak noise becomes
nearly invisible). Computing the spectrum of the image upsampled to 2-3x its size leaves a band of
frequencies the image cannot contain; its minimum stays near zero whatever the noise, so the
noise floor survives the scaling. The classifier's input size is therefore larger than the
backbone's (see README, "Distortion classifier").
"""

from __future__ import annotations

import numpy as np

from core.imaging import resize, to_rgb

# ITU-R BT.601 luma weights, the same as OpenCV's RGB2GRAY but without rounding to uint8.
REC601 = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def gray(image: np.ndarray) -> np.ndarray:
    """RGB uint8 HxWx3 to float64 HxW luma in [0, 255]."""
    return to_rgb(image).astype(np.float64) @ REC601


def spectrum(image: np.ndarray, size: int | None = None) -> np.ndarray:
    """Log-magnitude spectrum of `image` (resized to `size x size` first when given), in [0, 1]."""
    if size is not None:
        image = resize(to_rgb(image), size)
    magnitude = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(gray(image)))))
    lo, hi = float(magnitude.min()), float(magnitude.max())
    if hi - lo <= 0.0:  # a constant image has one non-zero coefficient at most
        return np.zeros(magnitude.shape, dtype=np.float32)
    return ((magnitude - lo) / (hi - lo)).astype(np.float32)


def classifier_input(image: np.ndarray, size: int, *, image_size: int | None = None) -> np.ndarray:
    """The classifier's float32 1xSxS input for an RGB uint8 image of any size.

    The image is first brought to `image_size` (the size at which the classifier's training
    distortions were applied, the backbone's input size), then to the spectrum size `size`: a
    512-px camera frame and the 64-px image the classifier trained on go through the same steps.
    """
    image = to_rgb(image)
    if image_size is not None:
        image = resize(image, image_size)
    return spectrum(image, size)[None, :, :]
