"""Geometry of the phantoms: patient coordinates, grids, soft-edged shapes, textures.

Anatomy is a function of patient coordinates in mm (DICOM LPS: +x patient
left, +y posterior, +z superior), sampled on a :class:`Grid` that follows the
plane orientations of :mod:`radclip.data.dicom_write`. A 2D CT/MR image is a
one-slice grid through the same 3D anatomy as the volumes; the chest X-ray is
a frontal projection drawn directly in 2D. Shapes are soft-edged ellipsoids,
bands and segments (about one pixel of partial volume); irregular outlines
come from "lobes" (low-order cosine perturbations of the radius by direction),
textures from smoothed noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage

from radclip.core.records import Plane
from radclip.data.dicom_write import PLANE_ORIENTATION

Vec3 = tuple[float, float, float]
Rng = np.random.Generator
INF = math.inf


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
    def build(cls, plane: Plane, shape: Sequence[int], spacing: Sequence[float], depth: float = 0.0) -> Grid:
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
        return cls(
            plane,
            (int(shape[0]), int(shape[1]), int(shape[2])),
            (float(spacing[0]), float(spacing[1]), float(spacing[2])),
            (coords[0], coords[1], coords[2]),
            slice_axis,
        )

    @property
    def pixel_mm(self) -> float:
        return min(self.spacing[1], self.spacing[2])

    @property
    def slice_positions(self) -> np.ndarray:
        """Coordinate of each slice along the slice axis (patient mm)."""
        return np.broadcast_to(self.coords[self.slice_axis], (self.shape[0], 1, 1)).reshape(-1)

    def slices(self, start: int, stop: int) -> Grid:
        """The sub-grid of slices ``start:stop`` (for drawing a finding into its slab only)."""
        c0, c1, c2 = (c[start:stop] if c.shape[0] > 1 else c for c in self.coords)
        return replace(self, shape=(stop - start, *self.shape[1:]), coords=(c0, c1, c2))

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
    def random(cls, rng: Rng, n: int, wavelength: float, amplitude: float) -> Waves:
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
