"""The one file-type dispatcher (radclip.data.loaders): loader_for, load_file, .npy inputs.

Every fixture is written into tmp_path with the project's own writers, nibabel,
Pillow or numpy, so the tests need no data files and no network.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from radclip.core.records import InputError
from radclip.data.loaders import SUPPORTED_TYPES, load, load_file, loader_for

# --------------------------------------------------------------------------- the dispatcher (radclip.data.loaders)


def test_loader_for_maps_every_supported_type(tmp_path):
    expected = {"a.png": "image", "b.JPG": "image", "c.jpeg": "image", "d.bmp": "image", "e.tif": "image",
                "f.TIFF": "image", "g.dcm": "dicom", "h.nii": "nifti", "i.nii.gz": "nifti", "j.npz": "npz",
                "k.npy": "npy"}
    for name, loader in expected.items():
        (tmp_path / name).write_bytes(b"x")
        assert loader_for(tmp_path / name) == (loader, None), name
    (tmp_path / "series").mkdir()
    assert loader_for(tmp_path / "series") == ("dicom", None)
    assert loader_for(tmp_path / "gone.png") == ("image", "listed but not found on disk")
    (tmp_path / "anim.gif").write_bytes(b"GIF89a")
    assert loader_for(tmp_path / "anim.gif") == (None, f"unsupported file type '.gif' (supported: {SUPPORTED_TYPES})")
    for named in (".bmp", ".tif", ".tiff", ".npy", ".npz", ".dcm", ".nii.gz"):
        assert named in SUPPORTED_TYPES


def test_load_file_reads_bmp_tiff_and_npy(tmp_path):
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(pixels).save(tmp_path / "x.bmp")
    Image.fromarray(pixels).save(tmp_path / "x.tiff")
    for name in ("x.bmp", "x.tiff"):
        image = load_file(tmp_path / name)
        assert image.kind == "2d"
        np.testing.assert_array_equal(image.pixels, pixels)

    np.save(tmp_path / "image.npy", pixels)  # uint8: display values, like an 8-bit image
    image = load_file(tmp_path / "image.npy")
    assert image.kind == "2d" and image.extra == {"bit_depth": 8} and image.pixels.dtype == np.float32
    np.testing.assert_array_equal(image.pixels, pixels)
    np.save(tmp_path / "hu.npy", np.full((16, 16), -1000, np.int16))
    assert load_file(tmp_path / "hu.npy").extra == {}  # not 8-bit: not display values
    volume = np.random.default_rng(0).normal(size=(4, 8, 8))
    np.save(tmp_path / "volume.npy", volume)
    loaded = load_file(tmp_path / "volume.npy")
    assert (loaded.kind, loaded.plane) == ("3d", "axial")
    np.testing.assert_allclose(loaded.pixels, volume.astype(np.float32))
    assert [i.kind for i in load(tmp_path / "volume.npy", "npy")] == ["3d"]


def test_load_file_rejects_bad_npy_and_unsupported_or_missing_files(tmp_path):
    np.save(tmp_path / "four_d.npy", np.zeros((2, 3, 4, 5)))
    with pytest.raises(InputError, match=r"4D array"):
        load_file(tmp_path / "four_d.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not a readable .npy array"):  # never unpickled
        load_file(tmp_path / "objects.npy")
    np.save(tmp_path / "text.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(InputError, match="real numbers"):
        load_file(tmp_path / "text.npy")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match=r"unsupported file type '\.txt'") as caught:
        load_file(tmp_path / "notes.txt")
    assert caught.value.path == str(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="file not found"):
        load_file(tmp_path / "gone.npy")
