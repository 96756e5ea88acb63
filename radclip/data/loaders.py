"""The one file-type dispatcher: which loader reads a path, and reading it.

Curation (through :mod:`radclip.data.sources`, which records the loader of every item)
and serving both decide here, so a file that curation would reject is rejected when
served too, with the same reason.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

import numpy as np

from radclip.core.records import InputError, LoadedImage
from radclip.data.images import IMAGE_FORMATS

Loader = Literal["image", "dicom", "nifti", "npz", "npy"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = tuple(sorted(IMAGE_FORMATS))
SUPPORTED_TYPES = f"{'/'.join(IMAGE_SUFFIXES)}, .dcm or a DICOM folder, .nii/.nii.gz, .npz (MedMNIST), .npy (arrays)"


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def loader_for(path: Path, is_dir: bool | None = None) -> tuple[Loader | None, str | None]:
    """``(loader, error)`` for a path.

    Stats the path once (``is_dir`` known from a directory listing skips that);
    a missing path keeps the loader its suffix implies, with an error.
    """
    name = path.name.lower()
    loader: Loader | None
    if name.endswith(NIFTI_SUFFIXES):
        loader = "nifti"
    elif name.endswith(IMAGE_SUFFIXES):
        loader = "image"
    elif name.endswith(".dcm"):
        loader = "dicom"
    elif name.endswith(".npz"):
        loader = "npz"
    elif name.endswith(".npy"):
        loader = "npy"
    else:
        loader = None
    if is_dir is None:
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except FileNotFoundError:
            return loader, "listed but not found on disk"
        except OSError as exc:
            return loader, f"cannot access: {exc.strerror or exc}"
    if is_dir:
        return "dicom", None  # a folder is one DICOM series
    if loader is not None:
        return loader, None
    if _has_dicom_preamble(path):
        return "dicom", None  # DICOM files are often named by UID or number, no .dcm
    suffix = "".join(path.suffixes[-1:]) or "no extension"
    return None, f"unsupported file type '{suffix}' (supported: {SUPPORTED_TYPES})"


def load(path: str | Path, loader: Loader, member: str | None = None) -> list[LoadedImage]:
    """Read a path with the named loader: one image, or one per DICOM series."""
    if loader == "image":
        from radclip.data.images import load_image

        return [load_image(path)]
    if loader == "dicom":
        from radclip.data.dicom import load_dicom

        return load_dicom(path)
    if loader == "nifti":
        from radclip.data.nifti import load_nifti

        return [load_nifti(path)]
    if loader == "npz":
        from radclip.data.medmnist import load_member

        if member is None:
            raise InputError(str(path), "a MedMNIST .npz needs a member (e.g. 'test_images:12')")
        return [load_member(path, member)]
    if loader == "npy":
        return [load_npy(Path(path))]
    raise InputError(str(path), f"no loader named {loader!r}")


def load_file(path: str | Path) -> LoadedImage:
    """One file or DICOM series folder, by the dispatcher's decision (what serving reads)."""
    path = Path(path)
    loader, problem = loader_for(path)
    if problem is not None:
        raise InputError(str(path), "file not found" if problem.startswith("listed but not found") else problem)
    assert loader is not None  # loader_for returns a loader whenever it reports no problem
    images = load(path, loader)
    if len(images) != 1:
        raise InputError(str(path), f"{len(images)} DICOM series found; give one series (a file or a series folder)")
    return images[0]


def load_npy(path: Path) -> LoadedImage:
    try:
        array = np.load(path, allow_pickle=False)  # never unpickle a request's file
    except FileNotFoundError:
        raise InputError(str(path), "file not found") from None
    except (OSError, ValueError) as error:
        raise InputError(str(path), f"not a readable .npy array ({type(error).__name__}: {error})") from None
    return array_input(array, str(path))


def array_input(array: np.ndarray, source: str = "<array>") -> LoadedImage:
    """A NumPy array as an input: 2D is an image (uint8 = display values), 3D a volume (axial)."""
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise InputError(source, f"{array.ndim}D array (shape {array.shape}) where a 2D image or 3D volume "
                                 "was expected")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(source, f"array of {array.dtype} where real numbers were expected")
    if array.ndim == 2:
        return LoadedImage(pixels=array.astype(np.float32), kind="2d",
                           extra={"bit_depth": 8} if array.dtype == np.uint8 else {})
    return LoadedImage(pixels=array.astype(np.float32), kind="3d", plane="axial")
