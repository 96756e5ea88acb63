"""Read DICOM files and folders into :class:`LoadedImage` records.

A path is a single file or a folder walked recursively. Files are grouped by
SeriesInstanceUID: several single-frame files make one volume ordered by their
position along the slice normal, a multi-frame file is one volume, and a lone
single-frame file is a 2D image, and a multi-frame file without per-frame positions is a volume
in frame order. The folder is scanned by headers (``stop_before_pixels``); pixels are read one
group at a time. Values are physical (Modality LUT or RescaleSlope/Intercept applied) with the
file's own linear window beside them, which the preprocessing contract may replace (a CT
collection's window). Where the file says its grey scale is not a linear window — a VOI LUT
Sequence, or ``VOILUTFunction`` SIGMOID — on an image that is not CT, pydicom's own
``apply_voi_lut`` (preferring the LUT, as the standard's default) gives display values and the
window is the LUT's output range. A Presentation LUT Sequence is applied with pydicom's
``apply_presentation_lut``. MONOCHROME1, or Presentation LUT Shape INVERSE, is inverted within
that range, so that bright means dense everywhere. ``BurnedInAnnotation: YES`` is refused:
burned-in text is PHI in the pixels.

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
from pydicom.pixels import apply_modality_lut, apply_presentation_lut, apply_voi_lut, get_decoder
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


def _read_dataset(path: Path, *, header_only: bool = False) -> Dataset:
    """The file's dataset; ``header_only`` stops before the pixel data (the folder scan)."""
    try:
        if path.stat().st_size == 0:
            raise InputError(str(path), "empty file (0 bytes)")
        ds = pydicom.dcmread(path, stop_before_pixels=header_only)
    except InputError:
        raise
    except InvalidDicomError:
        raise InputError(str(path), "not a DICOM file (no 'DICM' marker after the preamble)") from None
    except Exception as exc:  # pydicom raises many types for damaged files
        raise InputError(str(path), f"unreadable or truncated DICOM file ({_describe(exc)})") from None
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        raise InputError(str(path), "BurnedInAnnotation is YES: burned-in text (patient data) in the pixels")
    if not header_only and "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
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


def _modality_values(stored: np.ndarray, ds: Dataset, frame: int | None) -> tuple[np.ndarray, tuple[float, float]]:
    """Apply Modality LUT / rescale; also returns the output range's ends.

    The range is what MONOCHROME1 inversion mirrors values (and the window centre) about; it is
    computed from the stored value range the header declares.
    """
    source = _rescale_source(ds, frame)
    bits = int(ds.get("BitsStored", 16))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if stored.dtype.kind == "f":  # float pixel data has no declared range: use the data's
        limits = np.array([np.nanmin(stored), np.nanmax(stored)] if stored.size else [0.0, 0.0])
    else:
        limits = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1], dtype=stored.dtype)
    values = np.asarray(apply_modality_lut(stored, source), dtype=np.float64)
    ends = np.asarray(apply_modality_lut(limits, source), dtype=np.float64)
    return values, (float(ends[0]), float(ends[-1]))


def _rescale_source(ds: Dataset, frame: int | None) -> Dataset:
    """The dataset holding this frame's Modality LUT / rescale: the file's, else its functional group."""
    if frame is not None and "RescaleSlope" not in ds and "ModalityLUTSequence" not in ds:
        return _functional_item(ds, frame, "PixelValueTransformationSequence") or ds
    return ds


def _first_number(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else None
    return None if value is None or value == "" else float(value)


def _voi_module(ds: Dataset, frame: int | None) -> Dataset | None:
    """The VOI LUT module that applies to a frame: the file's, else the frame's functional group (with the
    image attributes and rescale that pydicom's apply_voi_lut reads copied beside it); None if neither."""
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        return ds
    item = _functional_item(ds, frame, "FrameVOILUTSequence") if frame is not None else None
    if item is None:
        return None
    module = Dataset()
    for keyword in ("PhotometricInterpretation", "BitsStored", "PixelRepresentation", "ModalityLUTSequence"):
        if keyword in ds:
            module[keyword] = ds[keyword]
    rescale = _rescale_source(ds, frame)
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword in rescale:
            module[keyword] = rescale[keyword]
    for element in item:
        module[element.tag] = element
    return module


def _window(module: Dataset | None) -> tuple[float, float] | None:
    if module is None:
        return None
    center, width = _first_number(module.get("WindowCenter")), _first_number(module.get("WindowWidth"))
    return (center, width) if center is not None and width is not None and width > 0 else None


def _is_nonlinear_voi(module: Dataset | None, ds: Dataset) -> bool:
    """A VOI LUT Sequence, or a SIGMOID window, on an image that is not CT (CT keeps Hounsfield units, so a
    collection's CT window still applies); LINEAR_EXACT differs from LINEAR by under one unit and stays linear."""
    if module is None or str(ds.get("Modality", "")).strip() == "CT":
        return False
    function = str(module.get("VOILUTFunction", "LINEAR")).strip().upper()
    return bool(module.get("VOILUTSequence")) or (function == "SIGMOID" and _window(module) is not None)


def _voi_output_range(module: Dataset) -> tuple[float, float]:
    """What pydicom's apply_voi_lut(prefer_lut=True) maps onto: the first VOI LUT's entries (0 to 2^bits - 1,
    PS3.3 C.11.2.1.1), else the SIGMOID's asymptotes (pydicom's own function at -inf and +inf)."""
    if module.get("VOILUTSequence"):
        bits = int(module.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    ends = np.asarray(apply_voi_lut(np.array([-np.inf, np.inf]), module, index=0, prefer_lut=True), dtype=np.float64)
    return float(ends[0]), float(ends[1])


def _inverted(ds: Dataset) -> bool:
    """MONOCHROME1, or a Presentation LUT Shape INVERSE (the DX/MG way of saying the same): one inversion."""
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    return str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1" or shape == "INVERSE"


def _display_values(
    stored: np.ndarray, ds: Dataset, frame: int | None
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Values bright-means-dense, and the window that shows them (the file's own, or a VOI LUT's output range)."""
    values, (low, high) = _modality_values(stored, ds, frame)
    module = _voi_module(ds, frame)
    if _is_nonlinear_voi(module, ds):
        assert module is not None  # checked by _is_nonlinear_voi
        try:
            # A VOI LUT indexes by the (integral) modality output; a fractional rescale rounds to the nearest entry.
            lut_input = np.rint(values).astype(np.int64) if module.get("VOILUTSequence") else values
            values = np.asarray(apply_voi_lut(lut_input, module, index=0, prefer_lut=True), dtype=np.float64)
            low, high = _voi_output_range(module)
        except Exception as exc:  # a malformed LUT or window in the header
            raise InputError(str(ds.filename or "<dataset>"), f"cannot apply the VOI LUT ({_describe(exc)})") from None
        window: tuple[float, float] | None = ((low + high) / 2, high - low)
    else:
        window = _window(module)
    if "PresentationLUTSequence" in ds:
        # P-values over the whole LUT range; pydicom quantises its input by the image's own min and max.
        bits = int(ds.PresentationLUTSequence[0].LUTDescriptor[2])
        values = np.asarray(apply_presentation_lut(values, ds), dtype=np.float64)
        low, high, window = 0.0, float(2**bits - 1), ((2**bits - 1) / 2, float(2**bits - 1))
    elif _inverted(ds):
        # Mirrored within the output range, not about the image's own maximum as apply_presentation_lut
        # does for INVERSE: the window (the file's or a collection's) then shows the same grey for a value.
        values = low + high - values
        if window is not None:
            window = (low + high - window[0], window[1])
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
    elif len(slices) == 1 or all(s.path == first.path for s in slices):
        # Frames of one file without per-frame positions: the frame order (all frames share the file's
        # InstanceNumber, so it cannot order them).
        order = np.arange(len(slices))
        slice_spacing = fallback_thickness or 1.0
    elif len(instances) == len(slices):
        numbers = instances
        if len(set(numbers)) != len(numbers):
            raise InputError(str(source), "slices have no positions and repeated InstanceNumbers; cannot order them")
        order = np.argsort(numbers, kind="stable")
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
    # Headers only to group: a series' pixels are read when that series is assembled, one group at a time.
    headers = [(file, _read_dataset(file, header_only=True)) for file in _candidate_files(root)]

    # Single-frame files group by series; each multi-frame file stands alone.
    groups: dict[tuple, list[tuple[Path, Dataset]]] = {}
    for file, ds in headers:
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
        members = [(file, _read_dataset(file)) for file, _ in members]
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
