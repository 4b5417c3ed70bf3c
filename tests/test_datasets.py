"""Data sources and splits."""

import numpy as np
import pytest

from core.errors import UserInputError
from training.datasets import DistortedDataset, DistortionPolicy, FashionMNIST, ImageFolderSource, load_source


def test_fashion_mnist_splits(fake_fashion_root):
    train = FashionMNIST("train", root=fake_fashion_root)
    val = FashionMNIST("val", root=fake_fashion_root)
    test = FashionMNIST("test", root=fake_fashion_root)
    assert (len(train), len(val), len(test)) == (180, 20, 60)
    assert not set(train._index) & set(val._index)
    assert set(train._index) | set(val._index) == set(range(200))
    assert train.image(0).shape == (28, 28, 3) and train.image(0).dtype == np.uint8
    assert 0 <= train.label(0) < 10
    assert len(FashionMNIST("train", root=fake_fashion_root, limit=5)) == 5


def test_fashion_mnist_missing_is_a_clear_error(tmp_path):
    with pytest.raises(UserInputError, match="install Debian's dataset-fashion-mnist"):
        FashionMNIST("train", root=tmp_path)


def test_image_folder_split_is_seeded_disjoint_and_complete(image_folder):
    splits = {s: ImageFolderSource(image_folder, s, seed=1) for s in ("train", "val", "test")}
    files = {s: {p for p, _ in src._files} for s, src in splits.items()}
    assert [len(files[s]) for s in ("train", "val", "test")] == [48, 6, 6]  # 80/10/10 of 3 x 20
    assert not files["train"] & files["val"] and not files["val"] & files["test"]
    assert not files["train"] & files["test"]
    assert len(files["train"] | files["val"] | files["test"]) == 60
    again = ImageFolderSource(image_folder, "val", seed=1)
    assert {p for p, _ in again._files} == files["val"]
    other = ImageFolderSource(image_folder, "val", seed=2)
    assert {p for p, _ in other._files} != files["val"]
    src = splits["test"]
    assert src.classes == ("000.class0", "001.class1", "002.class2")
    assert src.image(0).shape == (40, 40, 3)


def test_unreadable_image_in_folder_names_the_file(image_folder, tmp_path):
    root = tmp_path / "broken"
    (root / "cls").mkdir(parents=True)
    for i in range(10):
        (root / "cls" / f"{i}.png").write_bytes(b"not really a png")
    src = ImageFolderSource(root, "train")
    with pytest.raises(UserInputError, match=r"\.png: not a JPEG or PNG"):
        src.image(0)


def test_load_source_errors(tmp_path):
    with pytest.raises(UserInputError, match="neither 'fashion-mnist' nor an existing folder"):
        load_source(str(tmp_path / "nope"), "train")
    with pytest.raises(UserInputError, match="unknown split"):
        load_source("fashion-mnist", "validation")
    with pytest.raises(UserInputError, match="no class sub-folders"):
        load_source(str(tmp_path), "train")


def test_random_policy_is_reproducible_and_changes_with_epoch(fake_fashion_root):
    source = FashionMNIST("test", root=fake_fashion_root)
    ds = DistortedDataset(
        source, size=32, policy=DistortionPolicy(seed=5), representation="spectrum", spectra=("luma",)
    )
    first = [ds[i][2:] for i in range(30)]
    assert first == [ds[i][2:] for i in range(30)]
    assert {t for t, _ in first} == {0, 1, 2, 3}  # every class index, motion blur (3) too
    ds.set_epoch(1)
    assert first != [ds[i][2:] for i in range(30)]
    x, label, dclass, level = ds[0]
    assert tuple(x.shape) == (1, 32, 32) and label == source.label(0)
    with pytest.raises(ValueError, match="needs the classifier's spectra"):
        DistortedDataset(source, size=32, policy=DistortionPolicy(seed=5), representation="spectrum")


def test_image_folder_limit_keeps_every_class(image_folder):
    src = ImageFolderSource(image_folder, "train", limit=9)
    assert len(src) == 9
    assert {label for _, label in src._files} == {0, 1, 2}
