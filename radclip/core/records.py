"""The records that flow from raw collections into curation.

Scanning a collection is cheap and yields :class:`SourceItem` (paths and labels,
no pixels). Workers turn each item into one or more :class:`LoadedImage` (pixels
and geometry). A problem with an input raises :class:`InputError`, which curation
turns into a quarantine row naming the file and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Kind = Literal["2d", "3d"]
Plane = Literal["axial", "coronal", "sagittal"]
PLANES: tuple[Plane, ...] = ("axial", "coronal", "sagittal")


class InputError(Exception):
    """An input that cannot be used: carries the offending file and a readable reason."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class SourceItem:
    """One unit of work found by scanning a collection; loaded later, in a worker.

    ``conditions`` is the tuple of condition names shown in the caption (empty:
    a normal study). ``label`` is the class name used by evaluation suites.
    ``error`` marks an item that scanning already knows is unusable (unknown
    label, empty caption...): it goes straight to quarantine, it is not dropped.
    """

    collection: str
    path: str  # absolute file or directory
    rel_path: str  # relative to the collection root: what manifests and reports show
    loader: Literal["image", "dicom", "nifti", "npz", "npy"]
    region: str
    modality: str
    conditions: tuple[str, ...] = ()
    label: str = ""
    patient_id: str | None = None  # raw id (hashed by curation); None: taken from the file
    member: str | None = None  # e.g. "test_images:12" inside an .npz
    expect_kind: Kind | None = None  # what the collection promises ("4D where 3D expected")
    error: str | None = None
    # Lesion boxes (condition, x, y, w, h) in the source image's pixels: x the left edge's column,
    # y the top edge's row (NIH ChestX-ray14's convention); curation maps them to curated pixels.
    boxes: tuple[tuple[str, float, float, float, float], ...] = ()


@dataclass
class LoadedImage:
    """Pixels of one 2D image or one 3D volume, as read from a file.

    2D: ``pixels`` is (H, W). 3D: (S, H, W) with S along the acquisition axis
    (``plane`` says which). Values are physical where the format says how
    (HU for CT after RescaleSlope/Intercept), display-ready for 2D grayscale
    (MONOCHROME1 already inverted). ``patient_id``/``study_id`` come from file
    headers and are PHI: curation hashes them and never writes them out.
    """

    pixels: np.ndarray
    kind: Kind
    plane: Plane | None = None
    spacing: tuple[float, ...] = ()
    patient_id: str | None = None
    study_id: str | None = None
    dicom_modality: str | None = None
    part: str = ""  # distinguishes several images from one item (e.g. "series-2"), never a UID
    window: tuple[float, float] | None = None  # (center, width) from the file, if any
    extra: dict = field(default_factory=dict)
