"""The NIfTI reader (radclip.data.nifti): canonical orientation, planes, rejected inputs.

Every fixture is written into tmp_path with the project's own writers, nibabel,
Pillow or numpy, so the tests need no data files and no network.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import PATIENT, ct_volume

from radclip.core.records import InputError
from radclip.data.dicom import load_dicom
from radclip.data.dicom_write import write_dicom_series
from radclip.data.nifti import load_nifti

# --------------------------------------------------------------------------- NIfTI


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_nifti_flipped_affine_loads_identically_after_canonical_reorientation(tmp_path):
    data = np.random.default_rng(0).normal(size=(6, 7, 5)).astype(np.float32)
    ras = np.diag([1.0, 1.0, 3.0, 1.0])
    flipped = np.diag([-1.0, -1.0, 3.0, 1.0])
    flipped[:3, 3] = [5.0, 6.0, 0.0]  # same voxel centres with i and j reversed
    plain = load_nifti(_save_nifti(tmp_path / "ras.nii", data, ras))
    mirrored = load_nifti(_save_nifti(tmp_path / "flipped.nii", data[::-1, ::-1, :].copy(), flipped))
    np.testing.assert_array_equal(plain.pixels, mirrored.pixels)
    assert plain.plane == "axial" and plain.spacing == pytest.approx((3.0, 1.0, 1.0))
    assert plain.pixels.shape == (5, 7, 6)


def test_nifti_axial_layout_matches_the_dicom_reader(tmp_path):
    volume = ct_volume((4, 6, 8))  # (z, y, x) as an axial DICOM series stores it
    write_dicom_series(tmp_path / "dicom", volume, uid_seed="same-anatomy", patient=PATIENT, spacing=(3.0, 1.0, 1.0))
    # NIfTI voxel (i=col, j=row, k=slice); LPS -> RAS negates x and y.
    voxels = volume.transpose(2, 1, 0).astype(np.float32)
    nifti = _save_nifti(tmp_path / "same.nii.gz", voxels, np.diag([-1.0, -1.0, 3.0, 1.0]))
    [from_dicom] = load_dicom(tmp_path / "dicom")
    from_nifti = load_nifti(nifti)
    np.testing.assert_array_equal(from_nifti.pixels, from_dicom.pixels)
    assert from_nifti.plane == from_dicom.plane == "axial"


def test_nifti_nii_and_nii_gz_load_the_same_float32_volume(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    plain = load_nifti(_save_nifti(tmp_path / "v.nii", data, np.eye(4)))
    gz = load_nifti(_save_nifti(tmp_path / "v.nii.gz", data, np.eye(4)))
    assert plain.pixels.dtype == np.float32 and plain.kind == "3d"
    np.testing.assert_array_equal(plain.pixels, gz.pixels)


@pytest.mark.parametrize(
    ("zooms", "plane", "shape"),
    [
        ((1, 1, 4), "axial", (6, 5, 4)),
        ((4, 1, 1), "sagittal", (4, 6, 5)),
        ((1, 4, 1), "coronal", (5, 6, 4)),
        ((2, 2, 2), "axial", (6, 5, 4)),
    ],
)
def test_nifti_plane_is_the_thickest_axis(tmp_path, zooms, plane, shape):
    image = load_nifti(_save_nifti(tmp_path / "v.nii", np.zeros((4, 5, 6), np.float32), np.diag([*zooms, 1.0])))
    assert image.plane == plane
    assert image.pixels.shape == shape
    assert image.spacing[0] == max(zooms)


def test_nifti_trailing_singleton_dimension_is_squeezed(tmp_path):
    image = load_nifti(_save_nifti(tmp_path / "v.nii.gz", np.ones((4, 5, 6, 1), np.float32), np.eye(4)))
    assert image.pixels.shape == (6, 5, 4)


def test_nifti_true_4d_volume_is_rejected(tmp_path):
    with pytest.raises(InputError, match=r"4D volume where 3D expected \(shape \(4, 5, 6, 3\)\)"):
        load_nifti(_save_nifti(tmp_path / "v.nii.gz", np.ones((4, 5, 6, 3), np.float32), np.eye(4)))


def test_nifti_nan_values_are_rejected(tmp_path):
    data = np.ones((4, 5, 6), np.float32)
    data[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        load_nifti(_save_nifti(tmp_path / "v.nii", data, np.eye(4)))


def test_nifti_2d_image_is_rejected(tmp_path):
    with pytest.raises(InputError, match="2D"):
        load_nifti(_save_nifti(tmp_path / "v.nii", np.ones((4, 5), np.float32), np.eye(4)))


def test_nifti_corrupt_file_is_an_input_error(tmp_path):
    path = tmp_path / "v.nii.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputError) as caught:
        load_nifti(path)
    assert caught.value.path == str(path)
