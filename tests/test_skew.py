"""Training/serving skew: the serving path and the training path give the same tensors.

Training path: `DistortedDataset` (source image -> resize -> distort -> model input or spectrum).
Serving path: the device encodes the distorted image as PNG and sends it; the handler decodes the
bytes (`core.imaging.decode_image`) and calls the same `Preprocessing` / `classifier_input`.
Both must agree bit for bit (PNG is lossless and resizing an image already at the model size is
the identity).
"""

import numpy as np
import pytest

from core.imaging import Preprocessing, decode_image, encode_image
from core.spectrum import SPECTRA, classifier_input
from training.datasets import DistortedDataset, DistortionPolicy, FashionMNIST, distorted_image

CELLS = [
    ("pristine", 0),
    ("gaussian_blur", 1),
    ("gaussian_blur", 5),
    ("gaussian_noise", 5),
    ("gaussian_noise", 40),
]


class ColourSource:
    """Colour photos' stand-in: Fashion-MNIST is gray, so its chroma is zero until noise is added."""

    classes = ("x",)

    def __len__(self):
        return 8

    def image(self, i):
        from tests.conftest import textured_image

        return textured_image(i, 40)

    def label(self, i):
        return 0


@pytest.mark.parametrize("name,level", CELLS)
@pytest.mark.parametrize("size", [64, 96])
@pytest.mark.parametrize("spectra,colour", [(("luma",), False), (SPECTRA, False), (SPECTRA, True)])
def test_serving_path_equals_training_path(fake_fashion_root, name, level, size, spectra, colour):
    source = ColourSource() if colour else FashionMNIST("test", root=fake_fashion_root)
    policy = DistortionPolicy(fixed=(name, level), seed=3)
    image_ds = DistortedDataset(source, size=size, policy=policy, representation="image")
    spec_ds = DistortedDataset(source, size=size, policy=policy, representation="spectrum", spectra=spectra)
    preprocessing = Preprocessing(size=size)
    for index in (0, 7):
        # what the device would send: the distorted image, losslessly encoded
        sent, _, _ = distorted_image(source, index, size, policy)
        received = decode_image(encode_image(sent, "png"))
        np.testing.assert_array_equal(preprocessing.model_input(received), image_ds[index][0].numpy())
        served = classifier_input(received, size, spectra=spectra)
        assert served.shape[0] == len(spectra)
        np.testing.assert_array_equal(served, spec_ds[index][0].numpy())


def test_jpeg_on_the_wire_stays_within_documented_tolerance(fake_fashion_root):
    # JPEG is lossy: quality 95 moves the normalised input by < 0.1 on average (0.02 of its range)
    source = FashionMNIST("test", root=fake_fashion_root)
    policy = DistortionPolicy(fixed=("gaussian_blur", 2), seed=3)
    sent, _, _ = distorted_image(source, 0, 64, policy)
    train_x = DistortedDataset(source, size=64, policy=policy)[0][0].numpy()
    serve_x = Preprocessing(size=64).model_input(decode_image(encode_image(sent, "jpg", jpeg_quality=95)))
    assert np.abs(serve_x - train_x).mean() < 0.1


def test_large_images_take_the_same_path_in_training_and_serving(image_folder, tmp_path):
    """A 200-px photo: training resizes it to the model size (then distorts, here pristine) and
    takes the spectrum at the classifier's size; serving receives the 200-px file itself."""
    from core import distortions
    from core.imaging import resize
    from tests.conftest import textured_image
    from training.datasets import ImageFolderSource

    root = tmp_path / "big" / "cls"
    root.mkdir(parents=True)
    for i in range(10):
        (root / f"{i}.png").write_bytes(encode_image(resize(textured_image(i, 50), 200)))
    source = ImageFolderSource(tmp_path / "big", "train")
    policy = DistortionPolicy(fixed=("pristine", 0))
    spec = DistortedDataset(
        source, size=64, policy=policy, representation="spectrum", spectrum_size=128, spectra=SPECTRA
    )
    model = DistortedDataset(source, size=64, policy=policy, representation="image")
    received = decode_image(source._files[0][0].read_bytes())
    assert received.shape == (200, 200, 3)
    np.testing.assert_array_equal(
        classifier_input(received, 128, image_size=64, spectra=SPECTRA), spec[0][0].numpy()
    )
    np.testing.assert_array_equal(Preprocessing(size=64).model_input(received), model[0][0].numpy())
    # and without the intermediate size the classifier would see another spectrum
    assert not np.array_equal(classifier_input(received, 128, spectra=SPECTRA), spec[0][0].numpy())
    assert distortions.get("pristine").levels == (0,)
