"""Brain MRI phantom: anatomy, sampler, renderer and findings.

Brain MRI (T1-like): scalp fat (bright), skull (dark ring), CSF, cortex,
white matter with a wavy gyral border, deep grey nuclei, lateral and third
ventricles, interhemispheric fissure, pituitary gland. Atrophy (diffuse):
wide CSF spaces over a shrunken brain and enlarged ventricles. Glioma: irregular
hyperintense mass, often with a dark necrotic centre, in a halo of T1-dark
oedema. Meningioma: round, homogeneously bright, based on the inner skull
surface. Pituitary Tumor: small bright mass at the sella, midline, inferior.

Head size and shape vary from study to study (``HEAD_RANGE``). The sex suite
(IXI's ``SEX_ID``) sets them per patient instead (:func:`sample_sex_head`): male
heads larger on average and relatively longer, the classes overlapping; a
whole-volume property that every slice through the head shows, with no focal
finding anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from radclip.data.phantoms.geometry import (
    Canvas,
    Grid,
    Rng,
    Slab,
    Vec3,
    Waves,
    _scale,
    _shrink,
    inside_point,
    paint,
    random_lobes,
    section_point,
)

# Scalp semi-axes (mm: left-right, anterior-posterior, inferior-superior) of every brain the
# training set draws: each uniform in its range, independently per study.
HEAD_RANGE: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] = (
    (66.0, 76.0), (84.0, 96.0), (82.0, 96.0),
)  # fmt: skip
HEAD_REFERENCE: Vec3 = (71.0, 90.0, 89.0)  # the middle of HEAD_RANGE


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
    atrophy_mm: float = 0.0  # extra sulcal CSF: the brain surface this much further inside the dura

    def shell(self, depth_mm: float) -> Vec3:
        return _shrink(self.head, depth_mm)

    @property
    def dura(self) -> Vec3:  # inner skull surface
        return self.shell(13.0)

    @property
    def brain(self) -> Vec3:
        return self.shell(16.0 + self.atrophy_mm)

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
        head=(rng.uniform(*HEAD_RANGE[0]), rng.uniform(*HEAD_RANGE[1]), rng.uniform(*HEAD_RANGE[2])),
        white_fraction=rng.uniform(0.7, 0.8),
        gyri=random_lobes(rng, order=9.0, roughness=0.06, n=8),
        ventricle_scale=rng.uniform(0.75, 1.5),
        scalp=rng.uniform(0.7, 0.9),
        bone=rng.uniform(0.04, 0.1),
        csf=rng.uniform(0.07, 0.15),
        grey=grey,
        white=grey + rng.uniform(0.17, 0.3),
    )


# --------------------------------------------------------------------------- sex: head size and shape

# Per IXI SEX_ID ("1" male, "2" female): mean head scale (x HEAD_REFERENCE) and mean aspect
# (breadth / length, left-right over anterior-posterior semi-axis). Male heads are ~4.5 % larger
# and a little longer; with the spreads below the classes overlap (optimal accuracy from the
# true scale and aspect about 0.87), and every head stays inside HEAD_RANGE, the training brains'
# range, so no sex is out of distribution for the encoder.
SEX_HEAD: dict[str, tuple[float, float]] = {"1": (1.022, 0.783), "2": (0.978, 0.795)}
HEAD_SCALE_SD = 0.02
HEAD_ASPECT_SD = 0.02
HEAD_HEIGHT_SD = 0.015  # relative height: the same for both sexes
HEAD_TRUTH_COLUMNS = ("head_scale", "head_aspect", "head_height", "head_lr_mm", "head_ap_mm", "head_si_mm")


@dataclass(frozen=True)
class HeadShape:
    """One patient's head: semi-axes ``scale x (aspect x 90, 90, height x 89)`` mm."""

    scale: float
    aspect: float
    height: float

    @property
    def semi_axes(self) -> Vec3:
        ap = self.scale * HEAD_REFERENCE[1]
        return (round(self.aspect * ap, 3), round(ap, 3), round(self.height * self.scale * HEAD_REFERENCE[2], 3))

    def truth(self) -> dict[str, float]:
        """The recorded parameters, in ``HEAD_TRUTH_COLUMNS`` order."""
        return dict(zip(HEAD_TRUTH_COLUMNS, (self.scale, self.aspect, self.height, *self.semi_axes)))


def sample_sex_head(sex_id: str, rng: Rng) -> HeadShape:
    """A head of IXI ``SEX_ID`` ``sex_id``: scale, aspect and height normal (``SEX_HEAD``), truncated
    (by redrawing) to heads inside ``HEAD_RANGE``; values rounded so the recorded truth is exact."""
    scale_mean, aspect_mean = SEX_HEAD[sex_id]
    for _ in range(1000):
        shape = HeadShape(
            scale=round(float(rng.normal(scale_mean, HEAD_SCALE_SD)), 4),
            aspect=round(float(rng.normal(aspect_mean, HEAD_ASPECT_SD)), 4),
            height=round(float(rng.normal(1.0, HEAD_HEIGHT_SD)), 4),
        )
        if all(low <= value <= high for value, (low, high) in zip(shape.semi_axes, HEAD_RANGE)):
            return shape
    raise RuntimeError(f"no head of SEX_ID {sex_id} inside {HEAD_RANGE} in 1000 draws")  # pragma: no cover


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


def _adjust_atrophy(a: BrainAnatomy, rng: Rng) -> BrainAnatomy:
    """Atrophy: a shrunken brain (wide CSF spaces under the skull) and lateral ventricles larger than any
    normal study's (``ventricle_scale`` up to 1.5): a whole-brain change that every slice through it shows."""
    return replace(a, atrophy_mm=rng.uniform(4.0, 8.0), ventricle_scale=rng.uniform(1.8, 2.4))


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
