"""Chest CT phantom: anatomy, sampler, renderer and findings.

Chest CT (HU): subcutaneous fat, muscle, lungs (about -850) with vessels
denser at the hila and dome-shaped bases, heart in epicardial fat, aorta,
trachea and bronchi, sternum, ribs, spine (cortex, cancellous bone, discs,
canal). Nodule: small soft-tissue sphere. COVID-19: peripheral ground glass
(about -500 HU, vessels stay visible), mostly bilateral. Community-Acquired
Pneumonia: lobar consolidation (about 20 HU) with air bronchograms. Emphysema
(diffuse): the whole lung hyperlucent (about -940 HU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from radclip.data.phantoms.ct_parts import _ct_canvas, _draw_ribs, _draw_spine
from radclip.data.phantoms.geometry import (
    INF,
    Canvas,
    Grid,
    Rng,
    Slab,
    Vec3,
    Waves,
    _shrink,
    inside_point,
    paint,
    random_lobes,
    section_point,
    smooth_noise,
)


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


def _adjust_emphysema(a: ChestCtAnatomy, rng: Rng) -> ChestCtAnatomy:
    """Emphysema: parenchyma destroyed throughout, lung attenuation below any normal study's (-880 to -830)."""
    return replace(a, lung_hu=rng.uniform(-960.0, -925.0))


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
