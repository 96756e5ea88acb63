"""Format readers (DICOM, NIfTI, PNG/JPEG, MedMNIST) and the deterministic DICOM writers.

Every fixture is written into tmp_path with the project's own writers, nibabel,
Pillow or numpy, so the tests need no data files and no network.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from radclip.core.records import InputError
from radclip.data.dicom import load_dicom
from radclip.data.dicom_write import PHI_TAGS, write_dicom_image, write_dicom_multiframe, write_dicom_series
from radclip.data.images import load_image
from radclip.data.loaders import SUPPORTED_TYPES, load, load_file, loader_for
from radclip.data.medmnist import list_members, load_member
from radclip.data.nifti import load_nifti

PATIENT = {
    "PatientName": "DOE^JANE",
    "PatientID": "PID-123",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC9",
    "InstitutionName": "General Hospital",
    "StudyDate": "20200101",
}


def ct_volume(shape=(6, 10, 12), seed=0) -> np.ndarray:
    """Integer HU values (exactly representable with slope 1, intercept -1024)."""
    return np.random.default_rng(seed).integers(-1000, 2000, shape).astype(np.float64)


# --------------------------------------------------------------------------- DICOM writer


def test_dicom_writer_is_byte_identical_across_runs(tmp_path):
    image = ct_volume((1, 16, 16))[0] + 1024
    volume = ct_volume()
    for run in ("a", "b"):
        write_dicom_image(tmp_path / run / "image.dcm", image, uid_seed="img", patient=PATIENT)
        write_dicom_series(tmp_path / run / "series", volume, uid_seed="ser", patient=PATIENT)
        write_dicom_multiframe(tmp_path / run / "multi.dcm", volume + 1024, uid_seed="mf", patient=PATIENT)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 2 + volume.shape[0]
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_dicom_writer_uids_depend_on_seed_and_phi_is_written(tmp_path):
    image = np.zeros((8, 8))
    first = pydicom.dcmread(write_dicom_image(tmp_path / "1.dcm", image, uid_seed="one", patient=PATIENT))
    second = pydicom.dcmread(write_dicom_image(tmp_path / "2.dcm", image, uid_seed="two", patient={}))
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.PatientID == "PID-123" and first.InstitutionName == "General Hospital"
    assert all(keyword in second for keyword in PHI_TAGS)  # neutral defaults fill missing keys
    assert first.SOPClassUID.name == "Digital X-Ray Image Storage - For Presentation"


def test_dicom_series_file_names_do_not_sort_in_slice_order(tmp_path):
    paths = write_dicom_series(tmp_path, ct_volume(), uid_seed="names", patient=PATIENT)
    assert sorted(paths) != paths
    assert any(p.suffix == "" for p in paths)  # scanner-style names without extension


# --------------------------------------------------------------------------- DICOM reader


def test_dicom_single_file_round_trip_recovers_ct_hounsfield_units(tmp_path):
    hu = ct_volume((1, 16, 20))[0]
    path = write_dicom_image(
        tmp_path / "ct.dcm", hu, uid_seed="ct", patient=PATIENT, modality="CT", rescale=(1.0, -1024.0), window=(40, 400)
    )
    assert pydicom.dcmread(path).pixel_array.min() >= 0  # stored unsigned: the rescale matters
    [image] = load_dicom(path)
    assert image.kind == "2d" and image.pixels.dtype == np.float32
    np.testing.assert_array_equal(image.pixels, hu)
    assert image.window == (40.0, 400.0)
    assert image.dicom_modality == "CT"
    assert image.patient_id == "PID-123"
    assert image.study_id == str(pydicom.dcmread(path).StudyInstanceUID)


def test_dicom_fractional_rescale_slope_is_applied(tmp_path):
    values = np.arange(0, 64, dtype=np.float64).reshape(8, 8) * 0.5 - 3.0
    path = write_dicom_image(tmp_path / "mr.dcm", values, uid_seed="s", patient=PATIENT, rescale=(0.5, -3.0))
    [image] = load_dicom(path)
    np.testing.assert_allclose(image.pixels, values)


def test_dicom_monochrome1_is_inverted_back_to_display_values(tmp_path):
    display = np.tile(np.linspace(0, 4095, 32).round(), (16, 1))
    path = write_dicom_image(
        tmp_path / "cr.dcm", display, uid_seed="m1", patient=PATIENT, photometric="MONOCHROME1", window=(1000, 500)
    )
    stored = pydicom.dcmread(path).pixel_array
    assert stored[0, 0] > stored[0, -1]  # the file really holds the inverted grey scale
    [image] = load_dicom(path)
    np.testing.assert_array_equal(image.pixels, display)
    assert image.window == (1000.0, 500.0)


def test_dicom_series_with_shuffled_names_is_reassembled_in_position_order(tmp_path):
    volume = ct_volume()
    write_dicom_series(tmp_path / "series", volume, uid_seed="shuffled", patient=PATIENT, spacing=(2.5, 0.7, 0.8))
    [image] = load_dicom(tmp_path / "series")
    assert image.kind == "3d" and image.plane == "axial"
    np.testing.assert_array_equal(image.pixels, volume)
    assert image.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert image.part == "series-0"


def test_dicom_series_falls_back_to_instance_number_without_positions(tmp_path):
    volume = ct_volume((4, 6, 6))
    for path in write_dicom_series(tmp_path, volume, uid_seed="nopos", patient=PATIENT):
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    [image] = load_dicom(tmp_path)
    np.testing.assert_array_equal(image.pixels, volume)


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_dicom_plane_detected_from_slice_normal(tmp_path, plane):
    volume = ct_volume((4, 6, 8))
    write_dicom_series(
        tmp_path / "series", volume, uid_seed=plane, patient=PATIENT, plane=plane, spacing=(3.0, 1.0, 2.0)
    )
    [image] = load_dicom(tmp_path / "series")
    assert image.plane == plane
    np.testing.assert_array_equal(image.pixels, volume)
    assert image.spacing == pytest.approx((3.0, 1.0, 2.0))


def test_dicom_multiframe_file_is_one_volume_with_per_frame_positions(tmp_path):
    volume = ct_volume((5, 8, 9)) + 1000
    path = write_dicom_multiframe(
        tmp_path / "enhanced.dcm", volume, uid_seed="mf", patient=PATIENT, plane="coronal", spacing=(2.0, 0.5, 0.5)
    )
    ds = pydicom.dcmread(path)
    assert ds.NumberOfFrames == 5 and "PlanePositionSequence" in ds.PerFrameFunctionalGroupsSequence[0]
    [image] = load_dicom(path)
    assert image.kind == "3d" and image.plane == "coronal"
    np.testing.assert_array_equal(image.pixels, volume)
    assert image.spacing == pytest.approx((2.0, 0.5, 0.5))
    assert image.dicom_modality == "MR"


def test_dicom_two_series_in_one_folder_become_two_volumes(tmp_path):
    first, second = ct_volume((3, 6, 6), seed=1), ct_volume((4, 5, 7), seed=2)
    write_dicom_series(tmp_path, first, uid_seed="first", patient=PATIENT)
    write_dicom_series(tmp_path, second, uid_seed="second", patient=PATIENT, plane="sagittal")
    (tmp_path / "notes.txt").write_text("not DICOM")
    (tmp_path / "DICOMDIR").write_bytes(b"ignored index")
    images = load_dicom(tmp_path)
    assert [image.part for image in images] == ["series-0", "series-1"]
    by_shape = {image.pixels.shape: image for image in images}
    np.testing.assert_array_equal(by_shape[first.shape].pixels, first)
    np.testing.assert_array_equal(by_shape[second.shape].pixels, second)
    assert by_shape[second.shape].plane == "sagittal"
    uids = {str(pydicom.dcmread(p).SeriesInstanceUID) for p in tmp_path.glob("*.dcm")}
    assert not any(uid in image.part for image in images for uid in uids)
    assert [image.part for image in load_dicom(tmp_path)] == ["series-0", "series-1"]  # stable


def test_dicom_truncated_file_raises_input_error_naming_it(tmp_path):
    paths = write_dicom_series(tmp_path, ct_volume((3, 16, 16)), uid_seed="trunc", patient=PATIENT, shuffle_names=False)
    broken = paths[1]
    broken.write_bytes(broken.read_bytes()[:-200])
    with pytest.raises(InputError) as caught:
        load_dicom(tmp_path)
    assert caught.value.path == str(broken)


def test_dicom_file_with_dcm_extension_that_is_not_dicom_is_an_error(tmp_path):
    fake = tmp_path / "scan.dcm"
    fake.write_text("definitely not DICOM " * 20)
    with pytest.raises(InputError, match="not a DICOM file") as caught:
        load_dicom(tmp_path)
    assert caught.value.path == str(fake)


def test_dicom_without_pixel_data_is_an_error(tmp_path):
    path = write_dicom_image(tmp_path / "a.dcm", np.zeros((4, 4)), uid_seed="np", patient=PATIENT)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(InputError, match="no pixel data"):
        load_dicom(path)


def test_dicom_slices_of_different_shapes_in_one_series_are_an_error(tmp_path):
    write_dicom_series(tmp_path, ct_volume((3, 8, 8)), uid_seed="same-series", patient=PATIENT, shuffle_names=False)
    write_dicom_series(tmp_path, ct_volume((2, 6, 6)), uid_seed="same-series", patient=PATIENT, shuffle_names=True)
    with pytest.raises(InputError, match="different shapes"):
        load_dicom(tmp_path)


def test_dicom_duplicate_slice_positions_are_an_error(tmp_path):
    paths = write_dicom_series(tmp_path, ct_volume((3, 8, 8)), uid_seed="dup", patient=PATIENT, shuffle_names=False)
    shutil.copy(paths[0], tmp_path / "copy_of_first.dcm")
    with pytest.raises(InputError, match="duplicate slice position"):
        load_dicom(tmp_path)


def test_dicom_rle_lossless_decodes_with_pydicom_alone(tmp_path):
    hu = ct_volume((1, 12, 12))[0]
    path = write_dicom_image(
        tmp_path / "rle.dcm", hu, uid_seed="rle", patient=PATIENT, modality="CT", rescale=(1.0, -1024.0)
    )
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(path)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == RLELossless
    [image] = load_dicom(path)
    np.testing.assert_array_equal(image.pixels, hu)


def _with_encapsulated_junk(path: Path, syntax) -> Path:
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 junk, not a codestream"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    return path


def test_dicom_syntax_without_installed_decoder_names_syntax_and_packages(tmp_path):
    path = write_dicom_image(tmp_path / "jls.dcm", np.zeros((8, 8)), uid_seed="jls", patient=PATIENT)
    _with_encapsulated_junk(path, JPEGLSLossless)
    with pytest.raises(InputError) as caught:
        load_dicom(path)
    assert caught.value.path == str(path)
    assert "JPEG-LS" in caught.value.reason
    assert "pylibjpeg" in caught.value.reason or "gdcm" in caught.value.reason


def test_dicom_undecodable_compressed_pixel_data_is_a_clear_error(tmp_path):
    # Pillow may provide a JPEG 2000 decoder here; either way the reason names the syntax.
    path = write_dicom_image(tmp_path / "j2k.dcm", np.zeros((8, 8)), uid_seed="j2k", patient=PATIENT)
    _with_encapsulated_junk(path, JPEG2000Lossless)
    with pytest.raises(InputError, match="JPEG 2000") as caught:
        load_dicom(path)
    assert caught.value.path == str(path)


def test_dicom_reports_the_files_own_window_of_2d_images(tmp_path):
    # Which window an image is shown with is the preprocessing contract's rule; the loader only reports the file's.
    path = write_dicom_image(tmp_path / "w.dcm", np.zeros((4, 4)), uid_seed="w", patient=PATIENT, window=(1, 2))
    [image] = load_dicom(path)
    assert image.window == (1.0, 2.0)


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
