"""MedMNIST .npz members (radclip.data.medmnist): labels, RGB, volumes, errors.

Every fixture is written into tmp_path with the project's own writers, nibabel,
Pillow or numpy, so the tests need no data files and no network.
"""

from __future__ import annotations

import numpy as np
import pytest

from radclip.core.records import InputError
from radclip.data.medmnist import list_members, load_member

# --------------------------------------------------------------------------- MedMNIST


def test_medmnist_2d_members_list_labels_and_load_images(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "pneumoniamnist.npz"
    train = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    np.savez_compressed(
        path,
        train_images=train,
        train_labels=np.array([[0], [1], [1]]),
        val_images=train[:2],
        val_labels=np.array([[1], [0]]),
    )
    members = list_members(path, ["train", "val"])
    assert members == [("train:0", [0]), ("train:1", [1]), ("train:2", [1]), ("val:0", [1]), ("val:1", [0])]
    image = load_member(path, "train:2")
    assert image.kind == "2d" and image.pixels.dtype == np.float32
    np.testing.assert_array_equal(image.pixels, train[2])


def test_medmnist_rgb_and_multilabel_members(tmp_path):
    path = tmp_path / "rgb.npz"
    images = np.zeros((2, 28, 28, 3), np.uint8)
    images[1, ..., 1] = 100
    np.savez(path, test_images=images, test_labels=np.array([[1, 0, 1], [0, 0, 0]]))
    assert list_members(path, ["test"]) == [("test:0", [1, 0, 1]), ("test:1", [0, 0, 0])]
    image = load_member(path, "test:1")
    assert image.pixels.shape == (28, 28)
    assert float(image.pixels.mean()) == pytest.approx(58.7, abs=0.1)


def test_medmnist_3d_member_is_a_volume(tmp_path):
    path = tmp_path / "organmnist3d.npz"
    volumes = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 28), dtype=np.uint8)
    np.savez_compressed(path, train_images=volumes, train_labels=np.array([[3], [7]]))
    assert list_members(path, ["train"]) == [("train:0", [3]), ("train:1", [7])]
    image = load_member(path, "train:1")
    assert image.kind == "3d" and image.plane == "axial" and image.pixels.shape == (28, 28, 28)
    np.testing.assert_array_equal(image.pixels, volumes[1])


def test_medmnist_missing_key_and_bad_shapes_are_input_errors(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(
        path,
        train_images=np.zeros((2, 28), np.uint8),
        train_labels=np.zeros((2, 1)),
        val_images=np.zeros((2, 28, 28), np.uint8),
        val_labels=np.zeros((3, 1)),
    )
    with pytest.raises(InputError, match="no 'test_images' array"):
        list_members(path, ["test"])
    with pytest.raises(InputError, match="has shape"):
        list_members(path, ["train"])
    with pytest.raises(InputError, match="to match the images"):
        list_members(path, ["val"])
    with pytest.raises(InputError, match="out of range"):
        load_member(path, "val:5")
    with pytest.raises(InputError, match="bad member name"):
        load_member(path, "val")
