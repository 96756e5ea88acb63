"""Read DICOM files and folders into :class:`LoadedImage` records.

A path is a single file or a folder walked recursively. Files are grouped by
SeriesInstanceUID: several single-frame files make one volume ordered by their
position along the slice normal, a multi-frame file is one volume, and a lone
single-frame file is a 2D image. Values are physical (RescaleSlope/Intercept
applied) and MONOCHROME1 is inverted so that bright means dense everywhere.

Volumes are returned as (S, H, W) in one display orientation per plane, the
usual radiological one (LPS patient axes, ``->`` = increasing index):

* axial: slices inferior -> superior, rows anterior -> posterior,
  columns patient right -> left;
* coronal: slices anterior -> posterior, rows superior -> inferior,
  columns patient right -> left;
* sagittal: slices patient left -> right, rows superior -> inferior,
  columns anterior -> posterior.

:func:`orient_volume` does that permutation/flip; the NIfTI loader uses it too,
so both formats give the same array for the same anatomy. Any problem with an
input raises :class:`InputError` naming the offending file.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.pixels.utils import get_expected_length

from radclip.core.records import InputError, LoadedImage, Plane

# Files in a DICOM folder that are clearly not images: skipped silently.
_IGNORED_SUFFIXES = {
    ".txt", ".csv", ".json", ".xml", ".md", ".html", ".pdf", ".ini", ".log", ".xls", ".xlsx",
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".nii", ".gz", ".zip", ".npz", ".npy",
}
_IGNORED_NAMES = {"DICOMDIR", "LOCKFILE", "VERSION", "Thumbs.db", ".DS_Store"}
# Files with these suffixes claim to be DICOM: failing to read one is an error, not a skip.
_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}

# Unit direction of each output axis (slice, row, column) per plane, in LPS patient axes.
_DISPLAY_AXES: dict[str, np.ndarray] = {
    "axial": np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=float),
    "coronal": np.array([[0, 1, 0], [0, 0, -1], [1, 0, 0]], dtype=float),
    "sagittal": np.array([[-1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float),
}
_PLANE_OF_NORMAL_AXIS: tuple[Plane, Plane, Plane] = ("sagittal", "coronal", "axial")  # x, y, z

_DUPLICATE_TOLERANCE_MM = 1e-3


def plane_of_normal(normal: npt.ArrayLike) -> Plane:
    """Acquisition plane from the dominant LPS axis of the slice normal."""
    return _PLANE_OF_NORMAL_AXIS[int(np.argmax(np.abs(np.asarray(normal, dtype=float))))]


def orient_volume(
    volume: np.ndarray, axis_directions: np.ndarray, spacing: Sequence[float], plane: Plane
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Permute and flip a volume into the display orientation of ``plane``.

    ``axis_directions`` holds, per array axis, the LPS unit vector that axis
    increases along (3x3, one row per axis); ``spacing`` is per array axis.
    Slightly oblique axes go to the closest display axis. Returns the oriented
    volume (a view when possible) and its spacing in the new axis order.
    """
    directions = np.asarray(axis_directions, dtype=float)
    target = _DISPLAY_AXES[plane]
    # alignment[i, j]: how well array axis j matches display axis i
    alignment = target @ directions.T
    order = max(
        itertools.permutations(range(3)),
        key=lambda perm: sum(abs(alignment[i, perm[i]]) for i in range(3)),
    )
    oriented = np.transpose(volume, order)
    flips = tuple(i for i in range(3) if alignment[i, order[i]] < 0)
    if flips:
        oriented = np.flip(oriented, axis=flips)
    return oriented, (float(spacing[order[0]]), float(spacing[order[1]]), float(spacing[order[2]]))


def _describe(exc: Exception) -> str:
    """One stable line for a library exception: quarantine reports must not vary run to run."""
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<object>", str(exc))  # memory addresses
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text[:300]}"


# --------------------------------------------------------------------------- file discovery


def _looks_like_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _candidate_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise InputError(str(root), "no such file or directory")
    files = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name in _IGNORED_NAMES or path.name.startswith("."):
            continue
        suffix = path.suffix.lower()
        if suffix in _DICOM_SUFFIXES or (suffix not in _IGNORED_SUFFIXES and _looks_like_dicom(path)):
            files.append(path)
    if not files:
        raise InputError(str(root), "folder contains no DICOM files")
    return files


def _read_dataset(path: Path) -> Dataset:
    try:
        if path.stat().st_size == 0:
            raise InputError(str(path), "empty file (0 bytes)")
        ds = pydicom.dcmread(path)
    except InputError:
        raise
    except InvalidDicomError:
        raise InputError(str(path), "not a DICOM file (no 'DICM' marker after the preamble)") from None
    except Exception as exc:  # pydicom raises many types for damaged files
        raise InputError(str(path), f"unreadable or truncated DICOM file ({_describe(exc)})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(str(path), "no pixel data (a truncated file, or not an image object such as a report)")
    return ds


# --------------------------------------------------------------------------- pixels


def _check_decodable(ds: Dataset, path: Path) -> None:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        reason = f"compressed transfer syntax {syntax.name} ({syntax}) is not supported by pydicom"
        raise InputError(str(path), reason) from None
    if not decoder.is_available:
        options = "; ".join(decoder.missing_dependencies) or "a pydicom pixel data plugin"
        raise InputError(
            str(path),
            f"no installed package can decode transfer syntax {syntax.name} ({syntax}); install one of: {options}",
        )


def _stored_pixels(ds: Dataset, path: Path) -> np.ndarray:
    """Stored values, frames first for multi-frame data; colour reduced to luminance."""
    _check_decodable(ds, path)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    compressed = syntax is not None and syntax.is_compressed
    if not compressed and "PixelData" in ds:
        try:
            expected = get_expected_length(ds)
        except Exception:
            expected = None  # inconsistent header: let decoding report it
        if expected is not None and len(ds.PixelData) < expected:
            raise InputError(str(path), f"truncated file: pixel data has {len(ds.PixelData)} of {expected} bytes")
    try:
        array = ds.pixel_array
    except Exception as exc:
        what = f"compressed ({syntax.name}) " if compressed else ""
        raise InputError(str(path), f"cannot decode {what}pixel data ({_describe(exc)})") from None
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        # pixel_array already converts YBR to RGB; ITU-R 601 luma weights
        array = array[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return array


def _functional_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The item of a functional group macro for one frame: per-frame first, then shared."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        found = items[index].get(sequence) if items and len(items) > index else None
        if found:
            return found[0]
    return None


def _modality_values(stored: np.ndarray, ds: Dataset, frame: int | None) -> tuple[np.ndarray, float]:
    """Apply Modality LUT / rescale; also returns the sum of the output range's ends.

    The range sum is what MONOCHROME1 inversion mirrors values (and the window
    centre) about; it is computed from the stored value range the header declares.
    """
    source: Dataset = ds
    if frame is not None and "RescaleSlope" not in ds and "ModalityLUTSequence" not in ds:
        source = _functional_item(ds, frame, "PixelValueTransformationSequence") or ds
    bits = int(ds.get("BitsStored", 16))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if stored.dtype.kind == "f":  # float pixel data has no declared range: use the data's
        limits = np.array([np.nanmin(stored), np.nanmax(stored)] if stored.size else [0.0, 0.0])
    else:
        limits = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1], dtype=stored.dtype)
    values = np.asarray(apply_modality_lut(stored, source), dtype=np.float64)
    ends = np.asarray(apply_modality_lut(limits, source), dtype=np.float64)
    return values, float(ends[0] + ends[-1])


def _first_number(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else None
    return None if value is None or value == "" else float(value)


def _window(ds: Dataset, frame: int | None) -> tuple[float, float] | None:
    source: Dataset | None = ds
    if "WindowCenter" not in ds and frame is not None:
        source = _functional_item(ds, frame, "FrameVOILUTSequence")
    if source is None:
        return None
    center, width = _first_number(source.get("WindowCenter")), _first_number(source.get("WindowWidth"))
    return (center, width) if center is not None and width is not None and width > 0 else None


def _display_values(
    stored: np.ndarray, ds: Dataset, frame: int | None
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Physical values with MONOCHROME1 inverted, and the file's window in the same units."""
    values, range_sum = _modality_values(stored, ds, frame)
    window = _window(ds, frame)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        values = range_sum - values
        if window is not None:
            window = (range_sum - window[0], window[1])
    return values, window


def _pixel_spacing(item: Dataset | None) -> tuple[float, float] | None:
    if item is None:
        return None
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = item.get(keyword)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return float(value[0]), float(value[1])
    return None


def _orientation(item: Dataset | None) -> np.ndarray | None:
    value = None if item is None else item.get("ImageOrientationPatient")
    if value is None or len(value) != 6:
        return None
    row_col = np.array([float(v) for v in value]).reshape(2, 3)
    norms = np.linalg.norm(row_col, axis=1)
    if np.any(norms < 1e-6):
        return None
    return row_col / norms[:, None]


def _position(item: Dataset | None) -> np.ndarray | None:
    value = None if item is None else item.get("ImagePositionPatient")
    return None if value is None or len(value) != 3 else np.array([float(v) for v in value])


def _require_finite(values: np.ndarray, path: Path) -> None:
    if not np.all(np.isfinite(values)):
        raise InputError(str(path), "pixel values contain NaN or Inf")


# --------------------------------------------------------------------------- assembling


@dataclass
class _Slice:
    path: Path
    ds: Dataset
    pixels: np.ndarray  # one frame, display values
    window: tuple[float, float] | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    instance: int | None
    pixel_spacing: tuple[float, float] | None


def _slice_thickness(item: Dataset | None) -> float | None:
    if item is None:
        return None
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _first_number(item.get(keyword))
        if value is not None and value > 0:
            return value
    return None


def _stack(slices: list[_Slice], fallback_thickness: float | None, source: Path) -> LoadedImage:
    """Order slices along the normal, check them, and build an oriented volume."""
    first = slices[0]
    shapes = {s.pixels.shape for s in slices}
    if len(shapes) > 1:
        odd = next(s for s in slices if s.pixels.shape != first.pixels.shape)
        shapes_seen = f"{first.pixels.shape} and {odd.pixels.shape}"
        raise InputError(str(odd.path), f"slices of different shapes in one series ({shapes_seen})")
    orientation = first.orientation
    if orientation is not None and any(
        s.orientation is None or not np.allclose(s.orientation, orientation, atol=1e-3) for s in slices
    ):
        odd = next(s for s in slices if s.orientation is None or not np.allclose(s.orientation, orientation, atol=1e-3))
        raise InputError(str(odd.path), "slices with different orientations in one series (e.g. a localizer mixed in)")

    normal = np.cross(orientation[0], orientation[1]) if orientation is not None else np.array([0.0, 0.0, 1.0])
    positions = [s.position for s in slices if s.position is not None]
    instances = [s.instance for s in slices if s.instance is not None]
    if len(positions) == len(slices) and orientation is not None:
        distances = np.array([float(np.dot(pos, normal)) for pos in positions])
        order = np.argsort(distances, kind="stable")
        sorted_distances = distances[order]
        steps = np.diff(sorted_distances)
        if np.any(steps < _DUPLICATE_TOLERANCE_MM):
            k = int(np.argmax(steps < _DUPLICATE_TOLERANCE_MM))
            a, b = slices[order[k]], slices[order[k + 1]]
            same_file = a.path == b.path
            where = "twice in this file" if same_file else f"also used by {a.path.name}"
            position = f"{sorted_distances[k + 1]:.3f} mm along the slice normal"
            raise InputError(str(b.path), f"duplicate slice position {position} ({where})")
        slice_spacing = float(np.median(steps)) if len(steps) else (fallback_thickness or 1.0)
    elif len(instances) == len(slices):
        numbers = instances
        if len(set(numbers)) != len(numbers):
            raise InputError(str(source), "slices have no positions and repeated InstanceNumbers; cannot order them")
        order = np.argsort(numbers, kind="stable")
        slice_spacing = fallback_thickness or 1.0
    elif len(slices) == 1 or all(s.path == first.path for s in slices):
        order = np.arange(len(slices))  # frames of one file without positions: stored order
        slice_spacing = fallback_thickness or 1.0
    else:
        raise InputError(str(source), "slices have neither ImagePositionPatient nor InstanceNumber; cannot order them")

    volume = np.stack([slices[i].pixels for i in order]).astype(np.float32)
    row_spacing, col_spacing = first.pixel_spacing or (1.0, 1.0)
    plane = plane_of_normal(normal)
    if orientation is not None:
        # array axes: slice along the normal, rows along the column direction, columns along the row direction
        directions = np.stack([normal, orientation[1], orientation[0]])
        volume, spacing = orient_volume(volume, directions, (slice_spacing, row_spacing, col_spacing), plane)
    else:
        spacing = (slice_spacing, row_spacing, col_spacing)
    extra = {"n_files": len({s.path for s in slices})}
    if first.pixel_spacing is None:
        extra["pixel_spacing_assumed"] = True
    return LoadedImage(
        pixels=np.ascontiguousarray(volume),
        kind="3d",
        plane=plane,
        spacing=tuple(float(s) for s in spacing),
        window=first.window,
        extra=extra,
        **_identity(first.ds),
    )


def _identity(ds: Dataset) -> dict:
    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return str(value).strip() or None if value is not None else None

    return {"patient_id": text("PatientID"), "study_id": text("StudyInstanceUID"), "dicom_modality": text("Modality")}


def _frames_of(path: Path, ds: Dataset) -> list[_Slice]:
    """One _Slice per frame of a file, with per-frame geometry where the file has it."""
    stored = _stored_pixels(ds, path)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames == 1:
        stored = stored[np.newaxis]
    # Free the encoded bytes (and pydicom's cached array) now: a series holds many files.
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            delattr(ds, keyword)
    enhanced = "PerFrameFunctionalGroupsSequence" in ds
    instance = int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None
    slices = []
    for frame in range(n_frames):
        values, window = _display_values(stored[frame], ds, frame if n_frames > 1 or enhanced else None)
        _require_finite(values, path)
        # Classic headers first, then the enhanced functional groups (per-frame, then shared).
        position = _position(ds) if "ImagePositionPatient" in ds else None
        orientation = _orientation(ds) if "ImageOrientationPatient" in ds else None
        slices.append(
            _Slice(
                path=path,
                ds=ds,
                pixels=values.astype(np.float32),
                window=window,
                position=position if position is not None else _position(
                    _functional_item(ds, frame, "PlanePositionSequence")
                ),
                orientation=orientation if orientation is not None else _orientation(
                    _functional_item(ds, frame, "PlaneOrientationSequence")
                ),
                instance=instance,
                pixel_spacing=_pixel_spacing(ds)
                or _pixel_spacing(_functional_item(ds, frame, "PixelMeasuresSequence")),
            )
        )
    return slices


def _display_ready_8bit(ds: Dataset, window: tuple[float, float] | None) -> bool:
    """Unsigned 8-bit grey values with no rescale, modality LUT or window, outside CT: display values already,
    as an 8-bit PNG is (a secondary capture, a digitised film). The preprocessing contract then maps them
    as they are, where other DICOM images get their robust intensity range."""
    rescale = (_first_number(ds.get("RescaleSlope")), _first_number(ds.get("RescaleIntercept")))
    return (
        int(ds.get("BitsStored", 16)) == 8
        and int(ds.get("PixelRepresentation", 0)) == 0
        and rescale[0] in (None, 1.0)
        and rescale[1] in (None, 0.0)
        and "ModalityLUTSequence" not in ds
        and window is None
        and str(ds.get("Modality", "")).strip() != "CT"
    )


def _image_2d(piece: _Slice) -> LoadedImage:
    plane = plane_of_normal(np.cross(*piece.orientation)) if piece.orientation is not None else None
    extra: dict = {"n_files": 1} | ({} if piece.pixel_spacing else {"pixel_spacing_assumed": True})
    if _display_ready_8bit(piece.ds, piece.window):
        extra["bit_depth"] = 8
    return LoadedImage(
        pixels=np.ascontiguousarray(piece.pixels, dtype=np.float32),
        kind="2d",
        plane=plane,
        spacing=piece.pixel_spacing or (1.0, 1.0),
        window=piece.window,
        extra=extra,
        **_identity(piece.ds),
    )


def load_dicom(path: str | Path) -> list[LoadedImage]:
    """Load a DICOM file or folder: one LoadedImage per series (or per multi-frame file).

    Pixels are physical values; ``window`` is the file's own (which window an image is shown
    with is the preprocessing contract's rule, radclip.core.preprocessing). Images are returned in a stable order with
    ``part`` = "series-0", "series-1", ... (ordered by SeriesNumber, then path).
    """
    root = Path(path)
    datasets = [(file, _read_dataset(file)) for file in _candidate_files(root)]

    # Single-frame files group by series; each multi-frame file stands alone.
    groups: dict[tuple, list[tuple[Path, Dataset]]] = {}
    for file, ds in datasets:
        multi_frame = int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds
        series = str(ds.get("SeriesInstanceUID", "")).strip()
        key = ("file", str(file)) if multi_frame or not series else ("series", series)
        groups.setdefault(key, []).append((file, ds))

    def sort_key(members: list[tuple[Path, Dataset]]) -> tuple:
        number = members[0][1].get("SeriesNumber")
        number = float(number) if number not in (None, "") else float("inf")
        return (number, min(str(f) for f, _ in members))

    images = []
    for index, members in enumerate(sorted(groups.values(), key=sort_key)):
        slices = [piece for file, ds in members for piece in _frames_of(file, ds)]
        if len(slices) == 1:
            image = _image_2d(slices[0])
        else:
            first_ds = members[0][1]
            thickness = _slice_thickness(first_ds) or _slice_thickness(
                _functional_item(first_ds, 0, "PixelMeasuresSequence")
            )
            image = _stack(slices, thickness, members[0][0] if len(members) == 1 else root)
        image.part = f"series-{index}"
        images.append(image)
    return images
