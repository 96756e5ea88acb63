"""Parts shared by the CT scenes (chest and abdomen): the axial canvas, spine and ribs."""

from __future__ import annotations

from typing import Any

import numpy as np

from radclip.data.phantoms.geometry import INF, Canvas, Grid, paint, periodic_band


def _ct_canvas(grid: Grid, center: tuple[float, float]) -> Canvas:
    return Canvas(grid, (center[0], center[1], 0.0))


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
