"""PNG/JPEG/BMP/TIFF reading (radclip.data.images): bit depth, colour, rejected files.

Every fixture is written into tmp_path with the project's own writers, nibabel,
Pillow or numpy, so the tests need no data files and no network.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from radclip.core.records import InputError
from radclip.data.images import load_image

# --------------------------------------------------------------------------- PNG / JPEG


def test_png_8bit_loads_as_float32_grayscale(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (9, 11), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.kind == "2d" and image.pixels.dtype == np.float32 and image.extra["bit_depth"] == 8
    np.testing.assert_array_equal(image.pixels, pixels)


def test_png_16bit_keeps_full_range(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 65536, (9, 11)).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.extra["bit_depth"] == 16
    np.testing.assert_array_equal(image.pixels, pixels)


def test_rgb_jpeg_is_converted_to_grayscale(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 200  # flat red: luma 0.299 * 200
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    image = load_image(tmp_path / "a.jpg")
    assert image.pixels.shape == (16, 16)
    assert float(image.pixels.mean()) == pytest.approx(0.299 * 200, abs=3)


def test_zero_byte_image_is_rejected(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        load_image(tmp_path / "empty.png")


def test_non_image_extension_is_rejected(tmp_path):
    (tmp_path / "report.txt").write_text("findings: none")
    with pytest.raises(InputError, match="not an image file"):
        load_image(tmp_path / "report.txt")


def test_image_whose_content_contradicts_its_extension_is_rejected(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "really_png.jpg", format="PNG")
    with pytest.raises(InputError, match="content is PNG"):
        load_image(tmp_path / "really_png.jpg")


def test_undecodable_and_truncated_images_are_rejected(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"\x00\x01 not an image at all")
    with pytest.raises(InputError, match="not a decodable PNG"):
        load_image(tmp_path / "junk.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot decode PNG"):
        load_image(tmp_path / "cut.png")


@pytest.mark.parametrize("name, pil_format", [("scan.bmp", "BMP"), ("scan.tif", "TIFF"), ("SCAN.TIFF", "TIFF")])
def test_bmp_and_tiff_images_load(tmp_path, name, pil_format):
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    Image.fromarray(pixels).save(tmp_path / name, format=pil_format)
    image = load_image(tmp_path / name)
    assert image.kind == "2d" and image.extra["bit_depth"] == 8
    np.testing.assert_array_equal(image.pixels, pixels.astype(np.float32))


def test_sixteen_bit_tiff_keeps_its_range(tmp_path):
    pixels = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "wide.tif", format="TIFF")
    image = load_image(tmp_path / "wide.tif")
    assert image.extra["bit_depth"] == 16 and image.pixels.max() == 63000.0
