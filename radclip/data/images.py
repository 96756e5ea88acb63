"""Read PNG/JPEG (and other common raster) files into 2D grayscale :class:`LoadedImage`.

Pixels are float32 (H, W) in the file's own range: 0..255 for 8-bit, 0..65535
for 16-bit PNG (``extra["bit_depth"]``, 8/16/32, says which, so curation can
normalise).
Colour is reduced to luminance with Pillow (ITU-R 601-2). The extension must
name an image format and the content must be that format: a mislabelled file
is a data problem worth reporting, not something to guess around.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from radclip.core.records import InputError, LoadedImage

# Extension -> the Pillow format name its content must have.
IMAGE_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}

# Modes whose values are already a single grey channel (16/32-bit integer or float).
_WIDE_GRAY_MODES = {"I;16", "I;16B", "I;16L", "I", "F"}


def _describe(exc: Exception) -> str:
    """The exception as one line (library messages can span several)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def load_image(path: str | Path) -> LoadedImage:
    """Load one raster image as float32 grayscale (H, W), kind "2d"."""
    path = Path(path)
    suffix = path.suffix.lower()
    expected = IMAGE_FORMATS.get(suffix)
    if expected is None:
        known = ", ".join(sorted(IMAGE_FORMATS))
        raise InputError(str(path), f"not an image file: extension {suffix or '(none)'!r} is not one of {known}")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(str(path), "file not found") from None
    if size == 0:
        raise InputError(str(path), "empty file (0 bytes)")

    try:
        with Image.open(path) as image:
            if image.format != expected:
                raise InputError(str(path), f"content is {image.format}, but the extension {suffix!r} says {expected}")
            image.load()  # decode now, inside the try: truncated data fails here
            bit_depth = 16 if image.mode.startswith("I;16") else 32 if image.mode in ("I", "F") else 8
            if image.mode in _WIDE_GRAY_MODES:
                pixels = np.asarray(image, dtype=np.float32)
            else:
                pixels = np.asarray(image.convert("L"), dtype=np.float32)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(str(path), f"not a decodable {expected} image (unrecognised content)") from None
    except Exception as exc:  # truncated/corrupt streams, decompression bombs, ...
        raise InputError(str(path), f"cannot decode {expected} image ({_describe(exc)})") from None

    if pixels.ndim != 2 or pixels.size == 0:
        raise InputError(str(path), f"unexpected decoded shape {pixels.shape}")
    if not np.all(np.isfinite(pixels)):
        raise InputError(str(path), "pixel values contain NaN or Inf")
    return LoadedImage(pixels=pixels, kind="2d", extra={"bit_depth": bit_depth})
