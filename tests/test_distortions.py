"""The distortion module: the paper's levels, clipping, shapes, determinism, the registry."""

import cv2
import numpy as np
import pytest

from core import distortions
from core.errors import UnknownDistortionError
from tests.conftest import textured_image

ALL_CELLS = [(name, level) for name, d in distortions.REGISTRY.items() for level in d.levels]


def test_paper_levels():
    assert distortions.get("gaussian_blur").levels == (1, 2, 3, 4, 5)
    assert distortions.get("gaussian_noise").levels == (5, 10, 20, 30, 40)
    assert distortions.get("motion_blur").levels == (7, 11, 15, 21, 27)
    assert distortions.DISTORTION_CLASSES == (
        "pristine",
        "gaussian_blur",
        "gaussian_noise",
        "motion_blur",
    )


@pytest.mark.parametrize("sigma", [1, 2, 3, 4, 5])
def test_blur_kernel_is_4_sigma_plus_1_with_that_sigma(sigma):
    # The impulse response of the blur is its kernel: check its support and its values against
    # a sampled Gaussian of that sigma, computed here without OpenCV.
    k = 4 * sigma + 1
    image = np.zeros((61, 61, 3), dtype=np.float32)
    image[30, 30, :] = 1.0
    response = distortions.apply(image, "gaussian_blur", sigma)[:, :, 0]
    rows, cols = np.nonzero(response > 0)
    assert rows.max() - rows.min() + 1 == k and cols.max() - cols.min() + 1 == k
    t = np.arange(k) - k // 2
    g = np.exp(-(t**2) / (2.0 * sigma**2))
    g /= g.sum()
    expected = np.outer(g, g)
    r = k // 2
    np.testing.assert_allclose(response[30 - r : 31 + r, 30 - r : 31 + r], expected, atol=1e-6)


def test_blur_border_reflect_keeps_edges_constant_darkens_them():
    image = np.full((32, 32, 3), 200, dtype=np.uint8)
    reflect = distortions.apply(image, "gaussian_blur", 3)
    zero = distortions.apply(image, "gaussian_blur", 3, border="constant")
    assert (reflect == 200).all()
    assert zero[0, 0, 0] < 150 and zero[16, 16, 0] == 200


@pytest.mark.parametrize("sigma", [5, 10, 20, 30, 40])
def test_noise_sigma_on_0_255_scale(sigma):
    image = np.full((200, 200, 3), 128, dtype=np.uint8)
    noisy = distortions.apply(image, "gaussian_noise", sigma, seed=1)
    diff = noisy.astype(np.float64) - 128
    assert abs(diff.std() - sigma) < 0.03 * sigma
    assert abs(diff.mean()) < 0.5
    # independent per channel: the channels are not copies of each other
    assert not np.array_equal(noisy[:, :, 0], noisy[:, :, 1])


def test_noise_clips_instead_of_wrapping():
    white = np.full((100, 100, 3), 250, dtype=np.uint8)
    black = np.full((100, 100, 3), 5, dtype=np.uint8)
    w = distortions.apply(white, "gaussian_noise", 40, seed=0)
    b = distortions.apply(black, "gaussian_noise", 40, seed=0)
    # with uint8 wrap-around, about half of these pixels would jump to the other end of the scale
    assert w.min() > 60 and (w == 255).mean() > 0.3
    assert b.max() < 200 and (b == 0).mean() > 0.3


@pytest.mark.parametrize("name,level", ALL_CELLS)
def test_shape_and_dtype_kept(name, level):
    image = textured_image(3)[:, :40]  # non-square
    out = distortions.apply(image, name, level, seed=0)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out is not image


@pytest.mark.parametrize("name,level", ALL_CELLS)
def test_deterministic_under_seed(name, level):
    image = textured_image(4)
    a = distortions.apply(image, name, level, seed=7)
    b = distortions.apply(image, name, level, seed=7)
    np.testing.assert_array_equal(a, b)
    if name == "gaussian_noise":
        assert not np.array_equal(a, distortions.apply(image, name, level, seed=8))


def test_level_zero_is_pristine():
    image = textured_image(5)
    for name in distortions.REGISTRY:
        np.testing.assert_array_equal(distortions.apply(image, name, 0), image)


def test_unknown_type_and_level_are_clear_errors():
    with pytest.raises(UnknownDistortionError, match="unknown distortion type 'fog'"):
        distortions.get("fog")
    with pytest.raises(UnknownDistortionError, match="level 7 is not a level of gaussian_blur"):
        distortions.apply(textured_image(0), "gaussian_blur", 7)
    with pytest.raises(UnknownDistortionError, match="unknown blur border"):
        distortions.apply(textured_image(0), "gaussian_blur", 1, border="wrap")


def test_registry_takes_a_new_distortion_in_one_entry(monkeypatch):
    monkeypatch.setattr(distortions, "REGISTRY", dict(distortions.REGISTRY))

    @distortions.register("invert", levels=(1,))
    def invert(image, level, rng):
        return 255 - image

    image = textured_image(1)
    np.testing.assert_array_equal(distortions.apply(image, "invert", 1), 255 - image)
    with pytest.raises(ValueError, match="registered twice"):
        distortions.register("invert", levels=(1,))(invert)


def test_sample_is_uniform_over_types_then_levels():
    rng = np.random.default_rng(0)
    draws = [distortions.sample(rng) for _ in range(6000)]
    types = [t for t, _ in draws]
    assert set(types) == set(distortions.DISTORTION_CLASSES)  # every routed type, motion blur too
    for name in distortions.DISTORTION_CLASSES:
        assert abs(types.count(name) / len(draws) - 1 / 4) < 0.03
    blur_levels = [lvl for t, lvl in draws if t == "gaussian_blur"]
    assert set(blur_levels) == {1, 2, 3, 4, 5}
    assert min(blur_levels.count(v) for v in range(1, 6)) > 0.15 * len(blur_levels)


@pytest.mark.parametrize("length", distortions.MOTION_BLUR_LENGTHS)
@pytest.mark.parametrize("angle", [0, 37, 90, 135])
def test_motion_blur_kernel_is_a_line_of_that_length_at_that_angle(length, angle):
    kernel = distortions.motion_blur_kernel(length, angle)
    assert kernel.shape == (length, length) and abs(kernel.sum() - 1) < 1e-5
    # the kernel's mass lies along the line: its second moments give the direction and the length
    # (a uniform line of length L has a variance of (L^2 - 1) / 12 along it)
    ys, xs = np.mgrid[:length, :length] - (length - 1) / 2
    cov = np.cov(np.stack([xs.ravel(), -ys.ravel()]), aweights=kernel.ravel(), bias=True)
    values, vectors = np.linalg.eigh(cov)
    direction = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1])) % 180
    assert min(abs(direction - angle), 180 - abs(direction - angle)) < 4
    assert values[1] == pytest.approx((length**2 - 1) / 12, rel=0.2)
    assert values[0] < 0.1 * values[1]


def test_motion_blur_smears_along_its_direction_only():
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[::4] = 255  # horizontal lines

    def blur(angle):
        kernel = distortions.motion_blur_kernel(11, angle)
        return cv2.filter2D(stripes, -1, kernel, borderType=cv2.BORDER_REFLECT_101)

    assert np.abs(blur(0).astype(int) - stripes).max() <= 1  # motion along the lines: untouched
    assert blur(90).std() < 0.2 * stripes.std()  # motion across them: smeared flat
    # the registered function draws its angle from the generator it is given
    angle = float(np.random.default_rng(0).uniform(0, 180))
    np.testing.assert_array_equal(distortions.apply(stripes, "motion_blur", 11, seed=0), blur(angle))


def test_motion_blur_levels_and_fallback_are_data_of_its_entry():
    entry = distortions.get("motion_blur")
    assert entry.levels == (7, 11, 15, 21, 27) and entry.fallback == "gaussian_blur"
    assert distortions.fallbacks(("pristine", "gaussian_blur", "motion_blur")) == {
        "motion_blur": "gaussian_blur"
    }
    # a fallback the classifier does not know is left out: the router could never reach it
    assert distortions.fallbacks(("pristine", "motion_blur")) == {}


def test_a_fallback_must_be_registered_first(monkeypatch):
    monkeypatch.setattr(distortions, "REGISTRY", dict(distortions.REGISTRY))
    with pytest.raises(ValueError, match="falls back to 'fog', which is not registered"):
        distortions.register("haze", levels=(1,), fallback="fog")(lambda image, level, rng: image)
