"""The classifier's Fourier spectrum."""

import numpy as np

from core import distortions
from core.spectrum import chroma_spectrum, classifier_input, gray, spectrum
from tests.conftest import textured_image


def test_range_dtype_and_shape():
    s = spectrum(textured_image(0))
    assert s.dtype == np.float32 and s.shape == (48, 48)
    assert s.min() == 0.0 and abs(s.max() - 1.0) < 1e-6
    assert classifier_input(textured_image(0), 32, spectra=("luma",)).shape == (1, 32, 32)
    both = classifier_input(textured_image(0), 32, spectra=("luma", "chroma"))
    assert both.shape == (2, 32, 32) and both.dtype == np.float32
    np.testing.assert_array_equal(both[0], classifier_input(textured_image(0), 32, spectra=("luma",))[0])
    np.testing.assert_array_equal(both[1], chroma_spectrum(textured_image(0), 32))


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


def _colour_texture(seed, size=64):
    """A smooth colour image (low-frequency colour, no colour detail)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    import cv2

    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def test_chroma_is_zero_for_gray_and_sees_per_channel_noise():
    """A gray image has no colour difference at all; noise drawn per colour channel puts energy
    into chroma at every frequency, which luma detail never does."""
    gray_image = np.repeat(textured_image(4, 64)[..., :1], 3, axis=2)
    assert (chroma_spectrum(gray_image) == 0).all()
    noisy = distortions.apply(gray_image, "gaussian_noise", 5, seed=0)
    assert chroma_spectrum(noisy).max() == 1.0  # not all zero: only noise put colour into it

    def outer_band(s):
        c = s.shape[0] // 2
        return s[c - 24 : c + 24, c - 24 : c + 24].copy().ravel()[::7].mean()

    image = _colour_texture(5)
    clean = chroma_spectrum(image, 128)
    noisy = chroma_spectrum(distortions.apply(image, "gaussian_noise", 5, seed=1), 128)
    assert outer_band(noisy) > outer_band(clean) + 0.05


def test_chroma_spectrum_is_the_joint_colour_difference_magnitude():
    image = textured_image(6, 48)
    x = image.astype(np.float64)
    cb = x @ np.array([-0.168736, -0.331264, 0.5])
    cr = x @ np.array([0.5, -0.418688, -0.081312])
    m = np.log1p(np.fft.fftshift(np.hypot(np.abs(np.fft.fft2(cb)), np.abs(np.fft.fft2(cr)))))
    np.testing.assert_allclose(chroma_spectrum(image), (m - m.min()) / (m.max() - m.min()), atol=1e-4)


def test_unknown_or_reordered_spectra_are_refused():
    import pytest

    for bad in (("luma", "hue"), ("chroma", "luma"), "luma", ()):
        with pytest.raises(ValueError, match="spectra must be"):
            classifier_input(textured_image(0), 32, spectra=bad)


def test_probe_ring_profiles_average_each_channel_over_rings():
    from training.spectrum_probe import RINGS, ring_profiles

    channels = np.stack([np.ones((32, 32), np.float32), np.zeros((32, 32), np.float32)])
    channels[1, 16, 16] = 1.0  # only the centre of the second channel
    profile = ring_profiles(channels)
    assert profile.shape == (2 * RINGS,)
    np.testing.assert_allclose(profile[:RINGS], 1.0)
    assert profile[RINGS] > 0 and (profile[RINGS + 1 :] == 0).all()


def test_classifier_manifest_needs_one_input_channel_per_spectrum():
    import pytest

    from core.manifest import Manifest, ManifestError

    d = {
        "schema_version": 1,
        "role": "classifier",
        "name": "distortion_classifier",
        "distortion": None,
        "class_names": ["pristine", "gaussian_blur", "gaussian_noise"],
        "preprocessing": {"size": 64, "mean": [0, 0, 0], "std": [1, 1, 1], "spectrum_size": 192},
        "stages": ["c.onnx"],
        "exits": [],
        "input": {"name": "spectrum", "shape": [None, 1, 192, 192]},
        "output": {"name": "logits", "shape": [None, 3]},
        "backbone_hash": "",
        "run_id": "r",
        "files": {"c.onnx": "0" * 64},
    }
    Manifest.from_dict(d)  # no `spectra`: an earlier release's luma-only classifier
    d["preprocessing"]["spectra"] = ["luma", "chroma"]
    with pytest.raises(ManifestError, match="one channel per spectrum"):
        Manifest.from_dict(d)
    d["input"]["shape"][1] = 2
    assert Manifest.from_dict(d).preprocessing["spectra"] == ["luma", "chroma"]
    for bad in (["luma", "hue"], "luma,chroma", ["chroma", "luma"]):
        d["preprocessing"]["spectra"] = bad
        with pytest.raises(ManifestError, match="spectra must be"):
            Manifest.from_dict(d)


def test_native_spectrum_is_the_own_size_spectrum_with_every_bin_scaled_up():
    """`luma_native` is the luma spectrum at the image's own size (after the resize to the
    backbone's size), each bin a 3x3 block at three times that size: the blur's shape fills the
    map instead of its middle third."""
    from core.imaging import resize
    from core.spectrum import native_spectrum

    image = textured_image(4, 48)
    own = spectrum(resize(image, 16))
    channels = classifier_input(image, 48, image_size=16, spectra=("luma", "chroma", "luma_native"))
    assert channels.shape == (3, 48, 48)
    np.testing.assert_array_equal(channels[2], np.kron(own, np.ones((3, 3), np.float32)))
    np.testing.assert_array_equal(channels[2], native_spectrum(resize(image, 16), 48))
    # the upsampled luma spectrum keeps the same frequencies in its middle third only
    assert not np.array_equal(channels[0], channels[2])


def test_native_spectrum_tells_the_direction_of_a_motion_blur():
    """Motion blur dims frequencies along its direction only: on the native spectrum of a
    horizontally blurred image the horizontal frequencies are darker than the vertical ones;
    Gaussian blur dims both alike."""
    from core.spectrum import native_spectrum

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # white: every direction alike
    kernel = distortions.motion_blur_kernel(11, 0.0)  # a horizontal line
    import cv2

    moved = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    blurred = distortions.apply(image, "gaussian_blur", 2)

    def along_and_across(img):
        s = native_spectrum(img, 64)
        c = 32
        return s[c, c + 8 : c + 28].mean(), s[c + 8 : c + 28, c].mean()  # u axis, v axis

    horizontal, vertical = along_and_across(moved)
    assert horizontal < vertical - 0.1
    horizontal, vertical = along_and_across(blurred)
    assert abs(horizontal - vertical) < 0.05


def test_quarter_turn_is_about_the_zero_frequency():
    """On an even-sized centred spectrum the zero frequency sits at (n/2, n/2), half a bin off
    the array's middle: the turn keeps it there and moves (u, v) to (v, -u)."""
    from core.spectrum import anisotropy_spectrum, quarter_turn

    for n in (8, 9):  # fftshift puts the zero frequency at n // 2, odd or even
        c = n // 2
        s = np.zeros((n, n), np.float32)
        s[c, c] = 1.0  # the zero frequency
        s[c, c + 2] = 0.5  # u = 2, v = 0 (row v, column u)
        turned = quarter_turn(s)
        assert turned[c, c] == 1.0 and turned[c - 2, c] == 0.5  # now at (u, v) = (0, -2)
        assert np.count_nonzero(turned) == 2
        np.testing.assert_array_equal(quarter_turn(quarter_turn(quarter_turn(quarter_turn(s)))), s)
    # an image the same every way round has no anisotropy: the map sits at its neutral 0.5
    yy, xx = np.mgrid[-16:16, -16:16]
    disc = np.repeat(((np.hypot(yy, xx) < 8) * 200).astype(np.uint8)[..., None], 3, axis=2)
    aniso = anisotropy_spectrum(disc, 64)
    assert aniso.shape == (64, 64) and np.abs(aniso - 0.5).max() < 1e-5  # float32 DFT rounding
    upright = np.zeros_like(disc)
    upright[10:22, 12:20] = 200  # taller than wide: its spectrum is wider than tall
    assert np.abs(anisotropy_spectrum(upright, 64) - 0.5).max() > 0.2
