"""MedMNIST ``.npz`` files from a local path (no download).

A file holds ``<split>_images`` and ``<split>_labels`` per split: images
(N, H, W) or (N, H, W, 3) for 2D, (N, D, H, W) for 3D; labels (N, 1) for
multi-class or (N, K) of 0/1 for multi-label. Members are named
``"<split>:<index>"`` (e.g. ``"train:0"``).

Scanning (:func:`list_members`) reads only the label arrays and the image
array's header. Loading (:func:`load_member`) keeps the last few opened image
arrays in a small per-process cache, so a worker loading many members of one
split decompresses the array once.
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path

import numpy as np

from radclip.core.records import InputError, LoadedImage

_CACHED_ARRAYS = 4  # enough for one split's images and labels in each of two files


def _describe(exc: Exception) -> str:
    """The exception as one line (library messages can span several)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _array_shape(path: Path, key: str) -> tuple[int, ...]:
    """Shape of one array in an .npz from its .npy header, without reading the data."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {Path(n).stem: n for n in archive.namelist()}
            if key not in names:
                keys = ", ".join(sorted(names)) or "none"
                raise InputError(str(path), f"no {key!r} array in the .npz (has: {keys})")
            with archive.open(names[key]) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, _ = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, _, _ = np.lib.format.read_array_header_2_0(member)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(str(path), "file not found") from None
    except Exception as exc:  # bad zip, bad .npy header
        raise InputError(str(path), f"unreadable .npz file ({_describe(exc)})") from None
    return tuple(int(n) for n in shape)


@functools.lru_cache(maxsize=_CACHED_ARRAYS)
def _cached_array(path: str, modified_ns: int, key: str) -> np.ndarray:
    """One array of an .npz, read once per process (keyed by mtime so edits are seen)."""
    if not zipfile.is_zipfile(path):  # else np.load tries pickle and blames that
        raise InputError(path, "not an .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if key not in archive.files:
                keys = ", ".join(sorted(archive.files)) or "none"
                raise InputError(path, f"no {key!r} array in the .npz (has: {keys})")
            array = archive[key]
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except Exception as exc:
        raise InputError(path, f"unreadable .npz file ({_describe(exc)})") from None
    array.setflags(write=False)  # shared by every caller in this process
    return array


def _load_array(path: Path, key: str) -> np.ndarray:
    try:
        modified_ns = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise InputError(str(path), "file not found") from None
    return _cached_array(str(path), modified_ns, key)


def _image_layout(path: Path, key: str, shape: tuple[int, ...]) -> str:
    """ "2d", "2d-color" or "3d" from an image array's shape (N first)."""
    if len(shape) == 3:
        return "2d"
    if len(shape) == 4 and shape[3] in (1, 3):
        return "2d-color"
    if len(shape) == 4:
        return "3d"
    if len(shape) == 5 and shape[4] == 1:
        return "3d"
    raise InputError(str(path), f"{key!r} has shape {shape}; expected (N, H, W), (N, H, W, 3) or (N, D, H, W)")


def _label_vectors(path: Path, split: str, n_images: int) -> list[list[int]]:
    key = f"{split}_labels"
    labels = _load_array(path, key)
    if labels.ndim == 1:
        labels = labels[:, np.newaxis]
    if labels.ndim != 2 or labels.shape[0] != n_images:
        raise InputError(str(path), f"{key!r} has shape {labels.shape}; expected ({n_images}, K) to match the images")
    return labels.astype(np.int64).tolist()


def list_members(path: str | Path, splits: list[str] | tuple[str, ...]) -> list[tuple[str, list[int]]]:
    """Members ``"<split>:<index>"`` with their label vector, for the given splits, in order."""
    path = Path(path)
    members: list[tuple[str, list[int]]] = []
    for split in splits:
        image_key = f"{split}_images"
        shape = _array_shape(path, image_key)
        _image_layout(path, image_key, shape)
        for index, label in enumerate(_label_vectors(path, split, shape[0])):
            members.append((f"{split}:{index}", label))
    return members


def _parse_member(path: Path, member: str) -> tuple[str, int]:
    split, _, index = member.rpartition(":")
    split = split.removesuffix("_images")  # also accept "test_images:12"
    if not split or not index.isdigit():
        raise InputError(str(path), f"bad member name {member!r}; expected '<split>:<index>' like 'train:0'")
    return split, int(index)


def load_member(path: str | Path, member: str) -> LoadedImage:
    """One image of a MedMNIST file: float32 (H, W) for 2D (colour -> luminance), (D, H, W) for 3D."""
    path = Path(path)
    split, index = _parse_member(path, member)
    key = f"{split}_images"
    images = _load_array(path, key)
    layout = _image_layout(path, key, images.shape)
    if index >= images.shape[0]:
        raise InputError(str(path), f"member {member!r} out of range ({key!r} has {images.shape[0]} images)")
    pixels = np.array(images[index], dtype=np.float32)  # a copy: the cached array is shared
    if layout == "2d-color":
        # ITU-R 601-2 luma, as Pillow's convert("L") does for PNG/JPEG
        pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    elif pixels.ndim == 4:
        pixels = pixels[..., 0]
    if not np.all(np.isfinite(pixels)):
        raise InputError(str(path), f"member {member!r} contains NaN or Inf")
    if layout == "3d":
        # MedMNIST 3D volumes carry no geometry: stored order, assumed axial.
        return LoadedImage(pixels=np.ascontiguousarray(pixels), kind="3d", plane="axial", extra={"member": member})
    return LoadedImage(pixels=np.ascontiguousarray(pixels), kind="2d", extra={"member": member})
