"""Deterministic phantom radiology data: the embedded default dataset.

Real collections (CheXpert, brain tumour MRI, IXI, COVID-CT-MD) and real CLIP
weights cannot be downloaded in the embedded setting, so the pipeline runs on
phantoms: synthetic studies drawn with numpy and written in the real file
formats and folder layouts (PNG/JPEG, DICOM single files, series and
multi-frame, NIfTI), so every adapter, curation step and evaluation suite runs
exactly as on real data. The content is meant to be learnable from pixels: a
small CLIP trained on it can tell region, modality and condition apart.

Geometry
--------
Anatomy is a function of patient coordinates in mm (DICOM LPS: +x patient
left, +y posterior, +z superior), sampled on a :class:`Grid` that follows the
plane orientations of :mod:`radclip.data.dicom_write`. A 2D CT/MR image is a
one-slice grid through the same 3D anatomy as the volumes; the chest X-ray is
a frontal projection drawn directly in 2D. Shapes are soft-edged ellipsoids,
bands and segments (about one pixel of partial volume); irregular outlines
come from "lobes" (low-order cosine perturbations of the radius by direction),
textures from smoothed noise.

Anatomy and contrast
--------------------
* Brain MRI (T1-like): scalp fat (bright), skull (dark ring), CSF, cortex,
  white matter with a wavy gyral border, deep grey nuclei, lateral and third
  ventricles, interhemispheric fissure, pituitary gland. Glioma: irregular
  hyperintense mass, often with a dark necrotic centre, in a halo of T1-dark
  oedema. Meningioma: round, homogeneously bright, based on the inner skull
  surface. Pituitary Tumor: small bright mass at the sella, midline, inferior.
* Chest X-ray (frontal, bright = attenuating): torso, neck, shoulders, dark
  lungs with hilar vessel markings above the diaphragm domes, heart (size set
  by the cardiothoracic ratio), aortic knob, spine, ribs, clavicles, gastric
  bubble. Atelectasis: band opacity with a raised hemidiaphragm. Cardiomegaly:
  CTR 0.56-0.66. Consolidation: dense lobulated patch. Edema: bilateral
  perihilar haze. Pleural Effusion: basal opacity with a meniscus. Rare:
  Pneumothorax (lung edge pulled in, black rim without markings), Nodule.
* Chest CT (HU): subcutaneous fat, muscle, lungs (about -850) with vessels
  denser at the hila and dome-shaped bases, heart in epicardial fat, aorta,
  trachea and bronchi, sternum, ribs, spine (cortex, cancellous bone, discs,
  canal). Nodule: small soft-tissue sphere. COVID-19: peripheral ground glass
  (about -500 HU, vessels stay visible), mostly bilateral. Community-Acquired
  Pneumonia: lobar consolidation (about 20 HU) with air bronchograms.
* Abdomen CT (HU, portal venous phase): fat, muscle wall, liver, spleen,
  kidneys (cortex, medulla, sinus fat), aorta, IVC, spine, psoas, bowel with
  fluid and gas, stomach with an air-fluid level. Liver Lesion: hypodense;
  rare Kidney Cyst: water density at the renal margin.
* Knee MRI (sagittal proton density, fat-saturated): femur, tibia, patella
  (dark cortex, suppressed marrow), cartilage, dark menisci, tendons, muscles,
  a trace of joint fluid. Joint Effusion: bright distended suprapatellar
  recess; rare Meniscal Tear: bright line through the posterior horn.

Sizes, positions, tissue contrast and texture are drawn per study, so only the
findings separate the classes. Condition frequencies are long-tailed and a
minority of chest X-rays carry two findings (see ``SCENES``).

Noise models
------------
MRI: a smooth multiplicative bias field (exp of low-frequency cosines) and
Rician noise, the magnitude of signal plus complex Gaussian noise. CT:
Gaussian noise in HU, slightly correlated as after reconstruction filtering.
X-ray: slight blur, exposure and gamma variation, Gaussian quantum noise.

3D findings
-----------
In a volume a finding spans ``phantoms.lesion_slices`` (e.g. 2-4 of 32)
contiguous slices at a random depth: its extent along the slice axis matches
that slab and it is drawn only into those slices. Anatomy, texture and noise
come from random streams separate from the finding's, so a study rendered with
and without its finding differs only in the slab: averaging slice embeddings
dilutes the signal, attending to the right slices does not.

Determinism
-----------
Each study has its own generator ``default_rng([seed, stream, index])``, split
into anatomy, finding and noise streams; which study gets which scene,
conditions, format and patient comes from a separate plan stream. Files carry
no timestamps (gzip mtime 0 for NIfTI, fixed DICOM dates, UIDs from
``uid_seed``), so the same params give byte-identical output whatever the
number of workers (on one platform and numpy version).
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import shutil
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage

from radclip.config import Params
from radclip.data.dicom_write import (
    PLANE_ORIENTATION,
    write_dicom_image,
    write_dicom_multiframe,
    write_dicom_series,
)
from radclip.data.records import Plane

Vec3 = tuple[float, float, float]
Rng = np.random.Generator
INF = math.inf

# Random streams: each study's generator is default_rng([seed, stream, index]).
STREAM_PLAN = 0
STREAM_TRAIN_2D = 1
STREAM_TRAIN_3D = 2
STREAM_SUITE_PLAN = 10
STREAM_CHEST_XRAY_5CLASS = 11
STREAM_BRAIN_MRI_4CLASS = 12
STREAM_BRAIN_MRI_3D_2CLASS = 13
STREAM_CHEST_CT_3D_3CLASS = 14

# How the training set is split between scenes (2D images and 3D volumes).
TRAIN_2D_MIX = {"chest_xray": 0.40, "brain_mri": 0.20, "chest_ct": 0.15, "abdomen_ct": 0.12, "knee_mri": 0.13}
TRAIN_3D_MIX = {"brain_mri": 0.40, "chest_ct": 0.40, "abdomen_ct": 0.20}
SAGITTAL_BRAIN_FRACTION = 0.4  # brain volumes acquired sagittally (IXI T1 is sagittal), the rest axial
MONOCHROME1_FRACTION = 0.3  # DICOM radiographs stored inverted, as some CR/DX systems do

MR_SCALE = 1000.0  # MR signal (about 0..1.5) -> stored integers
STORED_BITS = 12  # Bits Stored of X-ray and MR integers (CT: HU + 1024 fits too)
CT_INTERCEPT = -1024.0
HU_RANGE = (-1024.0, 3071.0)


# =========================================================================== geometry


def _plane_directions(plane: Plane) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS unit vectors of the array axes (slice normal, down a column, along a row)."""
    along_row, down_column = (np.asarray(v, dtype=float) for v in PLANE_ORIENTATION[plane])
    return np.cross(along_row, down_column), down_column, along_row


@dataclass(frozen=True, eq=False)
class Grid:
    """Patient coordinates (LPS, mm) of every voxel of an (S, H, W) array.

    ``coords[a]`` is the coordinate along patient axis ``a`` (0 x, 1 y, 2 z),
    shaped to broadcast against the array (it varies along one array axis).
    The grid is centred on the origin except along the slice normal, where
    its centre lies at ``depth``.
    """

    plane: Plane
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # slice, row, column (mm)
    coords: tuple[np.ndarray, np.ndarray, np.ndarray]
    slice_axis: int  # patient axis the slices are stacked along

    @classmethod
    def build(cls, plane: Plane, shape: Sequence[int], spacing: Sequence[float], depth: float = 0.0) -> "Grid":
        coords: list[np.ndarray] = [np.zeros((1, 1, 1), np.float32)] * 3
        slice_axis = 2
        for array_axis, direction in enumerate(_plane_directions(plane)):
            patient_axis = int(np.argmax(np.abs(direction)))
            n, step = int(shape[array_axis]), float(spacing[array_axis])
            offsets = (np.arange(n) - (n - 1) / 2) * step + (depth if array_axis == 0 else 0.0)
            broadcast = [1, 1, 1]
            broadcast[array_axis] = n
            coords[patient_axis] = (direction[patient_axis] * offsets).astype(np.float32).reshape(broadcast)
            if array_axis == 0:
                slice_axis = patient_axis
        return cls(plane, tuple(int(n) for n in shape), tuple(float(s) for s in spacing), tuple(coords), slice_axis)

    @property
    def pixel_mm(self) -> float:
        return min(self.spacing[1], self.spacing[2])

    @property
    def slice_positions(self) -> np.ndarray:
        """Coordinate of each slice along the slice axis (patient mm)."""
        return np.broadcast_to(self.coords[self.slice_axis], (self.shape[0], 1, 1)).reshape(-1)

    def slices(self, start: int, stop: int) -> "Grid":
        """The sub-grid of slices ``start:stop`` (for drawing a finding into its slab only)."""
        coords = tuple(c[start:stop] if c.shape[0] > 1 else c for c in self.coords)
        return replace(self, shape=(stop - start, *self.shape[1:]), coords=coords)

    def affine_lps(self) -> np.ndarray:
        """4x4 from (column, row, slice) voxel indices to LPS mm, as the DICOM writer places slices."""
        normal, down, along = _plane_directions(self.plane)
        affine = np.eye(4)
        affine[:3, 0] = along * self.spacing[2]
        affine[:3, 1] = down * self.spacing[1]
        affine[:3, 2] = normal * self.spacing[0]
        affine[:3, 3] = [float(c.reshape(-1)[0]) for c in self.coords]
        return affine


@dataclass(frozen=True, eq=False)
class Waves:
    """A sum of cosines: smooth random fields (in mm) or, on unit directions, lobes."""

    vectors: np.ndarray  # (n, 3) angular wave numbers
    phases: np.ndarray
    amplitudes: np.ndarray

    @classmethod
    def random(cls, rng: Rng, n: int, wavelength: float, amplitude: float) -> "Waves":
        directions = rng.normal(size=(n, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        lengths = wavelength * rng.uniform(0.75, 1.35, size=n)
        return cls(
            vectors=directions * (2 * np.pi / lengths)[:, None],
            phases=rng.uniform(0, 2 * np.pi, size=n),
            amplitudes=amplitude * np.sqrt(2.0 / n) * rng.uniform(0.6, 1.4, size=n),  # std about `amplitude`
        )

    def at(self, p: Sequence[Any]) -> np.ndarray:
        total: Any = 0.0
        for k, phase, amplitude in zip(self.vectors, self.phases, self.amplitudes):
            argument = float(k[0]) * p[0] + float(k[1]) * p[1] + float(k[2]) * p[2] + float(phase)
            total = total + float(amplitude) * np.cos(argument)
        return total


def random_lobes(rng: Rng, order: float = 3.0, roughness: float = 0.15, n: int = 5) -> Waves:
    """Lobulation of an outline: about ``order`` bumps around it, radius varying by ``roughness``."""
    return Waves.random(rng, n, wavelength=2 * np.pi / order, amplitude=roughness)


class Canvas:
    """Soft-edged shape masks (values in [0, 1]) on a grid, in a frame centred on
    ``origin`` and turned by ``yaw`` radians about z; edges are one pixel wide."""

    def __init__(self, grid: Grid, origin: Sequence[float] = (0.0, 0.0, 0.0), yaw: float = 0.0):
        x, y, z = (c - float(o) for c, o in zip(grid.coords, origin))
        if yaw:
            cos, sin = math.cos(yaw), math.sin(yaw)
            x, y = cos * x + sin * y, -sin * x + cos * y
        self.p = (x, y, z)
        self.edge = grid.pixel_mm

    def soft(self, signed_distance: Any) -> np.ndarray:
        """A mask from a signed distance in mm (positive inside), anti-aliased over one pixel."""
        return np.clip(signed_distance / self.edge + 0.5, 0.0, 1.0)

    def ellipsoid(
        self,
        center: Sequence[float],
        radii: Sequence[float],
        *,
        lobes: Waves | None = None,
        tilt: float = 0.0,
        tilt_axes: tuple[int, int] = (0, 1),
        power: float = 2.0,
    ) -> np.ndarray:
        """An ellipsoid (a cylinder where a radius is infinite); ``power`` > 2 squares it off."""
        d = [self.p[i] - float(center[i]) for i in range(3)]
        if tilt:
            i, j = tilt_axes
            cos, sin = math.cos(tilt), math.sin(tilt)
            d[i], d[j] = cos * d[i] + sin * d[j], -sin * d[i] + cos * d[j]
        axes = [i for i in range(3) if math.isfinite(radii[i])]
        u = {i: d[i] / float(radii[i]) for i in axes}
        if power == 2.0:
            r = np.sqrt(sum(u[i] * u[i] for i in axes))
        else:
            r = sum(np.abs(u[i]) ** power for i in axes) ** (1.0 / power)
        if lobes is not None:
            inverse = 1.0 / np.maximum(r, 1e-6)
            r = r / (1.0 + lobes.at([u[i] * inverse if i in u else 0.0 for i in range(3)]))
        smallest = min(float(radii[i]) for i in axes)
        return self.soft((1.0 - r) * smallest)

    def band(self, axis: int, center: float, half_width: float) -> np.ndarray:
        """The slab ``|coordinate - center| < half_width`` along one patient axis."""
        return self.soft(half_width - np.abs(self.p[axis] - center))

    def above(self, axis: int, level: Any) -> np.ndarray:
        """Where the coordinate exceeds ``level`` (a number or a surface array)."""
        return self.soft(self.p[axis] - level)

    def segment(self, a: Sequence[float], b: Sequence[float], half_width: float, axes: tuple[int, int]) -> np.ndarray:
        """A thick line from ``a`` to ``b`` in the plane of two patient axes (infinite along the third)."""
        i, j = axes
        pi, pj = self.p[i] - float(a[0]), self.p[j] - float(a[1])
        di, dj = float(b[0] - a[0]), float(b[1] - a[1])
        t = np.clip((pi * di + pj * dj) / (di * di + dj * dj), 0.0, 1.0)
        return self.soft(half_width - np.hypot(pi - t * di, pj - t * dj))


def paint(image: np.ndarray, mask: Any, value: Any, alpha: float = 1.0) -> None:
    """Composite ``value`` over ``image`` where ``mask`` is on (in place, painter's order)."""
    image += (alpha * mask) * (value - image)


def smooth_noise(rng: Rng, grid: Grid, sigma_mm: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation (texture)."""
    white = rng.standard_normal(grid.shape, dtype=np.float32)
    sigma = [0.0 if n == 1 else sigma_mm / step for n, step in zip(grid.shape, grid.spacing)]
    field_ = ndimage.gaussian_filter(white, sigma, mode="reflect")
    return field_ / (float(field_.std()) + 1e-6)


def periodic_band(coordinate: Any, period: float, phase: float, half_width: float, edge: float) -> np.ndarray:
    """Parallel bands (ribs, vertebrae) every ``period`` mm along a coordinate."""
    distance = np.abs(((coordinate - phase) % period) - period / 2)
    return np.clip((half_width - distance) / edge + 0.5, 0.0, 1.0)


@dataclass(frozen=True)
class Slab:
    """Where a finding lies along the slice axis: centre and half-extent (mm).

    In a volume ``half`` spans the finding's slices; in a 2D slice it is None
    and the finding keeps its own size (the slice passes through its centre).
    """

    axis: int
    center: float
    half: float | None = None

    def radii(self, radii: Sequence[float]) -> Vec3:
        out = [float(r) for r in radii]
        if self.half is not None:
            out[self.axis] = self.half
        return tuple(out)  # type: ignore[return-value]


def section_point(center: Sequence[float], radii: Sequence[float], slab: Slab, angle: float, fraction: float) -> Vec3:
    """A point of the ellipsoid's cross-section at the slab: ``fraction`` of the way
    from its centre to its outline, in direction ``angle`` (in the section's plane)."""
    t = (slab.center - center[slab.axis]) / radii[slab.axis]
    scale = math.sqrt(max(0.0, 1.0 - t * t))
    i, j = (k for k in range(3) if k != slab.axis)
    point = [float(c) for c in center]
    point[slab.axis] = slab.center
    point[i] += radii[i] * scale * fraction * math.cos(angle)
    point[j] += radii[j] * scale * fraction * math.sin(angle)
    return tuple(point)  # type: ignore[return-value]


def inside_point(rng: Rng, center: Sequence[float], radii: Sequence[float], slab: Slab, fraction: float) -> Vec3:
    """A uniformly random point of the cross-section, within ``fraction`` of its outline."""
    return section_point(center, radii, slab, rng.uniform(0, 2 * np.pi), fraction * math.sqrt(rng.uniform()))


def _shrink(radii: Sequence[float], mm: float) -> Vec3:
    return tuple(r - mm for r in radii)  # type: ignore[return-value]


def _scale(radii: Sequence[float], factor: float) -> Vec3:
    return tuple(r * factor for r in radii)  # type: ignore[return-value]


# =========================================================================== scenes and findings


@dataclass(frozen=True)
class Finding:
    """A condition drawer.

    ``place(anatomy, slab, rng)`` decides where and how big (a spec);
    ``draw(image, grid, anatomy, spec)`` paints it in place. ``depth(anatomy,
    axis)`` gives the (lo, hi) patient coordinates along a slice axis where the
    finding can sit (None: projection or fixed-plane scenes). ``adjust`` changes
    the anatomy itself (an enlarged heart) before rendering.
    """

    name: str
    weight: float  # relative frequency among the scene's studies
    place: Callable[[Any, Slab | None, Rng], Any]
    draw: Callable[[np.ndarray, Grid, Any, Any], None]
    depth: Callable[[Any, int], tuple[float, float]] | None = None
    adjust: Callable[[Any, Rng], Any] | None = None


@dataclass(frozen=True)
class Scene:
    """One region x modality: anatomy sampler, renderer, noise model, findings."""

    key: str
    region: str
    modality: str
    sample: Callable[[Rng], Any]
    render: Callable[[Any, Grid, Rng], np.ndarray]
    finish: Callable[[np.ndarray, Grid, Rng], np.ndarray]
    findings: tuple[Finding, ...]
    normal_weight: float
    signal: Literal["mr", "ct", "xray"]
    fov_mm: float  # in-plane field of view
    coverage_mm: float = 160.0  # volumes: extent along the slice axis
    plane_2d: Plane = "axial"
    planes_3d: tuple[Plane, ...] = ()  # () = no volumes of this scene
    # Where a normal study's 2D slice may lie along a patient axis (2 = z for axial; sectional
    # scenes are cut in any of planes_3d); None: projection or fixed-plane scene.
    slice_range: Callable[[Any, int], tuple[float, float]] | None = None
    combos: tuple[tuple[tuple[str, ...], float], ...] = ()  # multi-label studies (2D)
    window: tuple[float, float] | None = None  # CT display window (centre, width)

    def finding(self, name: str) -> Finding:
        for candidate in self.findings:
            if candidate.name == name:
                return candidate
        raise KeyError(f"{self.region} {self.modality} has no condition {name!r}")

    def label_weights(self, kind: str) -> dict[tuple[str, ...], float]:
        """Relative frequency of each label set; volumes carry at most one finding."""
        weights: dict[tuple[str, ...], float] = {(): self.normal_weight}
        weights.update({(f.name,): f.weight for f in self.findings})
        if kind == "2d":
            weights.update(dict(self.combos))
        return weights


def _finish_mr(image: np.ndarray, grid: Grid, rng: Rng) -> np.ndarray:
    """Smooth multiplicative bias field, then Rician noise |signal + complex Gaussian|."""
    bias = np.exp(rng.uniform(0.08, 0.25) * Waves.random(rng, 4, wavelength=260.0, amplitude=1.0).at(grid.coords))
    sigma = rng.uniform(0.015, 0.04)
    real = image * bias.astype(np.float32) + sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.hypot(real, imaginary)


def _finish_ct(image: np.ndarray, grid: Grid, rng: Rng) -> np.ndarray:
    """Gaussian noise in HU, smoothed a little as by a reconstruction kernel."""
    white = rng.standard_normal(grid.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(white, (0.0, 0.6, 0.6))  # in-plane correlation only, in pixels
    noise /= float(noise.std()) + 1e-6
    return np.clip(image + rng.uniform(8.0, 22.0) * noise, *HU_RANGE)


def _finish_xray(image: np.ndarray, grid: Grid, rng: Rng) -> np.ndarray:
    """Detector blur, exposure and gamma variation, quantum noise."""
    sigma_px = 1.5 / grid.pixel_mm  # detector and focal-spot blur of about 1.5 mm at any image size
    image = ndimage.gaussian_filter(image, (0.0, sigma_px, sigma_px))
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    image = image * rng.uniform(0.9, 1.08) + rng.uniform(-0.03, 0.03)
    image += rng.uniform(0.008, 0.022) * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.clip(image, 0.0, 1.0)


# --------------------------------------------------------------------------- brain MRI


@dataclass(frozen=True, eq=False)
class BrainAnatomy:
    center: Vec3
    yaw: float
    head: Vec3  # scalp surface semi-axes (mm)
    white_fraction: float  # white matter / brain semi-axes
    gyri: Waves  # wavy grey/white border
    ventricle_scale: float  # atrophy / age
    scalp: float
    bone: float
    csf: float
    grey: float
    white: float

    def shell(self, depth_mm: float) -> Vec3:
        return _shrink(self.head, depth_mm)

    @property
    def dura(self) -> Vec3:  # inner skull surface
        return self.shell(13.0)

    @property
    def brain(self) -> Vec3:
        return self.shell(16.0)

    @property
    def white_matter(self) -> Vec3:
        return _scale(self.brain, self.white_fraction)

    @property
    def sella_local(self) -> Vec3:
        return (0.0, -0.12 * self.head[1], -0.42 * self.head[2])

    def to_patient(self, local: Sequence[float]) -> Vec3:
        cos, sin = math.cos(self.yaw), math.sin(self.yaw)
        x, y, z = local
        return (self.center[0] + cos * x - sin * y, self.center[1] + sin * x + cos * y, self.center[2] + z)


def _sample_brain(rng: Rng) -> BrainAnatomy:
    grey = rng.uniform(0.36, 0.48)
    return BrainAnatomy(
        center=(rng.normal(0, 3), rng.normal(0, 4), rng.uniform(-14, -4)),
        yaw=rng.normal(0, 0.06),
        head=(rng.uniform(66, 76), rng.uniform(84, 96), rng.uniform(82, 96)),
        white_fraction=rng.uniform(0.7, 0.8),
        gyri=random_lobes(rng, order=9.0, roughness=0.06, n=8),
        ventricle_scale=rng.uniform(0.75, 1.5),
        scalp=rng.uniform(0.7, 0.9),
        bone=rng.uniform(0.04, 0.1),
        csf=rng.uniform(0.07, 0.15),
        grey=grey,
        white=grey + rng.uniform(0.17, 0.3),
    )


def _render_brain(a: BrainAnatomy, grid: Grid, rng: Rng) -> np.ndarray:
    cv = Canvas(grid, a.center, a.yaw)
    image = np.zeros(grid.shape, np.float32)
    origin = (0.0, 0.0, 0.0)
    paint(image, cv.ellipsoid(origin, a.head), a.scalp)
    paint(image, cv.ellipsoid(origin, a.shell(6.0)), a.bone)  # cortical bone gives no MR signal
    paint(image, cv.ellipsoid(origin, a.dura), a.csf)
    brain = cv.ellipsoid(origin, a.brain)
    paint(image, brain, a.grey)
    paint(image, cv.ellipsoid(origin, a.white_matter, lobes=a.gyri), a.white)
    for side in (-1, 1):  # thalami / basal ganglia
        paint(image, cv.ellipsoid((side * 13.0, 4.0, 0.05 * a.head[2]), (9.0, 13.0, 9.0)), (a.grey + a.white) / 2)
    s = a.ventricle_scale
    for side in (-1, 1):  # lateral ventricles, anterior horns diverging
        center = (side * 6.0 * math.sqrt(s), -4.0, 0.15 * a.head[2])
        paint(image, cv.ellipsoid(center, (3.5 * s, 24.0, 10.0), tilt=-side * 0.2), a.csf)
    paint(image, cv.ellipsoid((0.0, 2.0, 0.0), (1.2 * s, 10.0, 9.0)), a.csf)  # third ventricle
    fissure = cv.band(0, 0.0, 1.2) * brain * np.maximum(1 - cv.band(1, 0.0, 30.0), cv.above(2, 0.35 * a.head[2]))
    paint(image, fissure, a.csf, alpha=0.8)
    paint(image, cv.ellipsoid(a.sella_local, (5.0, 4.0, 3.5)), a.grey + 0.05)  # normal pituitary gland
    return image


def _brain_slice_range(a: BrainAnatomy, axis: int) -> tuple[float, float]:
    if axis == 2:  # axial: from the skull base to the vertex
        return a.center[2] - 0.35 * a.head[2], a.center[2] + 0.55 * a.head[2]
    return a.center[axis] - 0.45 * a.head[axis], a.center[axis] + 0.45 * a.head[axis]


def _brain_mass_mask(grid: Grid, a: BrainAnatomy) -> np.ndarray:
    """Where intracranial findings may paint (inside the dura)."""
    return Canvas(grid, a.center, a.yaw).ellipsoid((0.0, 0.0, 0.0), a.dura)


def _glioma_depth(a: BrainAnatomy, axis: int) -> tuple[float, float]:
    return a.center[axis] - 0.5 * a.white_matter[axis], a.center[axis] + 0.5 * a.white_matter[axis]


def _place_glioma(a: BrainAnatomy, slab: Slab, rng: Rng) -> dict:
    radius = rng.uniform(9.0, 20.0)
    return {
        "center": inside_point(rng, a.center, a.white_matter, slab, 0.55),
        "radii": slab.radii((radius, radius, radius)),
        "lobes": random_lobes(rng, order=3.0, roughness=0.22),
        "oedema": rng.uniform(1.5, 2.1),
        "oedema_lobes": random_lobes(rng, order=2.5, roughness=0.25),
        "oedema_value": rng.uniform(0.24, 0.32),
        "value": rng.uniform(0.85, 1.0),
        "texture": Waves.random(rng, 4, wavelength=12.0, amplitude=0.06),
        "necrosis": rng.uniform() < 0.6,
    }


def _draw_glioma(image: np.ndarray, grid: Grid, a: BrainAnatomy, s: dict) -> None:
    cv = Canvas(grid)
    intracranial = _brain_mass_mask(grid, a)
    oedema_radii = _scale(s["radii"], s["oedema"])
    paint(image, cv.ellipsoid(s["center"], oedema_radii, lobes=s["oedema_lobes"]) * intracranial, s["oedema_value"])
    mass = cv.ellipsoid(s["center"], s["radii"], lobes=s["lobes"]) * intracranial
    paint(image, mass, s["value"] * (1.0 + s["texture"].at(cv.p)))
    if s["necrosis"]:
        paint(image, cv.ellipsoid(s["center"], _scale(s["radii"], 0.45), lobes=s["lobes"]), a.csf + 0.08)


def _meningioma_depth(a: BrainAnatomy, axis: int) -> tuple[float, float]:
    return a.center[axis] - 0.7 * a.dura[axis], a.center[axis] + 0.7 * a.dura[axis]


def _place_meningioma(a: BrainAnatomy, slab: Slab, rng: Rng) -> dict:
    radius = rng.uniform(8.0, 18.0)
    surface = list(section_point(a.center, a.dura, slab, rng.uniform(0, 2 * np.pi), 1.0))
    if slab.axis != 2 and surface[2] < a.center[2] - 0.2 * a.dura[2]:
        surface[2] = 2 * a.center[2] - surface[2]  # on the convexity, not the skull base
    inward = np.asarray(a.center) - np.asarray(surface)
    inward[slab.axis] = 0.0
    center = np.asarray(surface) + inward / (np.linalg.norm(inward) + 1e-6) * 0.45 * radius  # broad dural base
    return {"center": tuple(center), "radii": slab.radii((radius,) * 3), "value": rng.uniform(0.85, 1.0)}


def _draw_meningioma(image: np.ndarray, grid: Grid, a: BrainAnatomy, s: dict) -> None:
    mass = Canvas(grid).ellipsoid(s["center"], s["radii"]) * _brain_mass_mask(grid, a)
    paint(image, mass, s["value"])


def _pituitary_depth(a: BrainAnatomy, axis: int) -> tuple[float, float]:
    sella = a.to_patient(a.sella_local)
    return (sella[2], sella[2] + 6.0) if axis == 2 else (sella[axis] - 2.0, sella[axis] + 2.0)


def _place_pituitary(a: BrainAnatomy, slab: Slab, rng: Rng) -> dict:
    radius = rng.uniform(6.0, 11.0)
    center = list(a.to_patient(a.sella_local))
    center[2] += 0.4 * radius  # grows up out of the sella
    center[slab.axis] = slab.center
    radii = slab.radii((radius, radius * 0.9, radius))
    return {"center": tuple(center), "radii": radii, "value": rng.uniform(0.82, 0.97)}


def _draw_pituitary(image: np.ndarray, grid: Grid, a: BrainAnatomy, s: dict) -> None:
    paint(image, Canvas(grid).ellipsoid(s["center"], s["radii"]), s["value"])


# --------------------------------------------------------------------------- chest X-ray


@dataclass(frozen=True, eq=False)
class ChestXrayAnatomy:
    shift: tuple[float, float]  # (x, z) of the chest in the field
    half_width: float  # midline to the lateral lung edge
    mediastinum: float  # midline to the medial lung edge
    apex: float  # lung apices (z)
    domes: tuple[float, float]  # hemidiaphragm tops, (patient right, left)
    ctr: float  # cardiothoracic ratio
    rib_spacing: float
    rib_phase: float
    soft: float
    lung: float
    bone: float
    gastric_bubble: bool

    @property
    def hilum_z(self) -> float:
        return (self.apex + sum(self.domes) / 2) / 2 + 10.0

    def lung_box(self, side: int, collapse: float = 1.0) -> tuple[Vec3, Vec3]:
        """Centre and semi-axes of one lung's outline (before the diaphragm cuts it)."""
        width = (self.half_width - self.mediastinum) * collapse
        bottom = min(self.domes) - 60.0
        top = self.apex - (1.0 - collapse) * 60.0
        return (side * (self.mediastinum + width / 2), 0.0, (top + bottom) / 2), (width / 2, INF, (top - bottom) / 2)


def _sample_chest_xray(rng: Rng) -> ChestXrayAnatomy:
    right = rng.uniform(-85, -55)
    soft = rng.uniform(0.5, 0.6)
    return ChestXrayAnatomy(
        shift=(rng.normal(0, 6), rng.normal(0, 8)),
        half_width=rng.uniform(125, 148),
        mediastinum=rng.uniform(16, 26),
        apex=rng.uniform(115, 140),
        domes=(right, right - rng.uniform(5, 20)),  # the left hemidiaphragm sits lower
        ctr=rng.uniform(0.38, 0.48),
        rib_spacing=rng.uniform(21, 26),
        rib_phase=rng.uniform(0, 26),
        soft=soft,
        lung=rng.uniform(0.1, 0.18),
        bone=rng.uniform(0.07, 0.12),
        gastric_bubble=bool(rng.uniform() < 0.6),
    )


def _xray_canvas(grid: Grid, a: ChestXrayAnatomy) -> Canvas:
    return Canvas(grid, (a.shift[0], 0.0, a.shift[1]))


def _xray_lung(cv: Canvas, a: ChestXrayAnatomy, side: int, collapse: float = 1.0) -> np.ndarray:
    center, radii = a.lung_box(side, collapse)
    outline = cv.ellipsoid(center, radii, power=2.6)
    dome_top = a.domes[0 if side < 0 else 1]
    dome = dome_top - 45.0 * ((cv.p[0] - center[0]) / radii[0]) ** 2  # deepest at the costophrenic angle
    return outline * cv.above(2, dome)


def _xray_heart(cv: Canvas, a: ChestXrayAnatomy) -> np.ndarray:
    width = a.ctr * 2 * a.half_width
    height = 0.78 * width
    center = (0.15 * width, 0.0, a.domes[1] + 0.42 * height)  # two thirds left of the midline, on the diaphragm
    return cv.ellipsoid(center, (width / 2, INF, height / 2), tilt=-0.35, tilt_axes=(0, 2))


def _render_chest_xray(a: ChestXrayAnatomy, grid: Grid, rng: Rng) -> np.ndarray:
    cv = _xray_canvas(grid, a)
    x, z = cv.p[0], cv.p[2]
    image = np.full(grid.shape, 0.04, np.float32)
    torso = cv.ellipsoid((0.0, 0.0, -100.0), (a.half_width + 40, INF, 330.0), power=3.0)
    paint(image, torso, a.soft)
    paint(image, cv.ellipsoid((0.0, 0.0, a.apex + 80), (45.0, INF, 90.0)), a.soft)  # neck
    for side in (-1, 1):  # shoulders
        paint(image, cv.ellipsoid((side * (a.half_width + 10), 0.0, a.apex + 40), (70.0, INF, 45.0)), a.soft)
    vessels = np.clip(smooth_noise(rng, grid, 2.5) - 0.5, 0.0, None)
    hilar = np.exp(-((np.abs(x) - a.mediastinum - 15) ** 2 + (z - a.hilum_z) ** 2) / (2 * 55.0**2))
    lung_value = a.lung + 0.1 * vessels * (0.35 + hilar)
    lungs = np.zeros(grid.shape, np.float32)
    for side in (-1, 1):
        lungs = np.maximum(lungs, _xray_lung(cv, a, side))
        hilum = cv.ellipsoid((side * (a.mediastinum + 10), 0.0, a.hilum_z), (10.0, INF, 30.0))
        paint(lungs, hilum, 0.0, 0.35)  # hilar vessels: lung partly hidden
    paint(image, lungs, lung_value)
    paint(image, _xray_heart(cv, a), 0.95 * a.soft, 0.9)
    paint(image, cv.ellipsoid((a.mediastinum + 8, 0.0, a.apex - 55), (16.0, INF, 14.0)), 0.95 * a.soft, 0.8)
    if a.gastric_bubble:
        paint(image, cv.ellipsoid((60.0, 0.0, a.domes[1] - 28), (22.0, INF, 13.0)), 0.22)
    image += 0.07 * cv.band(0, 0.0, 17.0) * torso * (1 + 0.3 * np.cos(2 * np.pi * z / 30.0))  # spine
    thorax = cv.band(0, 0.0, a.half_width + 15) * (1 - cv.band(0, 0.0, 14.0))
    thorax = thorax * cv.above(2, min(a.domes) - 40) * (1 - cv.above(2, a.apex + 25))
    posterior = periodic_band(z + 0.0025 * x**2, a.rib_spacing, a.rib_phase, 4.5, cv.edge)
    anterior = periodic_band(z - 0.4 * np.abs(x), a.rib_spacing * 1.3, a.rib_phase, 4.0, cv.edge)
    image += a.bone * thorax * (posterior + 0.4 * anterior) * (0.35 + 0.65 * lungs)  # clearest against air
    for side in (-1, 1):  # clavicles
        clavicle = cv.segment((side * 15.0, a.apex + 8), (side * (a.half_width + 10), a.apex + 42), 6.0, (0, 2))
        image += 1.3 * a.bone * clavicle
    return image


def _xray_side(rng: Rng) -> int:
    return int(rng.choice([-1, 1]))


def _lung_point(rng: Rng, a: ChestXrayAnatomy, side: int, low: float, high: float) -> tuple[float, float]:
    """A point inside one lung: lateral fraction in [0.25, 0.75], height fraction in [low, high] above the dome."""
    width = a.half_width - a.mediastinum
    x = side * (a.mediastinum + width * rng.uniform(0.25, 0.75))
    dome = a.domes[0 if side < 0 else 1]
    z = dome + (a.apex - dome) * rng.uniform(low, high)
    return x, z


def _adjust_atelectasis(a: ChestXrayAnatomy, rng: Rng) -> ChestXrayAnatomy:
    side = 0 if rng.uniform() < 0.5 else 1
    domes = list(a.domes)
    domes[side] += rng.uniform(8.0, 20.0)  # volume loss pulls the hemidiaphragm up
    return replace(a, domes=tuple(domes))


def _place_atelectasis(a: ChestXrayAnatomy, slab: None, rng: Rng) -> dict:
    bands = []
    for _ in range(1 + int(rng.uniform() < 0.3)):
        side = _xray_side(rng)
        x, z = _lung_point(rng, a, side, 0.08, 0.35)
        angle, half_length = rng.uniform(-0.35, 0.35), rng.uniform(25.0, 45.0)
        dx, dz = half_length * math.cos(angle), half_length * math.sin(angle)
        bands.append(((x - dx, z - dz), (x + dx, z + dz), rng.uniform(4.5, 7.0), rng.uniform(0.85, 1.0)))
    return {"bands": bands}


def _draw_atelectasis(image: np.ndarray, grid: Grid, a: ChestXrayAnatomy, s: dict) -> None:
    cv = _xray_canvas(grid, a)
    lungs = np.maximum(_xray_lung(cv, a, -1), _xray_lung(cv, a, 1))
    for start, end, half, level in s["bands"]:
        paint(image, cv.segment(start, end, half, (0, 2)) * lungs, level * a.soft)


def _adjust_cardiomegaly(a: ChestXrayAnatomy, rng: Rng) -> ChestXrayAnatomy:
    return replace(a, ctr=rng.uniform(0.56, 0.66))


def _place_nothing(a: Any, slab: Slab | None, rng: Rng) -> dict:
    return {}


def _draw_nothing(image: np.ndarray, grid: Grid, a: Any, s: dict) -> None:
    """The finding lives in the anatomy (see its ``adjust``)."""


def _place_consolidation(a: ChestXrayAnatomy, slab: None, rng: Rng) -> dict:
    side = _xray_side(rng)
    x, z = _lung_point(rng, a, side, 0.12, 0.6)
    radius = rng.uniform(22.0, 40.0)
    return {
        "center": (x, 0.0, z),
        "radii": (radius * rng.uniform(0.75, 1.25), INF, radius),
        "lobes": random_lobes(rng, order=3.0, roughness=0.2),
        "level": rng.uniform(0.85, 1.0),
        "side": side,
    }


def _draw_consolidation(image: np.ndarray, grid: Grid, a: ChestXrayAnatomy, s: dict) -> None:
    cv = _xray_canvas(grid, a)
    patch = cv.ellipsoid(s["center"], s["radii"], lobes=s["lobes"]) * _xray_lung(cv, a, s["side"])
    paint(image, patch, s["level"] * a.soft, 0.9)


def _place_edema(a: ChestXrayAnatomy, slab: None, rng: Rng) -> dict:
    return {"sigma": (rng.uniform(35, 50), rng.uniform(45, 65)), "level": rng.uniform(0.55, 0.8)}


def _draw_edema(image: np.ndarray, grid: Grid, a: ChestXrayAnatomy, s: dict) -> None:
    cv = _xray_canvas(grid, a)
    sx, sz = s["sigma"]
    for side in (-1, 1):  # bat-wing haze around both hila
        dx = cv.p[0] - side * (a.mediastinum + 20)
        haze = np.exp(-(dx**2 / (2 * sx**2) + (cv.p[2] - a.hilum_z + 10) ** 2 / (2 * sz**2)))
        paint(image, haze * _xray_lung(cv, a, side), a.soft, s["level"])


def _place_effusion(a: ChestXrayAnatomy, slab: None, rng: Rng) -> dict:
    sides = [-1, 1] if rng.uniform() < 0.4 else [_xray_side(rng)]
    return {"levels": {side: rng.uniform(25.0, 70.0) for side in sides}, "meniscus": rng.uniform(20.0, 35.0)}


def _draw_effusion(image: np.ndarray, grid: Grid, a: ChestXrayAnatomy, s: dict) -> None:
    cv = _xray_canvas(grid, a)
    for side, height in s["levels"].items():
        center, radii = a.lung_box(side)
        dome = a.domes[0 if side < 0 else 1] - 45.0
        lateral = (cv.p[0] - center[0]) * side / radii[0]  # -1 medial .. +1 lateral
        meniscus = dome + height + s["meniscus"] * np.clip(lateral, -1.0, 1.0) ** 2 * (lateral > 0)
        fluid = (1 - cv.above(2, meniscus)) * cv.ellipsoid(center, radii, power=2.6)
        paint(image, fluid, 0.95 * a.soft, 0.95)


def _place_pneumothorax(a: ChestXrayAnatomy, slab: None, rng: Rng) -> dict:
    return {"side": _xray_side(rng), "collapse": rng.uniform(0.65, 0.82)}


def _draw_pneumothorax(image: np.ndarray, grid: Grid, a: ChestXrayAnatomy, s: dict) -> None:
    cv = _xray_canvas(grid, a)
    lung = _xray_lung(cv, a, s["side"])
    collapsed = _xray_lung(cv, a, s["side"], s["collapse"])
    paint(image, lung * (1 - collapsed), 0.5 * a.lung)  # free air: darker, no vessel markings
    pleura = np.clip(collapsed - _xray_lung(cv, a, s["side"], s["collapse"] - 0.02), 0.0, 1.0)
    image += 0.5 * a.bone * pleura  # the visceral pleural line


def _place_xray_nodule(a: ChestXrayAnatomy, slab: None, rng: Rng) -> dict:
    side = _xray_side(rng)
    x, z = _lung_point(rng, a, side, 0.25, 0.8)
    return {"center": (x, 0.0, z), "radius": rng.uniform(6.0, 11.0)}


def _draw_xray_nodule(image: np.ndarray, grid: Grid, a: ChestXrayAnatomy, s: dict) -> None:
    cv = _xray_canvas(grid, a)
    paint(image, cv.ellipsoid(s["center"], (s["radius"], INF, s["radius"])), 1.05 * a.soft)


# --------------------------------------------------------------------------- CT shared parts


def _draw_spine(image: np.ndarray, cv: Canvas, y: float, radius: float, disc_phase: float) -> None:
    """Vertebral body (cortex, cancellous bone, discs), posterior arch and canal at (0, y)."""
    paint(image, cv.ellipsoid((0.0, y + radius * 2.0, 0.0), (radius * 1.1, radius * 0.6, INF)), 600.0)
    paint(image, cv.ellipsoid((0.0, y, 0.0), (radius, radius * 0.9, INF)), 650.0)
    disc = periodic_band(cv.p[2], 30.0, disc_phase, 3.0, cv.edge)
    paint(image, cv.ellipsoid((0.0, y, 0.0), (radius - 2.5, radius * 0.9 - 2.5, INF)), 230.0 - 140.0 * disc)
    paint(image, cv.ellipsoid((0.0, y + radius * 1.45, 0.0), (radius * 0.5, radius * 0.45, INF)), 15.0)  # canal


def _draw_ribs(image: np.ndarray, cv: Canvas, inner: tuple[float, float], phase: float, mask: Any = 1.0) -> None:
    """Rib cross-sections along the inner chest wall; ribs run down anteriorly."""
    ring = cv.ellipsoid((0.0, 0.0, 0.0), (inner[0] + 9, inner[1] + 9, INF)) - cv.ellipsoid(
        (0.0, 0.0, 0.0), (inner[0] + 1, inner[1] + 1, INF)
    )
    arc = np.abs(np.arctan2(cv.p[0], cv.p[1])) * (inner[0] + inner[1]) / 2  # from the spine round to the sternum
    ribs = periodic_band(cv.p[2] + 0.5 * arc, 28.0, phase, 6.0, cv.edge)
    paint(image, np.clip(ring, 0.0, 1.0) * ribs * mask, 650.0)


# --------------------------------------------------------------------------- chest CT


@dataclass(frozen=True, eq=False)
class ChestCtAnatomy:
    center: tuple[float, float]  # body centre (x, y); anatomy below is relative to it
    body: tuple[float, float]  # skin semi-axes
    fat: float  # subcutaneous fat thickness
    mediastinum: float  # midline to the medial lung edge
    apex: float
    domes: tuple[float, float]  # (right, left)
    heart: Vec3
    heart_radii: Vec3
    lung_hu: float
    fat_hu: float
    rib_phase: float
    disc_phase: float

    @property
    def inner(self) -> tuple[float, float]:  # thoracic cavity semi-axes
        return self.body[0] - self.fat - 12.0, self.body[1] - self.fat - 10.0

    @property
    def spine_y(self) -> float:
        return self.inner[1] - 22.0

    def lung(self, side: int) -> tuple[Vec3, Vec3]:
        lateral = self.inner[0] - 4.0
        bottom = min(self.domes) - 50.0
        center = (side * (self.mediastinum + lateral) / 2, 0.1 * self.inner[1], (self.apex + bottom) / 2)
        radii = ((lateral - self.mediastinum) / 2, 0.85 * self.inner[1], (self.apex - bottom) / 2)
        return center, radii


def _sample_chest_ct(rng: Rng) -> ChestCtAnatomy:
    right = rng.uniform(-95, -75)
    return ChestCtAnatomy(
        center=(rng.normal(0, 4), rng.normal(0, 4)),
        body=(rng.uniform(150, 175), rng.uniform(100, 125)),
        fat=rng.uniform(8, 25),
        mediastinum=rng.uniform(22, 30),
        apex=rng.uniform(100, 120),
        domes=(right, right - rng.uniform(8, 20)),
        heart=(rng.uniform(10, 22), -rng.uniform(15, 30), right + rng.uniform(20, 35)),
        heart_radii=(rng.uniform(48, 60), rng.uniform(40, 50), rng.uniform(45, 55)),
        lung_hu=rng.uniform(-880, -830),
        fat_hu=rng.uniform(-110, -80),
        rib_phase=rng.uniform(0, 28),
        disc_phase=rng.uniform(0, 30),
    )


def _ct_canvas(grid: Grid, center: tuple[float, float]) -> Canvas:
    return Canvas(grid, (center[0], center[1], 0.0))


def _ct_lung(cv: Canvas, a: ChestCtAnatomy, side: int) -> np.ndarray:
    center, radii = a.lung(side)
    dome_top = a.domes[0 if side < 0 else 1]
    bowl = ((cv.p[0] - center[0]) / radii[0]) ** 2 + ((cv.p[1] - center[1]) / radii[1]) ** 2
    return cv.ellipsoid(center, radii) * cv.above(2, dome_top - 55.0 * bowl)  # recesses reach lower


def _render_chest_ct(a: ChestCtAnatomy, grid: Grid, rng: Rng) -> np.ndarray:
    cv = _ct_canvas(grid, a.center)
    x, y, _ = cv.p
    image = np.full(grid.shape, -1000.0, np.float32)
    paint(image, cv.ellipsoid((0, 0, 0), (*a.body, INF)), a.fat_hu)
    paint(image, cv.ellipsoid((0, 0, 0), (a.body[0] - a.fat, a.body[1] - a.fat, INF)), 45.0)
    paint(image, cv.ellipsoid((0, 0, 0), (*a.inner, INF)), -40.0)  # mediastinal fat and soft tissue
    _draw_ribs(image, cv, a.inner, a.rib_phase)
    # Vessels as tubes: where two independent smooth fields are both near zero (dots and
    # short curved segments in a slice), thicker towards the hila.
    tube = np.hypot(smooth_noise(rng, grid, 4.0), smooth_noise(rng, grid, 4.0))
    hilar = np.exp(-((np.abs(x) - a.mediastinum - 10) ** 2 + y**2) / (2 * 45.0**2))
    vessel = np.clip(1.0 - tube / (0.18 + 0.25 * hilar), 0.0, 1.0)
    lung_value = a.lung_hu + 25.0 * y / a.inner[1] + (30.0 - a.lung_hu) * 0.9 * vessel  # gravity: posterior denser
    for side in (-1, 1):
        paint(image, _ct_lung(cv, a, side), lung_value)
    paint(image, cv.ellipsoid((0.0, -a.inner[1] + 8, 0.0), (14.0, 7.0, INF)) * (1 - cv.above(2, a.apex)), 450.0)
    paint(image, cv.ellipsoid(a.heart, _shrink(a.heart_radii, -5.0)), -90.0)  # epicardial fat
    paint(image, cv.ellipsoid(a.heart, a.heart_radii), 40.0)
    heart_top = a.heart[2] + a.heart_radii[2]
    ascending = cv.ellipsoid((-8.0, a.heart[1] - 5, 0.0), (14.0, 14.0, INF))
    paint(image, ascending * cv.above(2, heart_top - 15) * (1 - cv.above(2, a.apex - 20)), 40.0)
    paint(image, cv.ellipsoid((20.0, a.spine_y - 30, 0.0), (11.0, 11.0, INF)) * (1 - cv.above(2, a.apex - 20)), 40.0)
    carina = a.apex - 0.35 * (a.apex - a.domes[0])
    paint(image, cv.ellipsoid((0.0, a.spine_y - 40, 0.0), (9.0, 8.0, INF)) * cv.above(2, carina), -1000.0)
    for side in (-1, 1):  # main bronchi
        paint(image, cv.ellipsoid((side * 14.0, a.spine_y - 36, carina - 14), (6.0, 6.0, 16.0)), -1000.0)
    _draw_spine(image, cv, a.spine_y, 15.0, a.disc_phase)
    return image


def _lung_depth(a: ChestCtAnatomy, axis: int) -> tuple[float, float]:
    return max(a.domes) + 15.0, a.apex - 30.0


def _place_ct_nodule(a: ChestCtAnatomy, slab: Slab, rng: Rng) -> dict:
    center, radii = a.lung(int(rng.choice([-1, 1])))
    radius = rng.uniform(6.0, 12.0)
    return {
        "center": inside_point(rng, center, radii, slab, 0.6),
        "radii": slab.radii((radius,) * 3),
        "hu": rng.uniform(-20.0, 60.0),
    }


def _draw_ct_nodule(image: np.ndarray, grid: Grid, a: ChestCtAnatomy, s: dict) -> None:
    paint(image, _ct_canvas(grid, a.center).ellipsoid(s["center"], s["radii"]), s["hu"])


def _place_covid(a: ChestCtAnatomy, slab: Slab, rng: Rng) -> dict:
    count = int(rng.integers(2, 5))
    sides = [-1, 1] + [int(rng.choice([-1, 1])) for _ in range(count - 2)] if rng.uniform() < 0.8 else [
        int(rng.choice([-1, 1]))
    ] * count
    patches = []
    for side in sides:
        center, radii = a.lung(side)
        # peripheral and mostly posterior/lateral: angle measured from the lateral direction
        angle = rng.uniform(-0.6, 1.9)
        direction = math.atan2(math.sin(angle), side * math.cos(angle))
        in_plane = rng.uniform(14.0, 30.0)
        patches.append(
            {
                "center": section_point(center, radii, slab, direction, rng.uniform(0.65, 0.85)),
                "radii": slab.radii((in_plane, in_plane * rng.uniform(0.6, 1.0), in_plane)),
                "lobes": random_lobes(rng, order=3.0, roughness=0.25),
                "side": side,
            }
        )
    return {"patches": patches, "hu": rng.uniform(-580.0, -450.0), "texture": Waves.random(rng, 4, 10.0, 40.0)}


def _draw_covid(image: np.ndarray, grid: Grid, a: ChestCtAnatomy, s: dict) -> None:
    cv = _ct_canvas(grid, a.center)
    target = s["hu"] + s["texture"].at(cv.p)
    for patch in s["patches"]:
        patch_mask = cv.ellipsoid(patch["center"], patch["radii"], lobes=patch["lobes"])
        ground_glass = patch_mask * _ct_lung(cv, a, patch["side"])
        np.maximum(image, image + ground_glass * (target - image), out=image)  # hazier, vessels stay visible


def _place_pneumonia(a: ChestCtAnatomy, slab: Slab, rng: Rng) -> dict:
    side = int(rng.choice([-1, 1]))
    center, radii = a.lung(side)
    in_plane = rng.uniform(28.0, 45.0)
    return {
        "center": section_point(center, radii, slab, rng.uniform(0.3, 2.8), rng.uniform(0.25, 0.5)),
        "radii": slab.radii((in_plane, in_plane * rng.uniform(0.8, 1.2), in_plane)),
        "lobes": random_lobes(rng, order=2.5, roughness=0.2),
        "side": side,
        "hu": rng.uniform(10.0, 40.0),
        "bronchi": Waves.random(rng, 4, 30.0, 1.0),
    }


def _draw_pneumonia(image: np.ndarray, grid: Grid, a: ChestCtAnatomy, s: dict) -> None:
    cv = _ct_canvas(grid, a.center)
    region = cv.ellipsoid(s["center"], s["radii"], lobes=s["lobes"]) * _ct_lung(cv, a, s["side"])
    air_bronchogram = np.clip(1.0 - np.abs(s["bronchi"].at(cv.p)) / 0.12, 0.0, 1.0) * 0.8
    paint(image, region, s["hu"] + (-850.0 - s["hu"]) * air_bronchogram)


# --------------------------------------------------------------------------- abdomen CT


@dataclass(frozen=True, eq=False)
class AbdomenCtAnatomy:
    center: tuple[float, float]
    body: tuple[float, float]
    fat: float
    liver: tuple[Vec3, Vec3]  # centre, semi-axes (relative to the body centre)
    spleen: tuple[Vec3, Vec3]
    kidneys: tuple[tuple[Vec3, Vec3], tuple[Vec3, Vec3]]  # (right, left)
    kidney_tilt: float
    stomach: tuple[Vec3, Vec3]
    liver_hu: float
    fat_hu: float
    rib_phase: float
    disc_phase: float

    @property
    def inner(self) -> tuple[float, float]:
        return self.body[0] - self.fat - 10.0, self.body[1] - self.fat - 10.0

    @property
    def spine_y(self) -> float:
        return self.inner[1] - 25.0


def _sample_abdomen_ct(rng: Rng) -> AbdomenCtAnatomy:
    body = (rng.uniform(145, 180), rng.uniform(105, 135))
    fat = rng.uniform(15, 35)
    ia, ib = body[0] - fat - 10, body[1] - fat - 10
    spine_y = ib - 25
    kidneys = []
    for side in (-1, 1):
        center = (side * rng.uniform(55, 68), spine_y - rng.uniform(5, 15), rng.uniform(-55, -30))
        kidneys.append((center, (rng.uniform(22, 28), rng.uniform(28, 35), rng.uniform(48, 58))))
    return AbdomenCtAnatomy(
        center=(rng.normal(0, 4), rng.normal(0, 4)),
        body=body,
        fat=fat,
        liver=(
            (-rng.uniform(0.35, 0.45) * ia, -rng.uniform(0.05, 0.2) * ib, rng.uniform(30, 55)),
            (rng.uniform(0.55, 0.65) * ia, rng.uniform(0.6, 0.75) * ib, rng.uniform(65, 85)),
        ),
        spleen=(
            (rng.uniform(0.55, 0.65) * ia, rng.uniform(0.2, 0.4) * ib, rng.uniform(20, 50)),
            (rng.uniform(18, 26), rng.uniform(35, 48), rng.uniform(40, 55)),
        ),
        kidneys=tuple(kidneys),  # type: ignore[arg-type]
        kidney_tilt=rng.uniform(0.3, 0.5),
        stomach=(
            (rng.uniform(30, 50), -rng.uniform(0.3, 0.5) * ib, rng.uniform(50, 75)),
            (rng.uniform(30, 42), rng.uniform(22, 30), rng.uniform(30, 40)),
        ),
        liver_hu=rng.uniform(95, 115),
        fat_hu=rng.uniform(-110, -80),
        rib_phase=rng.uniform(0, 28),
        disc_phase=rng.uniform(0, 30),
    )


def _abdomen_cavity(cv: Canvas, a: AbdomenCtAnatomy) -> np.ndarray:
    return cv.ellipsoid((0, 0, 0), (*a.inner, INF))


def _kidney(cv: Canvas, a: AbdomenCtAnatomy, side: int, scale: float = 1.0, medial: float = 0.0) -> np.ndarray:
    center, radii = a.kidneys[0 if side < 0 else 1]
    shifted = (center[0] - side * medial, center[1], center[2])
    return cv.ellipsoid(shifted, _scale(radii, scale), tilt=side * a.kidney_tilt)


def _render_abdomen_ct(a: AbdomenCtAnatomy, grid: Grid, rng: Rng) -> np.ndarray:
    cv = _ct_canvas(grid, a.center)
    image = np.full(grid.shape, -1000.0, np.float32)
    paint(image, cv.ellipsoid((0, 0, 0), (*a.body, INF)), a.fat_hu)
    paint(image, cv.ellipsoid((0, 0, 0), (a.body[0] - a.fat, a.body[1] - a.fat, INF)), 50.0)  # muscle wall
    cavity = _abdomen_cavity(cv, a)
    paint(image, cavity, -90.0)  # mesenteric fat
    _draw_ribs(image, cv, a.inner, a.rib_phase, cv.above(2, 20.0))
    bowel_texture = smooth_noise(rng, grid, 5.0)
    content = 15.0 - 965.0 * np.clip((bowel_texture - 1.1) / 0.25, 0.0, 1.0)  # fluid with gas pockets
    paint(content, np.clip(1.0 - np.abs(bowel_texture - 0.1) / 0.12, 0.0, 1.0), 45.0)  # walls between loops
    bowel = cv.ellipsoid((0.0, -0.15 * a.inner[1], 0.0), (0.8 * a.inner[0], 0.75 * a.inner[1], INF))
    paint(image, bowel * cavity * (1 - cv.above(2, 60.0)), content)
    stomach_center, stomach_radii = a.stomach
    paint(image, cv.ellipsoid(stomach_center, _shrink(stomach_radii, -4.0)), 45.0)
    stomach = cv.ellipsoid(stomach_center, stomach_radii)
    paint(image, stomach, 15.0)
    anterior = 1 - cv.above(1, stomach_center[1] - 0.3 * stomach_radii[1])
    paint(image, stomach * anterior, -950.0)  # gas floats to the anterior wall of a supine patient
    paint(image, cv.ellipsoid(*a.liver) * cavity, a.liver_hu)
    paint(image, cv.ellipsoid(*a.spleen) * cavity, a.liver_hu + 8.0)
    for side in (-1, 1):
        paint(image, _kidney(cv, a, side), 170.0)  # cortex
        paint(image, _kidney(cv, a, side, 0.65, 4.0), 115.0)  # medulla
        paint(image, _kidney(cv, a, side, 0.35, 10.0), -60.0)  # sinus fat
        paint(image, cv.ellipsoid((side * 32.0, a.spine_y - 5, -130.0), (17.0, 16.0, 120.0)), 50.0)  # psoas
    paint(image, cv.ellipsoid((11.0, a.spine_y - 27, 0.0), (11.0, 11.0, INF)), 160.0)  # aorta
    paint(image, cv.ellipsoid((-22.0, a.spine_y - 24, 0.0), (14.0, 10.0, INF)), 130.0)  # IVC
    _draw_spine(image, cv, a.spine_y, 17.0, a.disc_phase)
    return image


def _liver_depth(a: AbdomenCtAnatomy, axis: int) -> tuple[float, float]:
    (_, _, z), (_, _, rz) = a.liver
    return z - 0.55 * rz, min(z + 0.55 * rz, 115.0)


def _place_liver_lesion(a: AbdomenCtAnatomy, slab: Slab, rng: Rng) -> dict:
    count = 1 + int(rng.uniform() < 0.3) + int(rng.uniform() < 0.1)
    lesions = []
    for _ in range(count):
        radius = rng.uniform(7.0, 18.0)
        lesions.append(
            {
                "center": inside_point(rng, *a.liver, slab, 0.6),
                "radii": slab.radii((radius,) * 3),
                "lobes": random_lobes(rng, order=3.0, roughness=0.08),
                "hu": a.liver_hu - rng.uniform(45.0, 75.0),
            }
        )
    return {"lesions": lesions}


def _draw_liver_lesion(image: np.ndarray, grid: Grid, a: AbdomenCtAnatomy, s: dict) -> None:
    cv = _ct_canvas(grid, a.center)
    liver = cv.ellipsoid(*a.liver) * _abdomen_cavity(cv, a)
    for lesion in s["lesions"]:
        paint(image, cv.ellipsoid(lesion["center"], lesion["radii"], lobes=lesion["lobes"]) * liver, lesion["hu"])


def _kidney_depth(a: AbdomenCtAnatomy, axis: int) -> tuple[float, float]:
    low = min(center[2] - 0.45 * radii[2] for center, radii in a.kidneys)
    high = max(center[2] + 0.45 * radii[2] for center, radii in a.kidneys)
    return low, high


def _place_kidney_cyst(a: AbdomenCtAnatomy, slab: Slab, rng: Rng) -> dict:
    side = int(rng.choice([-1, 1]))
    center, radii = a.kidneys[0 if side < 0 else 1]
    if abs(slab.center - center[2]) > 0.8 * radii[2]:  # the slab misses this kidney: use the other one
        side = -side
        center, radii = a.kidneys[0 if side < 0 else 1]
    radius = rng.uniform(10.0, 20.0)
    # at the renal margin (exophytic cysts are the common, visible kind); lateral or posterior
    angle = math.atan2(rng.uniform(-0.6, 1.0), side * 1.0)
    return {
        "center": section_point(center, radii, slab, angle, rng.uniform(0.6, 0.9)),
        "radii": slab.radii((radius,) * 3),
        "hu": rng.uniform(0.0, 12.0),
    }


def _draw_kidney_cyst(image: np.ndarray, grid: Grid, a: AbdomenCtAnatomy, s: dict) -> None:
    paint(image, _ct_canvas(grid, a.center).ellipsoid(s["center"], s["radii"]), s["hu"])


# --------------------------------------------------------------------------- knee MRI


@dataclass(frozen=True, eq=False)
class KneeAnatomy:
    """Sagittal knee, y anterior (-) to posterior (+), z up; joint line at z = 0."""

    shift: tuple[float, float]  # (y, z)
    leg_y: float
    leg_half: float
    femur_y: float
    shaft_half: float
    condyle: tuple[float, float]  # centre (y, z)
    condyle_radii: tuple[float, float]
    gap: float
    tibia_y: float
    plateau_half: float
    patella: tuple[float, float]
    patella_radii: tuple[float, float]
    patella_tilt: float
    meniscus_height: float
    posterior_horn: float  # length of the posterior horn (mm)
    anterior_horn: float
    fat: float
    marrow: float
    muscle: float
    cartilage: float
    fluid: float


def _sample_knee(rng: Rng) -> KneeAnatomy:
    femur_y = rng.uniform(0, 8)
    condyle_radii = (rng.uniform(27, 33), rng.uniform(23, 28))
    gap = rng.uniform(3.5, 5.5)
    condyle = (femur_y + rng.uniform(4, 10), gap / 2 + condyle_radii[1])
    return KneeAnatomy(
        shift=(rng.normal(0, 5), rng.normal(0, 6)),
        leg_y=femur_y + rng.uniform(0, 8),
        leg_half=rng.uniform(55, 65),
        femur_y=femur_y,
        shaft_half=rng.uniform(13, 16),
        condyle=condyle,
        condyle_radii=condyle_radii,
        gap=gap,
        tibia_y=condyle[0] - rng.uniform(0, 4),
        plateau_half=rng.uniform(33, 39),
        patella=(condyle[0] - condyle_radii[0] - rng.uniform(7, 11), condyle[1] + rng.uniform(0, 15)),
        patella_radii=(rng.uniform(8, 10), rng.uniform(17, 22)),
        patella_tilt=rng.uniform(0.1, 0.3),
        meniscus_height=rng.uniform(6.0, 8.0),
        posterior_horn=rng.uniform(13, 17),
        anterior_horn=rng.uniform(8, 11),
        fat=rng.uniform(0.05, 0.1),
        marrow=rng.uniform(0.1, 0.18),
        muscle=rng.uniform(0.22, 0.3),
        cartilage=rng.uniform(0.42, 0.55),
        fluid=rng.uniform(0.85, 0.98),
    )


def _knee_canvas(grid: Grid, a: KneeAnatomy) -> Canvas:
    return Canvas(grid, (0.0, a.shift[0], a.shift[1]))


def _femur(cv: Canvas, a: KneeAnatomy, inset: float = 0.0) -> np.ndarray:
    shaft = cv.band(1, a.femur_y, a.shaft_half - inset) * cv.above(2, a.condyle[1])
    condyle = cv.ellipsoid((0.0, *a.condyle), (INF, *_shrink(a.condyle_radii, inset)))
    return np.maximum(shaft, condyle)


def _tibia(cv: Canvas, a: KneeAnatomy, inset: float = 0.0, top_offset: float = 0.0) -> np.ndarray:
    top = -a.gap / 2 + top_offset
    head = cv.ellipsoid((0.0, a.tibia_y, top - 28.0), (INF, a.plateau_half - inset, 28.0 - inset), power=4.0)
    shaft = cv.band(1, a.tibia_y, 15.0 - inset) * (1 - cv.above(2, top - 40.0))
    return np.maximum(head, shaft)


def _femur_with_cartilage(cv: Canvas, a: KneeAnatomy) -> np.ndarray:
    return cv.ellipsoid((0.0, *a.condyle), (INF, *_shrink(a.condyle_radii, -2.5)))


def _meniscus(cv: Canvas, a: KneeAnatomy, posterior: bool) -> np.ndarray:
    """A wedge: base at the joint periphery, tapering to a free edge towards the centre."""
    length = a.posterior_horn if posterior else a.anterior_horn
    periphery = a.tibia_y + a.plateau_half - 1 if posterior else a.tibia_y - a.plateau_half + 1
    inward = (periphery - cv.p[1]) if posterior else (cv.p[1] - periphery)
    half_height = a.meniscus_height / 2 * (1 - inward / length)
    return cv.soft(np.minimum(half_height - np.abs(cv.p[2]), inward))


def _render_knee(a: KneeAnatomy, grid: Grid, rng: Rng) -> np.ndarray:
    cv = _knee_canvas(grid, a)
    image = np.zeros(grid.shape, np.float32)
    paint(image, cv.ellipsoid((0.0, a.leg_y, 0.0), (INF, a.leg_half, 400.0), power=4.0), a.fat)
    posterior_muscles = cv.ellipsoid((0.0, a.leg_y + 0.5 * a.leg_half, 0.0), (INF, 0.45 * a.leg_half, 300.0), power=4.0)
    paint(image, posterior_muscles, a.muscle)
    popliteal_fat = cv.ellipsoid((0.0, a.condyle[0] + a.condyle_radii[0] + 14, 5.0), (INF, 14.0, 40.0))
    paint(image, popliteal_fat, a.fat)
    paint(image, cv.ellipsoid((0.0, a.femur_y - a.shaft_half - 16, 120.0), (INF, 16.0, 90.0)), a.muscle)  # quadriceps
    paint(image, cv.ellipsoid((0.0, *a.condyle), (INF, *_shrink(a.condyle_radii, -2.5))), a.cartilage)
    paint(image, _tibia(cv, a, top_offset=2.5), a.cartilage)
    marrow = a.marrow * (1.0 + 0.15 * smooth_noise(rng, grid, 1.5))  # trabecular texture
    for bone in (_femur, _tibia):
        paint(image, bone(cv, a), 0.04)  # cortex
        paint(image, bone(cv, a, 2.5), marrow)
    patella = (0.0, *a.patella)
    patella_radii = (INF, *a.patella_radii)
    tilt = {"tilt": a.patella_tilt, "tilt_axes": (1, 2)}
    cartilage_center = (0.0, a.patella[0] + 1.5, a.patella[1])  # on the articular (posterior) surface
    paint(image, cv.ellipsoid(cartilage_center, _shrink(patella_radii, -3.0), **tilt), a.cartilage)
    paint(image, cv.ellipsoid(patella, patella_radii, **tilt), 0.04)
    paint(image, cv.ellipsoid(patella, _shrink(patella_radii, 2.0), **tilt), marrow)
    bottom = (a.patella[0] + 3.0, a.patella[1] - a.patella_radii[1] + 2.0)
    tubercle = (a.tibia_y - a.plateau_half + 6.0, -a.gap / 2 - 38.0)
    paint(image, cv.segment(bottom, tubercle, 2.5, (1, 2)), 0.05)  # patellar tendon
    top = (a.patella[0] - 1.0, a.patella[1] + a.patella_radii[1] - 2.0)
    paint(image, cv.segment(top, (a.femur_y - a.shaft_half - 12.0, a.patella[1] + 80.0), 3.0, (1, 2)), 0.06)
    for posterior in (False, True):
        paint(image, _meniscus(cv, a, posterior) * (1 - _femur_with_cartilage(cv, a)), 0.05)
    recess_y = a.femur_y - a.shaft_half - 2.0
    recess = cv.segment((recess_y, a.condyle[1] + 10), (recess_y, a.condyle[1] + 45), 0.8, (1, 2))
    paint(image, recess * (1 - _femur(cv, a)), a.fluid, 0.5)  # a trace of normal joint fluid
    return image


def _place_effusion_knee(a: KneeAnatomy, slab: None, rng: Rng) -> dict:
    return {
        "center": (0.0, a.femur_y - a.shaft_half - rng.uniform(5, 9), a.condyle[1] + rng.uniform(25, 45)),
        "radii": (INF, rng.uniform(5, 10), rng.uniform(18, 32)),
        "posterior": rng.uniform() < 0.5,
    }


def _draw_effusion_knee(image: np.ndarray, grid: Grid, a: KneeAnatomy, s: dict) -> None:
    cv = _knee_canvas(grid, a)
    fluid = cv.ellipsoid(s["center"], s["radii"])
    if s["posterior"]:
        behind_condyle = (0.0, a.condyle[0] + a.condyle_radii[0] + 4, a.condyle[1])
        fluid = np.maximum(fluid, cv.ellipsoid(behind_condyle, (INF, 4.0, 10.0)))
    paint(image, fluid * (1 - _femur(cv, a)), a.fluid)


def _place_meniscal_tear(a: KneeAnatomy, slab: None, rng: Rng) -> dict:
    periphery = a.tibia_y + a.plateau_half - 1
    length = a.posterior_horn
    # an oblique tear from inside the horn down to its tibial surface, where it shows best
    start = (periphery - length * rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.3) * a.meniscus_height)
    end = (periphery - length * rng.uniform(0.45, 0.65), -a.meniscus_height / 2 - 1.0)
    return {"start": start, "end": end, "level": rng.uniform(0.7, 0.85)}


def _draw_meniscal_tear(image: np.ndarray, grid: Grid, a: KneeAnatomy, s: dict) -> None:
    cv = _knee_canvas(grid, a)
    visible = _meniscus(cv, a, posterior=True) * (1 - _femur_with_cartilage(cv, a))
    paint(image, cv.segment(s["start"], s["end"], 1.0, (1, 2)) * visible, s["level"])


# --------------------------------------------------------------------------- registry


SCENES: dict[str, Scene] = {
    scene.key: scene
    for scene in (
        Scene(
            key="brain_mri",
            region="Brain",
            modality="MRI",
            sample=_sample_brain,
            render=_render_brain,
            finish=_finish_mr,
            findings=(
                Finding("Glioma", 0.26, _place_glioma, _draw_glioma, _glioma_depth),
                Finding("Meningioma", 0.26, _place_meningioma, _draw_meningioma, _meningioma_depth),
                Finding("Pituitary Tumor", 0.20, _place_pituitary, _draw_pituitary, _pituitary_depth),
            ),
            normal_weight=0.28,
            signal="mr",
            fov_mm=220.0,
            coverage_mm=160.0,
            planes_3d=("axial", "sagittal"),
            slice_range=_brain_slice_range,
        ),
        Scene(
            key="chest_xray",
            region="Chest",
            modality="X-ray",
            sample=_sample_chest_xray,
            render=_render_chest_xray,
            finish=_finish_xray,
            findings=(
                Finding("Atelectasis", 0.12, _place_atelectasis, _draw_atelectasis, adjust=_adjust_atelectasis),
                Finding("Cardiomegaly", 0.12, _place_nothing, _draw_nothing, adjust=_adjust_cardiomegaly),
                Finding("Consolidation", 0.12, _place_consolidation, _draw_consolidation),
                Finding("Edema", 0.12, _place_edema, _draw_edema),
                Finding("Pleural Effusion", 0.12, _place_effusion, _draw_effusion),
                Finding("Pneumothorax", 0.025, _place_pneumothorax, _draw_pneumothorax),
                Finding("Nodule", 0.025, _place_xray_nodule, _draw_xray_nodule),
            ),
            normal_weight=0.22,
            combos=(
                (("Cardiomegaly", "Edema"), 0.04),
                (("Edema", "Pleural Effusion"), 0.04),
                (("Cardiomegaly", "Pleural Effusion"), 0.02),
                (("Atelectasis", "Pleural Effusion"), 0.02),
            ),
            signal="xray",
            fov_mm=400.0,
            plane_2d="coronal",
        ),
        Scene(
            key="chest_ct",
            region="Chest",
            modality="CT",
            sample=_sample_chest_ct,
            render=_render_chest_ct,
            finish=_finish_ct,
            findings=(
                Finding("COVID-19", 0.28, _place_covid, _draw_covid, _lung_depth),
                Finding("Community-Acquired Pneumonia", 0.24, _place_pneumonia, _draw_pneumonia, _lung_depth),
                Finding("Nodule", 0.14, _place_ct_nodule, _draw_ct_nodule, _lung_depth),
            ),
            normal_weight=0.34,
            signal="ct",
            fov_mm=380.0,
            coverage_mm=256.0,
            planes_3d=("axial",),
            slice_range=lambda a, axis: (a.domes[0] + 10.0, a.apex - 20.0),
            window=(-600.0, 1500.0),  # lung window
        ),
        Scene(
            key="abdomen_ct",
            region="Abdomen",
            modality="CT",
            sample=_sample_abdomen_ct,
            render=_render_abdomen_ct,
            finish=_finish_ct,
            findings=(
                Finding("Liver Lesion", 0.35, _place_liver_lesion, _draw_liver_lesion, _liver_depth),
                Finding("Kidney Cyst", 0.10, _place_kidney_cyst, _draw_kidney_cyst, _kidney_depth),
            ),
            normal_weight=0.55,
            signal="ct",
            fov_mm=380.0,
            coverage_mm=256.0,
            planes_3d=("axial",),
            slice_range=lambda a, axis: (-60.0, 80.0),
            window=(50.0, 400.0),  # soft-tissue window
        ),
        Scene(
            key="knee_mri",
            region="Knee",
            modality="MRI",
            sample=_sample_knee,
            render=_render_knee,
            finish=_finish_mr,
            findings=(
                Finding("Joint Effusion", 0.35, _place_effusion_knee, _draw_effusion_knee),
                Finding("Meniscal Tear", 0.10, _place_meniscal_tear, _draw_meniscal_tear),
            ),
            normal_weight=0.55,
            signal="mr",
            fov_mm=160.0,
            plane_2d="sagittal",
        ),
    )
}


# =========================================================================== rendering one study


@dataclass(frozen=True)
class RenderSettings:
    seed: int
    image_size: int
    volume_shape: tuple[int, int, int]
    lesion_slices: tuple[int, int]


@dataclass
class Rendered:
    """One synthesized study: float32 pixels in physical units (HU for CT, MR signal,
    X-ray brightness in [0, 1]), shaped (S, H, W) (S = 1 for 2D), with its geometry."""

    pixels: np.ndarray
    grid: Grid
    finding_slices: tuple[int, ...]  # volume slices the findings were drawn into (3D)

    @property
    def image(self) -> np.ndarray:
        return self.pixels[0]


def volume_grid(scene: Scene, shape: Sequence[int], plane: Plane, depth: float = 0.0) -> Grid:
    """A volume through the scene's field of view; slices are always the thickest axis."""
    rows, columns = scene.fov_mm / shape[1], scene.fov_mm / shape[2]
    thickness = max(scene.coverage_mm / shape[0], 1.25 * max(rows, columns))
    return Grid.build(plane, shape, (thickness, rows, columns), depth)


def image_grid(scene: Scene, size: int, depth: float = 0.0, plane: Plane | None = None) -> Grid:
    """One 2D slice; ``depth`` is the slice's patient coordinate along its normal axis."""
    plane = plane or scene.plane_2d
    step = scene.fov_mm / size
    normal = _plane_directions(plane)[0]
    sign = float(normal[int(np.argmax(np.abs(normal)))])  # Grid offsets run along the (signed) normal
    return Grid.build(plane, (1, size, size), (5.0, step, step), depth * sign)


def _pick_slab(
    finding: Finding, anatomy: Any, grid: Grid, rng: Rng, lesion_slices: tuple[int, int]
) -> tuple[int, int, Slab]:
    """Choose ``n`` contiguous slices at a random depth the finding allows."""
    positions = grid.slice_positions
    n = min(int(rng.integers(lesion_slices[0], lesion_slices[1] + 1)), len(positions))
    low, high = finding.depth(anatomy, grid.slice_axis)
    target = rng.uniform(min(low, high), max(low, high))
    nearest = int(np.argmin(np.abs(positions - target)))
    start = int(np.clip(nearest - (n - 1) // 2 - int(n % 2 == 0 and rng.uniform() < 0.5), 0, len(positions) - n))
    center = float(positions[start : start + n].mean())
    half = (n / 2 + 0.4) * grid.spacing[0]  # every slice of the slab cuts the finding
    return start, start + n, Slab(grid.slice_axis, center, half)


def synthesize(
    scene_key: str,
    conditions: Sequence[str],
    *,
    kind: Literal["2d", "3d"],
    rng: Rng,
    settings: RenderSettings,
    plane: Plane = "axial",
) -> Rendered:
    """Draw one study of a scene with the given conditions (none: normal).

    The generator is split into anatomy, finding and noise streams, so the same
    generator state with and without a finding gives the same anatomy and noise.
    """
    scene = SCENES[scene_key]
    anatomy_rng, finding_rng, noise_rng = rng.spawn(3)
    anatomy = scene.sample(anatomy_rng)
    findings = [scene.finding(name) for name in conditions]
    for finding in findings:
        if finding.adjust is not None:
            anatomy = finding.adjust(anatomy, finding_rng)

    if kind == "3d":
        if plane not in scene.planes_3d:
            raise ValueError(f"{scene.region} {scene.modality} volumes are not drawn in the {plane} plane")
        grid = volume_grid(scene, settings.volume_shape, plane)
        slabs = [_pick_slab(f, anatomy, grid, finding_rng, settings.lesion_slices) for f in findings]
    elif scene.slice_range is None:  # projection or fixed-plane 2D scene: findings need no depth
        grid = image_grid(scene, settings.image_size)
        slabs = [(0, 1, None) for _ in findings]
    else:  # a slice through the first finding (or anywhere in range for a normal study)
        # Sectional scenes are cut in any plane their volumes have (brain: axial or sagittal),
        # so the 2D encoder has seen every plane the adapter will get slices of.
        plane_2d = plane if plane in scene.planes_3d else scene.plane_2d
        axis = image_grid(scene, 1, 0.0, plane_2d).slice_axis
        low, high = findings[0].depth(anatomy, axis) if findings else scene.slice_range(anatomy, axis)
        depth = finding_rng.uniform(min(low, high), max(low, high))
        grid = image_grid(scene, settings.image_size, depth, plane_2d)
        slabs = [(0, 1, Slab(axis, depth)) for _ in findings]

    image = scene.render(anatomy, grid, anatomy_rng)
    touched: set[int] = set()
    for finding, (start, stop, slab) in zip(findings, slabs):
        spec = finding.place(anatomy, slab, finding_rng)
        finding.draw(image[start:stop], grid.slices(start, stop), anatomy, spec)
        touched.update(range(start, stop))
    pixels = scene.finish(image, grid, noise_rng).astype(np.float32)
    return Rendered(pixels, grid, tuple(sorted(touched)) if kind == "3d" else ())


# =========================================================================== file writers


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


def run_job(settings: RenderSettings, job: Job) -> tuple[str, tuple[int, ...]]:
    """Draw one study with its own generator and write it; returns its path and, for a volume,
    the slices (in stored order) its findings were drawn into."""
    rng = np.random.default_rng([settings.seed, job.stream, job.index])
    rendered = synthesize(job.scene, job.conditions, kind=job.kind, rng=rng, settings=settings, plane=job.plane)
    _WRITERS[job.output](job, SCENES[job.scene], rendered)
    return job.path, rendered.finding_slices


# =========================================================================== plans


def _quota(weights: Mapping[Any, float], n: int, rng: Rng) -> list[Any]:
    """Exactly ``n`` keys in proportion to ``weights`` (largest remainder), shuffled."""
    keys = list(weights)
    share = np.array([weights[k] for k in keys], dtype=float)
    exact = share / share.sum() * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - int(counts.sum())]:
        counts[i] += 1
    ordered = [key for key, count in zip(keys, counts) for _ in range(count)]
    return [ordered[i] for i in rng.permutation(n)]


def _fake_phi(patient_id: str, number: int, study: int) -> tuple[tuple[str, str], ...]:
    """Plausible but fake identifying values, so curation's PHI removal has something to remove."""
    return (
        ("PatientName", f"PHANTOM^{patient_id.replace('-', '')}"),
        ("PatientID", patient_id),
        ("PatientBirthDate", f"{1935 + number % 60:04d}{1 + number % 12:02d}{1 + number % 28:02d}"),
        ("PatientSex", "FM"[number % 2]),
        ("AccessionNumber", f"ACC{number:06d}{study:02d}"),
        ("InstitutionName", "Phantom General Hospital"),
        ("ReferringPhysicianName", "DOE^JANE"),
        ("StudyDate", f"2024{1 + (number + study) % 12:02d}{1 + (number * 7 + study) % 28:02d}"),
        ("PatientAddress", f"{1 + number % 200} Phantom Street, Imaging City"),
        ("OtherPatientIDs", f"MRN{number:08d}"),
    )


@dataclass
class TrainRow:
    path: str
    patient_id: str
    region: str
    modality: str
    findings: str


def _train_items(
    n: int, mix: Mapping[str, float], kind: str, ipp: int, first_patient: int, rng: Rng
) -> list[tuple[int, str, tuple[str, ...]]]:
    """(patient number, scene, conditions) per item: one scene per patient, conditions by quota per scene."""
    n_patients = math.ceil(n / ipp)
    scenes = _quota(mix, n_patients, rng)
    owners = [(first_patient + p, scenes[p]) for p in range(n_patients) for _ in range(ipp)][:n]
    labels: dict[str, list[tuple[str, ...]]] = {}
    for key in mix:
        count = sum(1 for _, scene in owners if scene == key)
        labels[key] = _quota(SCENES[key].label_weights(kind), count, rng)
    return [(patient, scene, labels[scene].pop()) for patient, scene in owners]


def plan_training(params: Params, out_dir: Path) -> tuple[list[Job], list[TrainRow]]:
    """Jobs and index rows of the training collection (``train/``)."""
    ph = params.phantoms
    rng = np.random.default_rng([ph.seed, STREAM_PLAN])
    train = out_dir / "train"
    jobs: list[Job] = []
    rows: list[TrainRow] = []
    items_2d = _train_items(ph.train_2d, TRAIN_2D_MIX, "2d", ph.images_per_patient, 0, rng)
    first_3d = math.ceil(ph.train_2d / ph.images_per_patient)
    items_3d = _train_items(ph.train_3d, TRAIN_3D_MIX, "3d", ph.images_per_patient, first_3d, rng)
    for kind, stream, items in (("2d", STREAM_TRAIN_2D, items_2d), ("3d", STREAM_TRAIN_3D, items_3d)):
        n_dicom = round(ph.dicom_fraction * len(items))
        dicom = set(rng.permutation(len(items))[:n_dicom].tolist())
        for index, (patient_number, scene_key, conditions) in enumerate(items):
            scene = SCENES[scene_key]
            patient_id = f"PH-T-{patient_number:06d}"
            item_id = f"{'img' if kind == '2d' else 'vol'}-{index:06d}"
            plane: Plane = scene.plane_2d if kind == "2d" else "axial"
            if "sagittal" in scene.planes_3d and rng.uniform() < SAGITTAL_BRAIN_FRACTION:
                plane = "sagittal"  # 2D brain slices too: the 2D encoder must know sagittal slices
            monochrome1 = scene.signal == "xray" and rng.uniform() < MONOCHROME1_FRACTION
            if index in dicom:
                folder = f"dicom/{patient_id}"
                if kind == "2d":
                    output, rel = "dicom_image", f"{folder}/{item_id}.dcm"
                elif scene.signal == "ct":
                    output, rel = "dicom_series", f"{folder}/{item_id}"
                else:
                    output, rel = "dicom_multiframe", f"{folder}/{item_id}_mf.dcm"
            else:
                output, rel = ("png", f"png/{item_id}.png") if kind == "2d" else ("nifti", f"nifti/{item_id}.nii.gz")
            jobs.append(
                Job(
                    stream=stream,
                    index=index,
                    scene=scene_key,
                    conditions=conditions,
                    kind=kind,  # type: ignore[arg-type]
                    output=output,  # type: ignore[arg-type]
                    path=str(train / rel),
                    plane=plane,
                    patient=_fake_phi(patient_id, patient_number, index) if output.startswith("dicom") else (),
                    uid_seed=f"radclip-phantom:{ph.seed}:{stream}:{index}",
                    monochrome1=monochrome1 and output == "dicom_image",
                )
            )
            rows.append(
                TrainRow(
                    path=rel,
                    patient_id="" if output.startswith("dicom") else patient_id,  # DICOM: from the PatientID tag
                    region=scene.region,
                    modality=scene.modality,
                    findings="|".join(conditions),
                )
            )
    return jobs, rows


CHEXPERT_OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)  # fmt: skip
CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS)
CHEXPERT_5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
CHEXPERT_FIRST_PATIENT = 64541  # the real validation set's first patient folder
BRAIN_4 = {  # class folder -> (condition, file name prefix)
    "glioma": ("Glioma", "gl"),
    "meningioma": ("Meningioma", "me"),
    "notumor": (None, "no"),
    "pituitary": ("Pituitary Tumor", "pi"),
}
IXI_SITES = ("Guys", "HH", "IOP")
COVID_CLASSES = {
    "COVID-19": ("COVID-19 Cases", "P", ("COVID-19",)),
    "CAP": ("CAP Cases", "cap", ("Community-Acquired Pneumonia",)),
    "Normal": ("Normal Cases", "normal", ()),
}


@dataclass
class SuitePlan:
    name: str
    jobs: list[Job]
    tables: dict[str, tuple[Sequence[str], list[list[Any]]]]  # relative path -> (header, rows)
    counts: dict[str, int]
    folders: tuple[str, ...] = ()  # created even when empty, so a zero-size suite still scans


def _shuffled_classes(classes: Sequence[Any], per_class: int, rng: Rng) -> list[Any]:
    """Each class ``per_class`` times, in random order (so ids and file order say nothing)."""
    ordered = [c for c in classes for _ in range(per_class)]
    return [ordered[i] for i in rng.permutation(len(ordered))]


def _chexpert_row(rel_path: str, positive: str, rng: Rng) -> list[Any]:
    """One valid.csv row: the positive, 0.0/blank for the other four, and the other
    observations as a radiologist's labeller would leave them (some uncertain)."""
    values: dict[str, str] = {name: "" for name in CHEXPERT_OBSERVATIONS}
    values["No Finding"] = "" if rng.uniform() < 0.5 else "0.0"
    for name in CHEXPERT_5:
        values[name] = "1.0" if name == positive else ("0.0" if rng.uniform() < 0.5 else "")
    if positive in ("Atelectasis", "Consolidation", "Edema"):
        values["Lung Opacity"] = "1.0" if rng.uniform() < 0.7 else "-1.0"
    if positive == "Consolidation" and rng.uniform() < 0.4:
        values["Pneumonia"] = "-1.0"
    if positive == "Cardiomegaly":
        values["Enlarged Cardiomediastinum"] = "1.0" if rng.uniform() < 0.5 else "-1.0"
    elif rng.uniform() < 0.15:
        values["Enlarged Cardiomediastinum"] = "-1.0"
    if rng.uniform() < 0.1:
        values["Pleural Other"] = "0.0"
    sex = "Male" if rng.uniform() < 0.5 else "Female"
    view = "AP" if rng.uniform() < 0.6 else "PA"
    return [rel_path, sex, int(rng.integers(18, 91)), "Frontal", view, *(values[n] for n in CHEXPERT_OBSERVATIONS)]


def _plan_chest_xray_5class(params: Params, root: Path, rng: Rng) -> SuitePlan:
    per_class = params.phantoms.suites.chest_xray_5class
    jobs, rows = [], []
    for index, condition in enumerate(_shuffled_classes(CHEXPERT_5, per_class, rng)):
        rel = f"CheXpert-v1.0-small/valid/patient{CHEXPERT_FIRST_PATIENT + index}/study1/view1_frontal.jpg"
        path = str(root / rel)
        jobs.append(Job(STREAM_CHEST_XRAY_5CLASS, index, "chest_xray", (condition,), "2d", "jpeg", path, "coronal"))
        rows.append(_chexpert_row(rel, condition, rng))
    table = {"CheXpert-v1.0-small/valid.csv": (CHEXPERT_COLUMNS, rows)}
    counts = {c: per_class for c in CHEXPERT_5}
    return SuitePlan("chest_xray_5class", jobs, table, counts, ("CheXpert-v1.0-small/valid",))


def _plan_brain_mri_4class(params: Params, root: Path, rng: Rng) -> SuitePlan:
    per_class = params.phantoms.suites.brain_mri_4class
    jobs, numbers = [], Counter()
    for index, folder in enumerate(_shuffled_classes(list(BRAIN_4), per_class, rng)):
        condition, short = BRAIN_4[folder]
        numbers[folder] += 1
        path = root / "Testing" / folder / f"Te-{short}_{numbers[folder]:04d}.jpg"
        conditions = (condition,) if condition else ()
        jobs.append(Job(STREAM_BRAIN_MRI_4CLASS, index, "brain_mri", conditions, "2d", "jpeg", str(path)))
    folders = tuple(f"Testing/{folder}" for folder in BRAIN_4)
    return SuitePlan("brain_mri_4class", jobs, {}, {folder: per_class for folder in BRAIN_4}, folders)


def _plan_brain_mri_3d_2class(params: Params, root: Path, rng: Rng) -> SuitePlan:
    per_class = params.phantoms.suites.brain_mri_3d_2class
    jobs, rows = [], []
    for index, finding in enumerate(_shuffled_classes((0, 1), per_class, rng)):
        ixi_id = index + 2  # IXI ids start at 002
        site, number = IXI_SITES[int(rng.integers(len(IXI_SITES)))], int(rng.integers(0, 10000))
        name = f"IXI{ixi_id:03d}-{site}-{number:04d}-T1.nii.gz"
        plane: Plane = "sagittal" if rng.uniform() < SAGITTAL_BRAIN_FRACTION else "axial"
        conditions = ("Glioma",) if finding else ()
        path = str(root / "IXI-T1" / name)
        jobs.append(Job(STREAM_BRAIN_MRI_3D_2CLASS, index, "brain_mri", conditions, "3d", "nifti", path, plane))
        height = round(float(rng.normal(170, 9)), 1)
        weight, age = round(float(rng.normal(72, 12)), 1), round(float(rng.uniform(20, 86)), 2)
        rows.append([ixi_id, int(rng.integers(1, 3)), height, weight, age, finding])
    table = {"IXI.csv": (("IXI_ID", "SEX_ID", "HEIGHT", "WEIGHT", "AGE", "FINDING"), rows)}
    return SuitePlan("brain_mri_3d_2class", jobs, table, {"0": per_class, "1": per_class}, ("IXI-T1",))


def _plan_chest_ct_3d_3class(params: Params, root: Path, rng: Rng) -> SuitePlan:
    ph, per_class = params.phantoms, params.phantoms.suites.chest_ct_3d_3class
    jobs, rows, numbers = [], [], Counter()
    for index, diagnosis in enumerate(_shuffled_classes(list(COVID_CLASSES), per_class, rng)):
        class_folder, prefix, conditions = COVID_CLASSES[diagnosis]
        numbers[diagnosis] += 1
        folder = f"{prefix}{numbers[diagnosis]:03d}"
        patient_id = f"PH-E-CT-{index + 1:04d}"
        jobs.append(
            Job(
                STREAM_CHEST_CT_3D_3CLASS, index, "chest_ct", conditions, "3d", "dicom_series",
                str(root / class_folder / folder), "axial",
                patient=_fake_phi(patient_id, 500000 + index, 0),
                uid_seed=f"radclip-phantom:{ph.seed}:{STREAM_CHEST_CT_3D_3CLASS}:{index}",
            )
        )  # fmt: skip
        rows.append([folder, patient_id, diagnosis, "MF"[int(rng.integers(2))], int(rng.integers(20, 90))])
    table = {"Index.csv": (("Folder/ID", "Patient ID", "Diagnosis", "Gender", "Age"), rows)}
    folders = tuple(class_folder for class_folder, _, _ in COVID_CLASSES.values())
    return SuitePlan("chest_ct_3d_3class", jobs, table, {c: per_class for c in COVID_CLASSES}, folders)


def plan_suites(params: Params, out_dir: Path) -> list[SuitePlan]:
    """The four held-out evaluation suites, each in its public dataset's layout."""
    seed = params.phantoms.seed
    planners = (
        ("chest_xray_5class", _plan_chest_xray_5class),
        ("brain_mri_4class", _plan_brain_mri_4class),
        ("brain_mri_3d_2class", _plan_brain_mri_3d_2class),
        ("chest_ct_3d_3class", _plan_chest_ct_3d_3class),
    )
    return [
        planner(params, out_dir / "eval" / name, np.random.default_rng([seed, STREAM_SUITE_PLAN, number]))
        for number, (name, planner) in enumerate(planners)
    ]


# =========================================================================== generate


def _reset_dir(out_dir: Path) -> None:
    """Empty ``out_dir`` for a clean rerun, refusing folders that are plainly not ours."""
    out_dir = out_dir.resolve()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise NotADirectoryError(f"{out_dir}: phantoms output must be a folder")
        ours_to_empty = not (
            (out_dir / ".git").exists()
            or (out_dir / "params.yaml").exists()
            or out_dir == Path.home()
            or Path.cwd().resolve().is_relative_to(out_dir)  # a typo must not delete the working tree
        )
        if not ours_to_empty:
            raise ValueError(f"{out_dir}: refusing to empty what looks like a project, home or working folder")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)


def _write_table(path: Path, header: Sequence[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _run_all(jobs: list[Job], settings: RenderSettings, workers: int) -> dict[str, tuple[int, ...]]:
    """Run every job; returns the finding slices of each volume by path."""
    run = partial(run_job, settings)
    if workers <= 1 or len(jobs) < 2:
        return dict(run(job) for job in jobs)
    # Heavy jobs (volumes) first so the pool does not end on one long straggler.
    ordered = sorted(jobs, key=lambda j: j.kind != "3d")
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(run, ordered, chunksize=max(1, min(16, len(ordered) // (8 * workers)))))


LESION_TRUTH = "lesion_slices.csv"  # under paths.raw: where each evaluation volume's finding was drawn


def _write_lesion_truth(out_dir: Path, suites: list["SuitePlan"], finding_slices: dict[str, tuple[int, ...]]) -> None:
    """Ground truth the real datasets lack: the stored slices of each evaluation volume's finding
    (path relative to its suite, as curation records ``source_path``), for the attention plots."""
    rows = []
    for suite in suites:
        root = out_dir / "eval" / suite.name
        for job in suite.jobs:
            if job.kind == "3d":
                slices = finding_slices[job.path]
                rel = Path(job.path).relative_to(root).as_posix()
                rows.append([suite.name, rel, job.plane, "|".join(map(str, slices))])
    _write_table(out_dir / LESION_TRUTH, ("suite", "path", "plane", "slices"), rows)


def _summary(params: Params, train_rows: list[TrainRow], train_jobs: list[Job], suites: list[SuitePlan]) -> dict:
    by_scene: dict[str, dict[str, int]] = {}
    by_condition: Counter = Counter()
    for row in train_rows:
        label = f"{row.region} {row.modality}"
        counts = by_scene.setdefault(label, {})
        for condition in row.findings.split("|") if row.findings else ["Normal"]:
            counts[condition] = counts.get(condition, 0) + 1
            by_condition[condition] += 1
    outputs = Counter(job.output for job in train_jobs)
    train = {
        "images_2d": sum(1 for j in train_jobs if j.kind == "2d"),
        "volumes_3d": sum(1 for j in train_jobs if j.kind == "3d"),
        "patients": len({r.patient_id or dict(j.patient)["PatientID"] for j, r in zip(train_jobs, train_rows)}),
        "multi_label": sum(1 for r in train_rows if "|" in r.findings),
        "outputs": dict(sorted(outputs.items())),
        "by_scene": {k: dict(sorted(v.items())) for k, v in sorted(by_scene.items())},
        "by_condition": dict(sorted(by_condition.items())),
    }
    suite_counts = {s.name: {"total": len(s.jobs), "per_class": s.counts} for s in suites}
    totals = {"train": len(train_jobs), "eval": sum(len(s.jobs) for s in suites)}
    return {"enabled": True, "seed": params.phantoms.seed, "totals": totals, "train": train, "suites": suite_counts}


README = """\
RadCLIP phantom data (synthetic; written by `radclip phantoms`, radclip/data/phantoms.py)
=====================================================================================
Deterministic synthetic radiology studies in real formats and public dataset layouts.
Seed {seed}; regenerate rather than edit: the whole folder is replaced on every run.

train/                                   training collection (format: csv)
  index.csv                              path,patient_id,region,modality,findings
                                         (path relative to train/; findings joined by "|", empty =
                                         normal; patient_id empty for DICOM rows: read PatientID)
  png/img-NNNNNN.png                     2D images, 8-bit (CT through a window, MR rescaled)
  nifti/vol-NNNNNN.nii.gz                volumes (int16; CT in HU; axial or sagittal affines)
  dicom/<patient>/img-NNNNNN.dcm         2D DICOM (DX, some MONOCHROME1; CT/MR slices)
  dicom/<patient>/vol-NNNNNN/            CT series, one file per slice (names not in slice order)
  dicom/<patient>/vol-NNNNNN_mf.dcm      enhanced multi-frame MR volumes
eval/chest_xray_5class/                  CheXpert layout: CheXpert-v1.0-small/valid.csv + JPEGs
eval/brain_mri_4class/                   Crystal Clean layout: Testing/<class>/Te-xx_NNNN.jpg
eval/brain_mri_3d_2class/                IXI layout: IXI-T1/IXI<id>-<site>-<n>-T1.nii.gz + IXI.csv
                                         (FINDING 0 normal, 1 glioma)
eval/chest_ct_3d_3class/                 COVID-CT-MD layout: <class> Cases/<folder>/ DICOM series
                                         + Index.csv
phantoms.json                            counts per region/modality/condition and per suite

DICOM headers carry fake PHI (names, ids, dates, addresses) on purpose: curation must remove it.
In volumes every finding spans {lesion_min}-{lesion_max} contiguous slices; the rest is anatomy and noise.
"""

DISABLED_README = """\
Phantom data is disabled (phantoms.enabled: false in params): this folder is intentionally empty.
Point data.collections at real datasets instead.
"""


def generate(params: Params, out_dir: Path | None = None) -> dict:
    """Write the phantom collection (training set and evaluation suites) to ``out_dir``.

    ``out_dir`` defaults to ``paths.raw``; it is emptied first, so reruns are
    clean. Returns the summary also written to ``phantoms.json``.
    """
    out_dir = Path(out_dir) if out_dir is not None else params.resolve(params.paths.raw)
    _reset_dir(out_dir)
    ph = params.phantoms
    if not ph.enabled:
        (out_dir / "README.txt").write_text(DISABLED_README)
        return {"enabled": False, "totals": {"train": 0, "eval": 0}}

    settings = RenderSettings(ph.seed, ph.image_size, tuple(ph.volume_shape), tuple(ph.lesion_slices))
    train_jobs, train_rows = plan_training(params, out_dir)
    suites = plan_suites(params, out_dir)
    finding_slices = _run_all(train_jobs + [job for suite in suites for job in suite.jobs], settings, ph.workers)

    header = ("path", "patient_id", "region", "modality", "findings")
    _write_table(out_dir / "train" / "index.csv", header, [[getattr(r, h) for h in header] for r in train_rows])
    for suite in suites:
        for folder in suite.folders:
            (out_dir / "eval" / suite.name / folder).mkdir(parents=True, exist_ok=True)
        for rel, (columns, rows) in suite.tables.items():
            _write_table(out_dir / "eval" / suite.name / rel, columns, rows)
    _write_lesion_truth(out_dir, suites, finding_slices)
    summary = _summary(params, train_rows, train_jobs, suites)
    (out_dir / "phantoms.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    low, high = ph.lesion_slices
    (out_dir / "README.txt").write_text(README.format(seed=ph.seed, lesion_min=low, lesion_max=high))
    return summary
