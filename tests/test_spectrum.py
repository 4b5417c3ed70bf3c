"""The classifier's Fourier spectrum."""

import numpy as np

from core import distortions
from core.spectrum import classifier_input, gray, spectrum
from tests.conftest import textured_image


def test_range_dtype_and_shape():
    s = spectrum(textured_image(0))
    assert s.dtype == np.float32 and s.shape == (48, 48)
    assert s.min() == 0.0 and abs(s.max() - 1.0) < 1e-6
    assert classifier_input(textured_image(0), 32).shape == (1, 32, 32)


def test_zero_frequency_is_centred():
    s = spectrum(textured_image(1))
    assert np.unravel_index(np.argmax(s), s.shape) == (24, 24)


def test_flat_images_give_finite_spectra():
    s = spectrum(np.full((16, 16, 3), 77, np.uint8))  # only the zero frequency is non-zero
    assert np.isfinite(s).all() and s[8, 8] == 1.0 and np.count_nonzero(s) == 1
    assert (spectrum(np.zeros((16, 16, 3), np.uint8)) == 0).all()  # log(1 + 0): no -inf


def test_gray_is_rec601_luma():
    image = np.zeros((2, 2, 3), np.uint8)
    image[..., 0] = 255
    np.testing.assert_allclose(gray(image), 0.299 * 255)


def test_log_magnitude_formula():
    """The float32 OpenCV DFT in serving matches the float64 definition (what training saw
    before the switch) within 1e-4."""
    image = textured_image(2)
    g = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    m = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(g))))
    np.testing.assert_allclose(spectrum(image), (m - m.min()) / (m.max() - m.min()), atol=1e-4)


def _high_frequency_energy(image):
    s = spectrum(image)
    c = s.shape[0] // 2
    mask = np.ones_like(s, bool)
    mask[c - 8 : c + 8, c - 8 : c + 8] = False
    return s[mask].mean()


def test_blur_lowers_and_noise_raises_high_frequencies():
    image = textured_image(3, 64)
    base = _high_frequency_energy(image)
    assert _high_frequency_energy(distortions.apply(image, "gaussian_blur", 2)) < base
    assert _high_frequency_energy(distortions.apply(image, "gaussian_noise", 10, seed=0)) > base
