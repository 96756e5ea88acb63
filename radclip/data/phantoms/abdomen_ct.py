"""Abdomen CT phantom: anatomy, sampler, renderer and findings.

Abdomen CT (HU, portal venous phase): fat, muscle wall, liver, spleen,
kidneys (cortex, medulla, sinus fat), aorta, IVC, spine, psoas, bowel with
fluid and gas, stomach with an air-fluid level. Liver Lesion: hypodense;
rare Kidney Cyst: water density at the renal margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from radclip.data.phantoms.ct_parts import _ct_canvas, _draw_ribs, _draw_spine
from radclip.data.phantoms.geometry import (
    INF,
    Canvas,
    Grid,
    Rng,
    Slab,
    Vec3,
    _scale,
    _shrink,
    inside_point,
    paint,
    random_lobes,
    section_point,
    smooth_noise,
)


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
