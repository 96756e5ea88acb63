"""Deterministic DICOM writers for phantom data and test fixtures.

Everything that would normally vary between runs (UIDs, dates, times) is derived
from a caller-given ``uid_seed`` string or fixed, so writing the same inputs twice
gives byte-identical files (DVC caches and golden tests rely on that).

Pixels are given in physical/display units (HU for CT) and stored as integers
``round((pixels - intercept) / slope)``; the integer type is ``uint16`` unless a
negative stored value needs ``int16``. Geometry follows the DICOM patient
coordinate system (LPS): slice ``k`` of a volume lies at
``origin + k * slice_spacing * normal`` with ``normal = row x column`` of the
orientation, so a reader that sorts by position along the normal gets the
written order back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from radclip.core.records import Plane

# The identifying tags this writer fills from ``patient`` (or neutral defaults);
# tests of de-identification can check that none of these values leak downstream.
PHI_TAGS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "StudyDate",
    "SeriesDate",
    "StudyID",
)

_PHI_DEFAULTS: dict[str, str] = {
    "PatientName": "PHANTOM^PATIENT",
    "PatientID": "PHANTOM",
    "PatientBirthDate": "19700101",
    "PatientSex": "O",
    "AccessionNumber": "",
    "InstitutionName": "",
    "ReferringPhysicianName": "",
    "StudyDate": "20200101",
    "SeriesDate": "20200101",
    "StudyID": "1",
}

_FIXED_TIME = "120000"

_SINGLE_FRAME_SOP_CLASS = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
    "CR": ComputedRadiographyImageStorage,
}
_MULTI_FRAME_SOP_CLASS = {"CT": EnhancedCTImageStorage, "MR": EnhancedMRImageStorage}

# (row direction, column direction) per acquisition plane, in LPS patient coordinates.
PLANE_ORIENTATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


def _uid(uid_seed: str, role: str) -> UID:
    return generate_uid(entropy_srcs=[uid_seed, role])


def _format_number(value: float) -> str:
    """DS values as short, stable text (DS is limited to 16 characters)."""
    text = f"{float(value):.6g}"
    return "0" if text == "-0" else text


def _encode_pixels(
    pixels: np.ndarray, slope: float, intercept: float, bits_stored: int | None
) -> tuple[np.ndarray, int]:
    """Physical values -> stored integers, plus the Bits Stored that holds them."""
    values = np.asarray(pixels, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("pixels contain NaN or Inf; DICOM stores integers")
    if slope == 0:
        raise ValueError("rescale slope must not be 0")
    stored = np.rint((values - intercept) / slope)
    low, high = (float(stored.min()), float(stored.max())) if stored.size else (0.0, 0.0)
    signed = low < 0
    if bits_stored is None:
        bits_stored = 12 if _fits(low, high, 12, signed) else 16
    if not _fits(low, high, bits_stored, signed):
        raise ValueError(
            f"stored values {low:g}..{high:g} do not fit in {bits_stored} bits "
            f"({'signed' if signed else 'unsigned'}); change rescale or bits_stored"
        )
    return stored.astype(np.int16 if signed else np.uint16), bits_stored


def _fits(low: float, high: float, bits: int, signed: bool) -> bool:
    if signed:
        return -(2 ** (bits - 1)) <= low and high <= 2 ** (bits - 1) - 1
    return 0 <= low and high <= 2**bits - 1


def _invert_stored(stored: np.ndarray, bits_stored: int) -> np.ndarray:
    """Mirror stored values within their representable range (MONOCHROME1 <-> MONOCHROME2)."""
    if stored.dtype == np.int16:
        return (-1 - stored.astype(np.int32)).astype(np.int16)  # (-2^(b-1)) + (2^(b-1) - 1) == -1
    return ((2**bits_stored - 1) - stored.astype(np.int32)).astype(np.uint16)


def _base_dataset(
    sop_class: UID, *, uid_seed: str, instance_role: str, patient: Mapping[str, str], modality: str
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = _uid(uid_seed, instance_role)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.Modality = modality
    phi = {**_PHI_DEFAULTS, **{k: str(v) for k, v in patient.items()}}
    phi.setdefault("SeriesDate", phi["StudyDate"])
    for keyword in PHI_TAGS:
        setattr(ds, keyword, phi[keyword])
    for keyword, value in phi.items():
        if keyword not in PHI_TAGS:
            setattr(ds, keyword, value)  # extra tags the caller asked for (e.g. OtherPatientIDs)
    ds.StudyTime = _FIXED_TIME
    ds.SeriesTime = _FIXED_TIME
    ds.ContentDate = phi["StudyDate"]
    ds.ContentTime = _FIXED_TIME
    ds.StudyInstanceUID = _uid(uid_seed, "study")
    ds.SeriesInstanceUID = _uid(uid_seed, "series")
    ds.FrameOfReferenceUID = _uid(uid_seed, "frame-of-reference")
    ds.SeriesNumber = 1
    return ds


def _set_window(ds: Dataset, window: tuple[float, float] | None) -> None:
    if window is not None:
        ds.WindowCenter = _format_number(window[0])
        ds.WindowWidth = _format_number(window[1])


def _set_rescale(ds: Dataset, rescale: tuple[float, float]) -> None:
    ds.RescaleSlope = _format_number(rescale[0])
    ds.RescaleIntercept = _format_number(rescale[1])
    ds.RescaleType = "HU" if ds.Modality == "CT" else "US"


def _slice_geometry(
    plane: str, shape: tuple[int, int, int], spacing: Sequence[float]
) -> tuple[list[float], list[list[float]]]:
    """Orientation (6 values) and one position per slice, centred on the origin."""
    if plane not in PLANE_ORIENTATION:
        raise ValueError(f"plane must be one of {sorted(PLANE_ORIENTATION)}, got {plane!r}")
    row, col = (np.array(v) for v in PLANE_ORIENTATION[plane])
    normal = np.cross(row, col)
    n_slices, n_rows, n_cols = shape
    slice_spacing, row_spacing, col_spacing = (float(s) for s in spacing)
    # ImagePositionPatient is the centre of the first transmitted pixel; centre the volume.
    extent = row * col_spacing * (n_cols - 1) + col * row_spacing * (n_rows - 1)
    origin = -(extent + normal * slice_spacing * (n_slices - 1)) / 2
    positions = [[float(_round_mm(x)) for x in origin + k * slice_spacing * normal] for k in range(n_slices)]
    return [float(x) for x in (*row, *col)], positions


def _round_mm(value: float) -> float:
    return round(float(value), 4) + 0.0  # + 0.0 turns -0.0 into 0.0


def _save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom_image(
    path: str | Path,
    pixels: np.ndarray,
    *,
    uid_seed: str,
    patient: Mapping[str, str],
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] = (1.0, 0.0),
    window: tuple[float, float] | None = None,
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    bits_stored: int = 12,
) -> Path:
    """Write one single-frame 2D image; returns the path.

    ``pixels`` (H, W) are display values (physical after ``rescale = (slope,
    intercept)``). For MONOCHROME1 the stored grey scale is inverted, and the
    window centre mirrored with it, so a reader that inverts MONOCHROME1
    recovers ``pixels`` and ``window`` exactly.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be 2D (H, W), got shape {pixels.shape}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    slope, intercept = (float(v) for v in rescale)
    stored, bits_stored = _encode_pixels(pixels, slope, intercept, bits_stored)
    if photometric == "MONOCHROME1":
        stored = _invert_stored(stored, bits_stored)
        if window is not None:
            # v -> slope * (max + min - s) + intercept mirrors physical values about this point
            mirror_sum = -1 if stored.dtype == np.int16 else 2**bits_stored - 1
            window = (slope * mirror_sum + 2 * intercept - window[0], window[1])

    sop_class = _SINGLE_FRAME_SOP_CLASS.get(modality, SecondaryCaptureImageStorage)
    ds = _base_dataset(sop_class, uid_seed=uid_seed, instance_role="instance", patient=patient, modality=modality)
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PixelSpacing = [_format_number(s) for s in pixel_spacing]
    if modality in ("DX", "CR"):
        ds.ImagerPixelSpacing = ds.PixelSpacing
        ds.PresentationIntentType = "FOR PRESENTATION"
    elif modality in ("CT", "MR"):  # the Image Plane module is mandatory for CT/MR: one axial slice
        orientation, [position] = _slice_geometry("axial", (1, *pixels.shape), (1.0, *pixel_spacing))
        ds.ImageOrientationPatient = [_format_number(v) for v in orientation]
        ds.ImagePositionPatient = [_format_number(v) for v in position]
    ds.set_pixel_data(stored, photometric, bits_stored, generate_instance_uid=False)
    _set_rescale(ds, (slope, intercept))
    _set_window(ds, window)
    return _save(ds, Path(path))


def _slice_file_names(n_slices: int, uid_seed: str, shuffle_names: bool) -> list[str]:
    """One name per slice, unique per ``uid_seed`` so several series can share a folder.

    Shuffled names sort in an order that is NOT the slice order, and some lack
    ``.dcm``, like scanner exports.
    """
    digest = hashlib.sha256(f"{uid_seed}:names".encode()).digest()
    series_tag = digest[:3].hex().upper()
    if not shuffle_names:
        return [f"S{series_tag}_{k:04d}.dcm" for k in range(n_slices)]
    rng = np.random.default_rng(int.from_bytes(digest[3:11], "little"))
    order = rng.permutation(n_slices)
    if n_slices > 1 and np.array_equal(order, np.arange(n_slices)):
        order = order[::-1]
    return [f"IM{series_tag}{int(order[k]):04d}" + ("" if k % 3 == 1 else ".dcm") for k in range(n_slices)]


def write_dicom_series(
    directory: str | Path,
    volume: np.ndarray,
    *,
    uid_seed: str,
    patient: Mapping[str, str],
    modality: str = "CT",
    plane: Plane = "axial",
    spacing: tuple[float, float, float] = (2.5, 1.0, 1.0),
    rescale: tuple[float, float] = (1.0, -1024.0),
    window: tuple[float, float] | None = None,
    shuffle_names: bool = True,
) -> list[Path]:
    """Write a volume (S, H, W) as one single-frame file per slice; returns paths in slice order.

    ``spacing`` is (slice spacing, row spacing, column spacing) in mm. Slice ``k``
    gets InstanceNumber ``k + 1`` and a position ``k * spacing[0]`` further along
    the slice normal. With ``shuffle_names`` the file names do not sort in slice
    order (and some lack ``.dcm``), so readers must order by position.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D (S, H, W), got shape {volume.shape}")
    slope, intercept = (float(v) for v in rescale)
    stored, bits_stored = _encode_pixels(volume, slope, intercept, None)
    orientation, positions = _slice_geometry(plane, volume.shape, spacing)
    sop_class = _SINGLE_FRAME_SOP_CLASS.get(modality, SecondaryCaptureImageStorage)
    names = _slice_file_names(volume.shape[0], uid_seed, shuffle_names)
    directory = Path(directory)
    paths = []
    for k, name in enumerate(names):
        ds = _base_dataset(
            sop_class, uid_seed=uid_seed, instance_role=f"instance-{k}", patient=patient, modality=modality
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if plane == "axial" else "REFORMATTED"]
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [_format_number(v) for v in orientation]
        ds.ImagePositionPatient = [_format_number(v) for v in positions[k]]
        ds.SliceLocation = _format_number(float(np.dot(positions[k], np.cross(orientation[:3], orientation[3:]))))
        ds.SliceThickness = _format_number(spacing[0])
        ds.SpacingBetweenSlices = _format_number(spacing[0])
        ds.PixelSpacing = [_format_number(spacing[1]), _format_number(spacing[2])]
        ds.set_pixel_data(stored[k], "MONOCHROME2", bits_stored, generate_instance_uid=False)
        _set_rescale(ds, (slope, intercept))
        _set_window(ds, window)
        paths.append(_save(ds, directory / name))
    return paths


def write_dicom_multiframe(
    path: str | Path,
    volume: np.ndarray,
    *,
    uid_seed: str,
    patient: Mapping[str, str],
    modality: str = "MR",
    plane: Plane = "axial",
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    rescale: tuple[float, float] = (1.0, 0.0),
    window: tuple[float, float] | None = None,
) -> Path:
    """Write a volume (S, H, W) as one enhanced multi-frame file; returns the path.

    Geometry and rescale live in the functional groups, as in Enhanced CT/MR:
    shared PlaneOrientation, PixelMeasures and PixelValueTransformation, and a
    PlanePosition per frame. ``spacing`` is (slice, row, column) in mm.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D (S, H, W), got shape {volume.shape}")
    slope, intercept = (float(v) for v in rescale)
    stored, bits_stored = _encode_pixels(volume, slope, intercept, None)
    orientation, positions = _slice_geometry(plane, volume.shape, spacing)
    sop_class = _MULTI_FRAME_SOP_CLASS.get(modality, EnhancedMRImageStorage)
    ds = _base_dataset(sop_class, uid_seed=uid_seed, instance_role="instance", patient=patient, modality=modality)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.InstanceNumber = 1

    measures = Dataset()
    measures.PixelSpacing = [_format_number(spacing[1]), _format_number(spacing[2])]
    measures.SliceThickness = _format_number(spacing[0])
    measures.SpacingBetweenSlices = _format_number(spacing[0])
    orientation_item = Dataset()
    orientation_item.ImageOrientationPatient = [_format_number(v) for v in orientation]
    transformation = Dataset()
    transformation.RescaleSlope = _format_number(slope)
    transformation.RescaleIntercept = _format_number(intercept)
    transformation.RescaleType = "HU" if modality == "CT" else "US"
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation_item])
    shared.PixelValueTransformationSequence = DicomSequence([transformation])
    if window is not None:
        voi = Dataset()
        _set_window(voi, window)
        shared.FrameVOILUTSequence = DicomSequence([voi])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    per_frame = []
    for k, position in enumerate(positions):
        position_item = Dataset()
        position_item.ImagePositionPatient = [_format_number(v) for v in position]
        content = Dataset()
        content.InStackPositionNumber = k + 1
        content.StackID = "1"
        frame = Dataset()
        frame.PlanePositionSequence = DicomSequence([position_item])
        frame.FrameContentSequence = DicomSequence([content])
        per_frame.append(frame)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)

    ds.set_pixel_data(stored, "MONOCHROME2", bits_stored, generate_instance_uid=False)
    if volume.shape[0] == 1:
        ds.NumberOfFrames = 1  # set_pixel_data drops it for one frame; enhanced objects require it
    return _save(ds, Path(path))
