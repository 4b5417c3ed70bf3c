"""The Fourier spectrum the distortion classifier sees (CollabAR, IPSN 2020, via the GLOBECOM 2021
prototype), with the prototype's numerical bugs fixed.

gray (Rec.601 luma, in float32) -> 2-D DFT (OpenCV, float32) -> fftshift (zero frequency in the
centre) -> log(1 + |F|) -> min-max to [0, 1], float32 HxW. Training, evaluation and serving all call
`spectrum`, so the classifier sees the same numbers everywhere. OpenCV's float32 DFT replaced
numpy's float64 FFT for speed (the classifier's whole input, 64 px to a 192-px spectrum: 0.51
against 1.86 ms on one core here); the two agree within 1e-4 after the min-max, far below what the
classifier resolves (docs/results/classifier.json was re-made with it). The prototype used
20*log|F| cast to uint8, which wraps around and gives -inf where |F| = 0.

Size matters because of the min-max step: at the image's own size, white noise lifts every
coefficient, the minimum included, and the scaling removes most of the lift (weak noise becomes
nearly invisible). Computing the spectrum of the image upsampled to 2-3x its size leaves a band of
frequencies the image cannot contain; its minimum stays near zero whatever the noise, so the
noise floor survives the scaling. The classifier's input size is therefore larger than the
backbone's (see README, "Distortion classifier").
"""

from __future__ import annotations

import cv2
import numpy as np

from core.imaging import resize, to_rgb

# ITU-R BT.601 luma weights, the same as OpenCV's RGB2GRAY but without rounding to uint8.
REC601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def gray(image: np.ndarray) -> np.ndarray:
    """RGB uint8 HxWx3 to float32 HxW luma in [0, 255].

    Written as a weighted sum, not a matrix product: BLAS kernels may sum in an order that depends
    on the array's memory alignment, and training and serving must agree bit for bit."""
    rgb = to_rgb(image).astype(np.float32)
    return rgb[..., 0] * REC601[0] + rgb[..., 1] * REC601[1] + rgb[..., 2] * REC601[2]


def spectrum(image: np.ndarray, size: int | None = None) -> np.ndarray:
    """Log-magnitude spectrum of `image` (resized to `size x size` first when given), in [0, 1]."""
    if size is not None:
        image = resize(to_rgb(image), size)
    f = cv2.dft(gray(image), flags=cv2.DFT_COMPLEX_OUTPUT)
    # |F| by numpy's complex abs (element by element, libm's hypot): cv2.magnitude's result
    # depended on its buffers' alignment, and training and serving must agree bit for bit.
    magnitude = np.log1p(np.fft.fftshift(np.abs(f.view(np.complex64)[..., 0])))
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
