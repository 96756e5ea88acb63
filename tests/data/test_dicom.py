"""The DICOM reader (radclip.data.dicom): rescale, photometric, series assembly, planes,
multi-frame, compressed syntaxes and the errors it names.

Every fixture is written into tmp_path with the project's own writers, nibabel,
Pillow or numpy, so the tests need no data files and no network.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import PATIENT, ct_volume
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGLSLossless, RLELossless

from radclip.core.records import InputError
from radclip.data.dicom import load_dicom
from radclip.data.dicom_write import write_dicom_image, write_dicom_multiframe, write_dicom_series

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


def _compressed(path: Path, syntax, **options) -> Path:
    """The file re-encoded in ``syntax`` by pydicom's encoders (the plugins' own), checked to carry it."""
    ds = pydicom.dcmread(path)
    ds.compress(syntax, generate_instance_uid=False, **options)
    ds.save_as(path)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    return path


def test_dicom_rle_lossless_decodes_with_pydicom_alone(tmp_path):
    hu = ct_volume((1, 12, 12))[0]
    path = write_dicom_image(
        tmp_path / "rle.dcm", hu, uid_seed="rle", patient=PATIENT, modality="CT", rescale=(1.0, -1024.0)
    )
    [image] = load_dicom(_compressed(path, RLELossless))
    np.testing.assert_array_equal(image.pixels, hu)


def _with_encapsulated_junk(path: Path, syntax) -> Path:
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 junk, not a codestream"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    return path


def test_dicom_syntax_without_installed_decoder_names_syntax_and_packages(tmp_path, monkeypatch):
    """The declared decoders cover every syntax pydicom knows; an environment without them is simulated."""
    import radclip.data.dicom as dicom

    class Missing:
        is_available = False
        missing_dependencies = ["pyjpegls>=1.2", "pylibjpeg-libjpeg>=2.1"]

    monkeypatch.setattr(dicom, "get_decoder", lambda syntax: Missing())
    path = write_dicom_image(tmp_path / "jls.dcm", np.zeros((8, 8)), uid_seed="jls", patient=PATIENT)
    _with_encapsulated_junk(path, JPEGLSLossless)
    with pytest.raises(InputError) as caught:
        load_dicom(path)
    assert caught.value.path == str(path)
    assert "JPEG-LS" in caught.value.reason
    assert "install one of: pyjpegls>=1.2; pylibjpeg-libjpeg>=2.1" in caught.value.reason


def _grey_ramp(height: int = 64, width: int = 64, bits: int = 12) -> np.ndarray:  # J2K: >= 2^5 px a side
    rows, cols = np.mgrid[0:height, 0:width]
    return ((rows * width + cols) * (2**bits - 1) // (height * width - 1)).astype(np.float64)


@pytest.mark.parametrize("syntax", [JPEGLSLossless, JPEG2000Lossless, RLELossless], ids=lambda s: s.name)
def test_lossless_compressed_syntaxes_decode_exactly(tmp_path, syntax):
    """Encoded with the declared packages' own encoders (pyjpegls, pylibjpeg-openjpeg; RLE: pydicom)."""
    values = _grey_ramp()
    path = write_dicom_image(tmp_path / "lossless.dcm", values, uid_seed=f"ll-{syntax}", patient=PATIENT)
    [image] = load_dicom(_compressed(path, syntax))
    np.testing.assert_array_equal(image.pixels, values)


def test_lossy_jpeg_2000_decodes_close_to_the_original(tmp_path):
    values = _grey_ramp()
    path = write_dicom_image(tmp_path / "j2k.dcm", values, uid_seed="j2k-lossy", patient=PATIENT)
    [image] = load_dicom(_compressed(path, JPEG2000, j2k_psnr=[60.0]))  # lossy, ~1/1000 of the range
    assert np.abs(image.pixels - values).max() < 0.01 * 4095


def test_jpeg_baseline_decodes_what_pillow_encoded(tmp_path):
    """8-bit JPEG baseline, the most common compressed syntax of secondary captures: the reference is Pillow's
    own decoding of the same JPEG bytes (lossy, so not the original pixels)."""
    import io

    from PIL import Image
    from pydicom.uid import JPEGBaseline8Bit

    values = (_grey_ramp(bits=8)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="JPEG", quality=95)
    path = write_dicom_image(tmp_path / "jpeg.dcm", values.astype(np.float64), uid_seed="jpeg", patient=PATIENT,
                             bits_stored=8)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    [image] = load_dicom(path)
    reference = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float64)
    np.testing.assert_allclose(image.pixels, reference, atol=2.0)  # libjpeg and Pillow round slightly apart
    assert np.abs(image.pixels - values).max() < 16


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


@pytest.mark.parametrize(
    ("case", "kwargs", "display_ready"),
    [
        ("8-bit DX, identity rescale, no window", {"bits_stored": 8}, True),
        ("8-bit MONOCHROME1", {"bits_stored": 8, "photometric": "MONOCHROME1"}, True),
        ("12-bit DX", {"bits_stored": 12}, False),
        ("8-bit with its own window", {"bits_stored": 8, "window": (128.0, 200.0)}, False),
        ("8-bit with a rescale", {"bits_stored": 8, "rescale": (2.0, 0.0)}, False),
        ("8-bit CT", {"bits_stored": 8, "modality": "CT"}, False),
    ],
)
def test_dicom_8bit_display_values_are_reported_like_an_8bit_png(tmp_path, case, kwargs, display_ready):
    # Only unsigned 8-bit grey values with nothing to apply are display values already (what a PNG holds);
    # the contract then maps them as they are instead of stretching them to their robust range.
    pixels = np.arange(64, dtype=np.float64).reshape(8, 8) * 3
    path = write_dicom_image(tmp_path / "img.dcm", pixels, uid_seed=case, patient=PATIENT, **kwargs)
    [image] = load_dicom(path)
    assert (image.extra.get("bit_depth") == 8) is display_ready, case
    if display_ready:
        np.testing.assert_array_equal(image.pixels, pixels)  # MONOCHROME1 stored inverted, read back as shown


# --------------------------------------------------------------------------- grey scale by the standard
# References are the standard's own definitions computed here (PS3.3 C.11.2: a VOI LUT is a table
# lookup of the modality output, SIGMOID is 1 / (1 + exp(-4 (x - c) / w)) over the output range;
# C.11.6: INVERSE flips the output range), then scaled to [0, 1] as the preprocessing contract shows
# an image through the window the reader reports.


def _shown(image) -> np.ndarray:
    """[0, 1] display of a loaded 2D image through the window the reader reports (as curation shows it)."""
    from radclip.core.preprocessing import to_display_range

    assert image.window is not None
    return to_display_range(image.pixels.astype(np.float64), image.window, eight_bit=False)


def _ramp(tmp_path: Path, name: str, **kwargs) -> tuple[Path, np.ndarray]:
    values = np.tile(np.arange(0, 4096, 64, dtype=np.float64), (4, 1))  # 0 .. 4032 in 64 steps, 12-bit
    return write_dicom_image(tmp_path / name, values, uid_seed=name, patient=PATIENT, modality="DX", **kwargs), values


def test_a_voi_lut_sequence_is_applied_in_place_of_percentiles(tmp_path):
    path, values = _ramp(tmp_path, "voi_lut.dcm")
    table = (np.sqrt(np.arange(4096) / 4095.0) * 1023).round().astype(np.uint16)  # a non-linear 10-bit curve
    ds = pydicom.dcmread(path)
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 10]
    item.add_new("LUTData", "OW", table.astype("<u2").tobytes())
    ds.VOILUTSequence = pydicom.Sequence([item])
    ds.save_as(path)
    [image] = load_dicom(path)
    np.testing.assert_allclose(_shown(image), table[values.astype(int)] / 1023.0, atol=1e-9)


def test_a_sigmoid_voi_lut_function_is_applied(tmp_path):
    path, values = _ramp(tmp_path, "sigmoid.dcm", window=(2000.0, 1000.0))
    ds = pydicom.dcmread(path)
    ds.VOILUTFunction = "SIGMOID"
    ds.save_as(path)
    [image] = load_dicom(path)
    np.testing.assert_allclose(_shown(image), 1.0 / (1.0 + np.exp(-4.0 * (values - 2000.0) / 1000.0)), atol=1e-9)


def test_a_linear_window_stays_the_files_own_window(tmp_path):
    path, values = _ramp(tmp_path, "linear.dcm", window=(2000.0, 1000.0))
    [image] = load_dicom(path)
    np.testing.assert_array_equal(image.pixels, values)  # physical values: a collection's window may replace it
    assert image.window == (2000.0, 1000.0)


def test_ct_keeps_hounsfield_units_even_with_a_voi_lut(tmp_path):
    hu = np.tile(np.arange(-1000, 1000, 40, dtype=np.float64), (3, 1))
    path = write_dicom_image(tmp_path / "ct.dcm", hu, uid_seed="ct-lut", patient=PATIENT, modality="CT",
                             rescale=(1.0, -1024.0), window=(40, 400))
    ds = pydicom.dcmread(path)
    ds.VOILUTFunction = "SIGMOID"
    ds.save_as(path)
    [image] = load_dicom(path)
    np.testing.assert_array_equal(image.pixels, hu)  # the CT window rule (collection window) still applies
    assert image.window == (40.0, 400.0)


def test_presentation_lut_shape_inverse_inverts_the_display(tmp_path):
    path, values = _ramp(tmp_path, "inverse.dcm", window=(2000.0, 1000.0))
    [plain] = load_dicom(path)
    ds = pydicom.dcmread(path)
    ds.PresentationLUTShape = "INVERSE"
    ds.save_as(path)
    [inverse] = load_dicom(path)
    np.testing.assert_allclose(_shown(inverse), 1.0 - _shown(plain), atol=1e-9)
    assert not np.allclose(_shown(plain), 0.5)  # the ramp spans the window: the check can fail


def test_monochrome1_with_presentation_lut_shape_inverse_is_inverted_once(tmp_path):
    display = np.tile(np.linspace(0, 4095, 32).round(), (4, 1))
    path = write_dicom_image(tmp_path / "dx_m1.dcm", display, uid_seed="m1-inv", patient=PATIENT,
                             photometric="MONOCHROME1", window=(2000, 1000))
    ds = pydicom.dcmread(path)
    ds.PresentationLUTShape = "INVERSE"  # what the DX IOD requires with MONOCHROME1: the same inversion, said twice
    ds.save_as(path)
    [image] = load_dicom(path)
    np.testing.assert_array_equal(image.pixels, display)


def test_burned_in_annotation_is_refused_naming_the_reason(tmp_path):
    path, _ = _ramp(tmp_path, "burned.dcm")
    ds = pydicom.dcmread(path)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(path)
    with pytest.raises(InputError, match="BurnedInAnnotation is YES") as raised:
        load_dicom(path)
    assert raised.value.path == str(path)
    ds.BurnedInAnnotation = "NO"
    ds.save_as(path)
    assert load_dicom(path)[0].kind == "2d"


def test_a_multiframe_file_without_per_frame_positions_is_a_volume_in_frame_order(tmp_path):
    volume = np.stack([np.full((6, 7), 100.0 * (k + 1)) for k in range(5)])  # frame k holds 100 (k + 1)
    path = write_dicom_multiframe(tmp_path / "no_positions.dcm", volume, uid_seed="mf-nopos", patient=PATIENT)
    ds = pydicom.dcmread(path)
    for frame in ds.PerFrameFunctionalGroupsSequence:
        del frame.PlanePositionSequence
    ds.save_as(path)
    [image] = load_dicom(path)
    assert image.kind == "3d" and image.pixels.shape[0] == 5
    np.testing.assert_array_equal(image.pixels[:, 0, 0], [100.0, 200.0, 300.0, 400.0, 500.0])


def test_the_folder_scan_reads_headers_only_before_a_series_is_assembled(tmp_path, monkeypatch):
    """Every file's header is read without pixels first; pixels are read once per file afterwards."""
    first, second = ct_volume((3, 6, 6), seed=1), ct_volume((4, 5, 7), seed=2)
    write_dicom_series(tmp_path / "a", first, uid_seed="scan-first", patient=PATIENT)
    write_dicom_series(tmp_path / "b", second, uid_seed="scan-second", patient=PATIENT)
    calls: list[bool] = []
    real = pydicom.dcmread

    def recording(path, *args, stop_before_pixels=False, **kwargs):
        calls.append(stop_before_pixels)
        return real(path, *args, stop_before_pixels=stop_before_pixels, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", recording)
    images = load_dicom(tmp_path)
    assert len(images) == 2 and calls.count(True) == 7 and calls.count(False) == 7
    assert calls[:7] == [True] * 7  # no pixels read while grouping
