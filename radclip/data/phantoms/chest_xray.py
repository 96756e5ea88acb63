"""Chest X-ray phantom (frontal projection drawn in 2D): anatomy, sampler, renderer and findings.

Chest X-ray (frontal, bright = attenuating): torso, neck, shoulders, dark
lungs with hilar vessel markings above the diaphragm domes, heart (size set
by the cardiothoracic ratio), aortic knob, spine, ribs, clavicles, gastric
bubble. Atelectasis: band opacity with a raised hemidiaphragm. Cardiomegaly:
CTR 0.56-0.66. Consolidation: dense lobulated patch. Edema: bilateral
perihilar haze. Pleural Effusion: basal opacity with a meniscus. Rare:
Pneumothorax (lung edge pulled in, black rim without markings), Nodule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from radclip.data.phantoms.geometry import (
    INF,
    Canvas,
    Grid,
    Rng,
    Slab,
    Vec3,
    paint,
    periodic_band,
    random_lobes,
    smooth_noise,
)


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
    return replace(a, domes=(domes[0], domes[1]))


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


# --------------------------------------------------------------------------- long-tail findings (CXR-LT)
# Rare in the long-tail collection (about 1 % of its images each), each with its own look so that a model
# can learn it from a handful of examples: what makes them hard is how few there are, not how faint. Each
# spans at least two pixels of the curated 64-pixel image (6.25 mm a pixel; tests/data/test_phantoms.py).


def _place_rib_fracture(a: ChestXrayAnatomy, slab: None, rng: Rng) -> dict:
    side = _xray_side(rng)
    x = side * (a.half_width - rng.uniform(5.0, 20.0))  # lateral ribs, where fractures are seen
    dome = a.domes[0 if side < 0 else 1]
    z = dome + (a.apex - dome) * rng.uniform(0.3, 0.7)
    return {"center": (x, 0.0, z), "radii": (rng.uniform(14.0, 20.0), INF, rng.uniform(9.0, 13.0)),
            "gap": rng.uniform(-0.4, 0.4)}


def _draw_rib_fracture(image: np.ndarray, grid: Grid, a: ChestXrayAnatomy, s: dict) -> None:
    """A healing fracture: a bright callus around the rib with a dark fracture line through it."""
    cv = _xray_canvas(grid, a)
    x, _, z = s["center"]
    image += 4.0 * a.bone * cv.ellipsoid(s["center"], s["radii"])
    dx, dz = 16.0 * math.sin(s["gap"]), 16.0 * math.cos(s["gap"])
    paint(image, cv.segment((x - dx, z - dz), (x + dx, z + dz), 3.0, (0, 2)), a.lung, 0.8)


def _place_mass(a: ChestXrayAnatomy, slab: None, rng: Rng) -> dict:
    side = _xray_side(rng)
    x, z = _lung_point(rng, a, side, 0.35, 0.75)
    radius = rng.uniform(17.0, 26.0)
    return {"center": (x, 0.0, z), "radius": radius, "lobes": random_lobes(rng, order=4.0, roughness=0.12)}


def _draw_mass(image: np.ndarray, grid: Grid, a: ChestXrayAnatomy, s: dict) -> None:
    """A large, round, well-defined opacity (a nodule is under 11 mm, a mass 17-26 mm)."""
    cv = _xray_canvas(grid, a)
    r = s["radius"]
    paint(image, cv.ellipsoid(s["center"], (r, INF, r), lobes=s["lobes"]), 1.1 * a.soft)


def _place_granuloma(a: ChestXrayAnatomy, slab: None, rng: Rng) -> dict:
    spots = []
    for _ in range(1 + int(rng.integers(0, 3))):
        side = _xray_side(rng)
        x, z = _lung_point(rng, a, side, 0.3, 0.85)
        spots.append(((x, 0.0, z), rng.uniform(7.0, 10.0)))
    return {"spots": spots}


def _draw_granuloma(image: np.ndarray, grid: Grid, a: ChestXrayAnatomy, s: dict) -> None:
    """One to three spots as dense as bone (calcified): a nodule's size, far brighter than any nodule."""
    cv = _xray_canvas(grid, a)
    for center, radius in s["spots"]:
        paint(image, cv.ellipsoid(center, (radius, INF, radius)), a.soft + 6.0 * a.bone)


def _place_hiatal_hernia(a: ChestXrayAnatomy, slab: None, rng: Rng) -> dict:
    return {"radii": (rng.uniform(20.0, 28.0), INF, rng.uniform(16.0, 22.0)), "level": rng.uniform(0.3, 0.6),
            "offset": rng.uniform(-8.0, 12.0)}


def _draw_hiatal_hernia(image: np.ndarray, grid: Grid, a: ChestXrayAnatomy, s: dict) -> None:
    """A retrocardiac round lucency just above the diaphragm with an air-fluid level across it."""
    cv = _xray_canvas(grid, a)
    rx, _, rz = s["radii"]
    center = (s["offset"], 0.0, max(a.domes) + rz - 2.0)
    pouch = cv.ellipsoid(center, s["radii"])
    fluid_top = center[2] - rz + 2 * rz * s["level"]
    air = pouch * cv.above(2, fluid_top)
    paint(image, air, 0.3 * a.soft)
    paint(image, pouch * (1 - cv.above(2, fluid_top)), 1.05 * a.soft)


def _place_subcutaneous_emphysema(a: ChestXrayAnatomy, slab: None, rng: Rng) -> dict:
    sides = [-1, 1] if rng.uniform() < 0.3 else [_xray_side(rng)]
    streaks = []
    for side in sides:
        for _ in range(int(rng.integers(6, 11))):
            x = side * (a.half_width + rng.uniform(8.0, 32.0))  # chest wall, outside the ribs
            z = rng.uniform(min(a.domes) - 20.0, a.apex + 30.0)
            angle = rng.uniform(-0.6, 0.6)
            half = rng.uniform(10.0, 22.0)
            streaks.append(((x - half * math.sin(angle), z - half * math.cos(angle)),
                            (x + half * math.sin(angle), z + half * math.cos(angle)), rng.uniform(3.5, 5.5)))
    return {"streaks": streaks}


def _draw_subcutaneous_emphysema(image: np.ndarray, grid: Grid, a: ChestXrayAnatomy, s: dict) -> None:
    """Dark branching streaks of gas in the soft tissue of the chest wall."""
    cv = _xray_canvas(grid, a)
    for start, end, half in s["streaks"]:
        paint(image, cv.segment(start, end, half, (0, 2)), 0.12, 0.9)
