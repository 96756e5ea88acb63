"""Knee MRI phantom (sagittal): anatomy, sampler, renderer and findings.

Knee MRI (sagittal proton density, fat-saturated): femur, tibia, patella
(dark cortex, suppressed marrow), cartilage, dark menisci, tendons, muscles,
a trace of joint fluid. Joint Effusion: bright distended suprapatellar
recess; rare Meniscal Tear: bright line through the posterior horn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from radclip.data.phantoms.geometry import (
    INF,
    Canvas,
    Grid,
    Rng,
    _shrink,
    paint,
    smooth_noise,
)


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
    tilt: dict[str, Any] = {"tilt": a.patella_tilt, "tilt_axes": (1, 2)}
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
