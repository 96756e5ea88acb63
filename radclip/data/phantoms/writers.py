"""File writers of the phantoms: PNG/JPEG, NIfTI and DICOM (single image, series,
multi-frame), and ``run_job``, which draws one study and writes it.

Files carry no timestamps (gzip mtime 0 for NIfTI, fixed DICOM dates, UIDs
from ``uid_seed``), so the same study always gives the same bytes.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from PIL import Image

from radclip.core.records import Plane
from radclip.data.dicom_write import (
    write_dicom_image,
    write_dicom_multiframe,
    write_dicom_series,
)
from radclip.data.phantoms.geometry import Grid
from radclip.data.phantoms.noise import HU_RANGE
from radclip.data.phantoms.render import LesionBox, Rendered, RenderSettings, synthesize
from radclip.data.phantoms.scenes import SCENES, Scene

MR_SCALE = 1000.0  # MR signal (about 0..1.5) -> stored integers
STORED_BITS = 12  # Bits Stored of X-ray and MR integers (CT: HU + 1024 fits too)
CT_INTERCEPT = -1024.0


def _to_uint8(scene: Scene, pixels: np.ndarray) -> np.ndarray:
    """Display values for PNG/JPEG: CT through the scene's window, MR by its 99.5th percentile."""
    if scene.signal == "ct":
        center, width = scene.window or (40.0, 400.0)
        scaled = (pixels - (center - width / 2)) / width
    elif scene.signal == "mr":
        scaled = pixels / (float(np.percentile(pixels, 99.5)) * 1.05 + 1e-6)
    else:
        scaled = pixels
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _stored_values(scene: Scene, pixels: np.ndarray) -> np.ndarray:
    """Integer physical values for NIfTI/DICOM: HU, MR signal x 1000, 12-bit X-ray."""
    if scene.signal == "ct":
        return np.rint(np.clip(pixels, *HU_RANGE))
    if scene.signal == "mr":
        return np.rint(np.clip(pixels * MR_SCALE, 0.0, 2**STORED_BITS - 1))
    return np.rint(np.clip(pixels, 0.0, 1.0) * (2**STORED_BITS - 1))


def write_nifti(path: Path, volume: np.ndarray, grid: Grid) -> Path:
    """(S, H, W) as NIfTI with its true affine; gzip without a timestamp (reproducible bytes)."""
    data = np.ascontiguousarray(np.transpose(volume, (2, 1, 0)).astype(np.int16))  # voxel (i, j, k) = (col, row, slice)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ grid.affine_lps()  # LPS -> RAS
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=3, mtime=0))  # noise barely compresses: go fast
    return path


def _write_gray(path: Path, image8: np.ndarray, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if fmt == "JPEG" else {}
    Image.fromarray(image8, mode="L").save(path, format=fmt, **options)
    return path


@dataclass(frozen=True)
class Job:
    """One study to draw and write; built by the plan, run in a worker."""

    stream: int
    index: int
    scene: str
    conditions: tuple[str, ...]
    kind: Literal["2d", "3d"]
    output: Literal["png", "jpeg", "nifti", "dicom_image", "dicom_series", "dicom_multiframe"]
    path: str  # absolute file, or folder for a DICOM series
    plane: Plane = "axial"
    patient: tuple[tuple[str, str], ...] = ()  # fake PHI written into DICOM headers
    uid_seed: str = ""
    monochrome1: bool = False
    traits: tuple[tuple[str, Any], ...] = ()  # anatomy fields set by the plan (see synthesize)


_DICOM_MODALITY = {"ct": "CT", "mr": "MR", "xray": "DX"}


def _write_image_file(job: Job, scene: Scene, rendered: Rendered) -> None:
    _write_gray(Path(job.path), _to_uint8(scene, rendered.image), job.output.upper())


def _write_nifti_file(job: Job, scene: Scene, rendered: Rendered) -> None:
    write_nifti(Path(job.path), _stored_values(scene, rendered.pixels), rendered.grid)


def _write_dicom_image_file(job: Job, scene: Scene, rendered: Rendered) -> None:
    ct = scene.signal == "ct"
    write_dicom_image(
        job.path,
        _stored_values(scene, rendered.image),
        uid_seed=job.uid_seed,
        patient=dict(job.patient),
        modality=_DICOM_MODALITY[scene.signal],
        photometric="MONOCHROME1" if job.monochrome1 else "MONOCHROME2",
        rescale=(1.0, CT_INTERCEPT) if ct else (1.0, 0.0),  # CT stores HU + 1024, as scanners do
        window=scene.window,
        pixel_spacing=rendered.grid.spacing[1:],
        bits_stored=STORED_BITS,
    )


def _write_dicom_series_folder(job: Job, scene: Scene, rendered: Rendered) -> None:
    write_dicom_series(
        job.path,
        _stored_values(scene, rendered.pixels),
        uid_seed=job.uid_seed,
        patient=dict(job.patient),
        modality=_DICOM_MODALITY[scene.signal],
        plane=rendered.grid.plane,
        spacing=rendered.grid.spacing,
        rescale=(1.0, CT_INTERCEPT),
        window=scene.window,
    )


def _write_dicom_multiframe_file(job: Job, scene: Scene, rendered: Rendered) -> None:
    write_dicom_multiframe(
        job.path,
        _stored_values(scene, rendered.pixels),
        uid_seed=job.uid_seed,
        patient=dict(job.patient),
        modality=_DICOM_MODALITY[scene.signal],
        plane=rendered.grid.plane,
        spacing=rendered.grid.spacing,
    )


_WRITERS: dict[str, Callable[[Job, Scene, Rendered], None]] = {
    "png": _write_image_file,
    "jpeg": _write_image_file,
    "nifti": _write_nifti_file,
    "dicom_image": _write_dicom_image_file,
    "dicom_series": _write_dicom_series_folder,
    "dicom_multiframe": _write_dicom_multiframe_file,
}


@dataclass(frozen=True)
class JobTruth:
    """Where one written study's findings are: a volume's finding slices (in stored order), a 2D
    image's lesion boxes (pixels of the written file)."""

    path: str
    finding_slices: tuple[int, ...]
    finding_boxes: tuple[LesionBox, ...]


def run_job(settings: RenderSettings, job: Job) -> JobTruth:
    """Draw one study with its own generator and write it; returns where its findings were drawn."""
    rng = np.random.default_rng([settings.seed, job.stream, job.index])
    rendered = synthesize(job.scene, job.conditions, kind=job.kind, rng=rng, settings=settings, plane=job.plane,
                          traits=dict(job.traits))
    _WRITERS[job.output](job, SCENES[job.scene], rendered)
    return JobTruth(job.path, rendered.finding_slices, rendered.finding_boxes)
