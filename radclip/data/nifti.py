"""Read NIfTI volumes (``.nii``, ``.nii.gz``) into :class:`LoadedImage` records.

The image is first reoriented to the closest canonical (RAS+) voxel order with
nibabel, so the same anatomy stored with a flipped or permuted affine loads
identically. The acquisition plane is the axis with the largest voxel size
(thick slices; isotropic -> axial), and the array is then laid out as (S, H, W)
in the same display orientation as DICOM volumes (see :mod:`radclip.data.dicom`):

* axial: (inferior -> superior, anterior -> posterior, patient right -> left),
  i.e. anterior at the top of each slice, radiological left-right;
* coronal: (anterior -> posterior, superior -> inferior, right -> left);
* sagittal: (left -> right, superior -> inferior, anterior -> posterior).

``spacing`` is reordered to match (slice, row, column), in mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from nibabel.spatialimages import SpatialImage

from radclip.core.records import InputError, LoadedImage, Plane
from radclip.data.dicom import orient_volume

# Canonical RAS+ voxel axes i, j, k expressed as LPS directions (DICOM's patient axes).
_RAS_AXES_IN_LPS = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
_PLANE_OF_CANONICAL_AXIS: tuple[Plane, Plane, Plane] = ("sagittal", "coronal", "axial")  # i (x), j (y), k (z)

# Voxel sizes within this relative margin count as equal (isotropic -> axial).
_ISOTROPY_TOLERANCE = 0.01


def _describe(exc: Exception) -> str:
    """The exception as one line (library messages can span several)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _acquisition_plane(zooms: Sequence[float]) -> Plane:
    """The thickest axis is the slice axis; no single thickest axis -> axial."""
    sizes = np.asarray(zooms, dtype=float)
    thickest = int(np.argmax(sizes))
    others = np.delete(sizes, thickest)
    if np.all(sizes[thickest] > others * (1 + _ISOTROPY_TOLERANCE)):
        return _PLANE_OF_CANONICAL_AXIS[thickest]
    return "axial"


def load_nifti(path: str | Path) -> LoadedImage:
    """Load a 3D NIfTI volume as float32 (S, H, W) in display orientation (see module doc)."""
    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise InputError(str(path), f"not a NIfTI file name (expected .nii or .nii.gz, got {path.name!r})")
    try:
        if path.stat().st_size == 0:
            raise InputError(str(path), "empty file (0 bytes)")
        # .nii/.nii.gz names (checked above) load as Nifti1Image/Nifti2Image; nib.load is typed FileBasedImage
        image = cast(SpatialImage, nib.load(path))
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(str(path), "file not found") from None
    except Exception as exc:  # nibabel raises several types for damaged headers/archives
        raise InputError(str(path), f"unreadable NIfTI file ({_describe(exc)})") from None

    shape = tuple(int(n) for n in image.shape)
    if len(shape) > 3 and all(n == 1 for n in shape[3:]):
        image = nib.funcs.squeeze_image(image)  # (X, Y, Z, 1): a 3D volume with a singleton time axis
        shape = tuple(int(n) for n in image.shape)
    if len(shape) > 3:
        raise InputError(str(path), f"4D volume where 3D expected (shape {shape})")
    if len(shape) < 3 or min(shape) == 1:
        raise InputError(str(path), f"2D image where a 3D volume is expected (shape {shape})")

    try:
        canonical = nib.as_closest_canonical(image)
        data = canonical.get_fdata(dtype=np.float32)  # applies scl_slope / scl_inter
    except Exception as exc:
        raise InputError(str(path), f"cannot read NIfTI voxel data ({_describe(exc)})") from None
    if not np.all(np.isfinite(data)):
        raise InputError(str(path), "voxel values contain NaN or Inf")

    zooms = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    if any(z <= 0 for z in zooms):
        raise InputError(str(path), f"invalid voxel sizes {zooms}")
    plane = _acquisition_plane(zooms)
    volume, spacing = orient_volume(data, _RAS_AXES_IN_LPS, zooms, plane)
    return LoadedImage(
        pixels=np.ascontiguousarray(volume, dtype=np.float32),
        kind="3d",
        plane=plane,
        spacing=spacing,
    )
