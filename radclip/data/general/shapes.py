"""The icons: every object as a union of primitives on local coordinates.

An icon lives in the square [-1, 1]^2 (x right, y down) and is drawn on whatever grid
the renderer passes in, so one definition serves any size, position and rotation.
Each returns two boolean masks: the body (drawn in the object's colour and texture)
and the details (wheels, eyes, a door: drawn in a contrasting shade of that colour),
which make icons with similar outlines (ball and circle, cat and puppy) tell apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Mask = np.ndarray  # bool, the shape of the grid
Icon = Callable[[np.ndarray, np.ndarray], tuple[Mask, Mask]]  # (u, v) -> (body, detail)


def disc(u: np.ndarray, v: np.ndarray, cx: float, cy: float, rx: float, ry: float | None = None) -> Mask:
    ry = rx if ry is None else ry
    return ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 <= 1.0


def box(u: np.ndarray, v: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> Mask:
    return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)


def polygon(u: np.ndarray, v: np.ndarray, points: Sequence[tuple[float, float]]) -> Mask:
    """Even-odd fill; the loop runs over the few edges, each a whole-grid numpy step."""
    inside = np.zeros(np.broadcast(u, v).shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(points, [*points[1:], points[0]]):
        if y0 == y1:
            continue  # a horizontal edge never crosses a scan line
        crosses = (y0 > v) != (y1 > v)
        x_at = x0 + (v - y0) * ((x1 - x0) / (y1 - y0))
        inside ^= crosses & (u < x_at)
    return inside


def _none(u: np.ndarray) -> Mask:
    return np.zeros(u.shape, dtype=bool)


def _mirror(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(-x, y) for x, y in points]


def _circle(u, v):
    return disc(u, v, 0, 0, 0.95), _none(u)


def _square(u, v):
    return box(u, v, -0.8, -0.8, 0.8, 0.8), _none(u)


def _triangle(u, v):
    return polygon(u, v, [(0.0, -0.95), (0.95, 0.8), (-0.95, 0.8)]), _none(u)


_STAR = [
    (float(r * np.cos(a)), float(r * np.sin(a)))
    for k in range(10)
    for r, a in [(1.0 if k % 2 == 0 else 0.42, -np.pi / 2 + k * np.pi / 5)]
]


def _star(u, v):
    return polygon(u, v, _STAR), _none(u)


def _ring(u, v):
    return disc(u, v, 0, 0, 0.95) & ~disc(u, v, 0, 0, 0.55), _none(u)


def _cross(u, v):
    return box(u, v, -0.28, -0.95, 0.28, 0.95) | box(u, v, -0.95, -0.28, 0.95, 0.28), _none(u)


def _heart(u, v):
    lobes = disc(u, v, -0.46, -0.32, 0.5) | disc(u, v, 0.46, -0.32, 0.5)
    return lobes | polygon(u, v, [(-0.94, -0.15), (0.94, -0.15), (0.0, 0.95)]), _none(u)


def _house(u, v):
    outline = box(u, v, -0.7, -0.05, 0.7, 0.92) | polygon(u, v, [(-0.95, 0.0), (0.0, -0.92), (0.95, 0.0)])
    detail = box(u, v, -0.15, 0.42, 0.15, 0.92) | box(u, v, 0.3, 0.15, 0.56, 0.4) | box(u, v, -0.56, 0.15, -0.3, 0.4)
    return outline & ~detail, detail


def _tree(u, v):
    tiers = (
        polygon(u, v, [(0.0, -1.0), (0.55, -0.35), (-0.55, -0.35)])
        | polygon(u, v, [(0.0, -0.7), (0.78, 0.15), (-0.78, 0.15)])
        | polygon(u, v, [(0.0, -0.35), (0.98, 0.62), (-0.98, 0.62)])
    )
    trunk = box(u, v, -0.16, 0.62, 0.16, 1.0)
    return tiers, trunk & ~tiers


def _car(u, v):
    cabin = polygon(u, v, [(-0.55, -0.15), (-0.3, -0.62), (0.35, -0.62), (0.6, -0.15)])
    outline = box(u, v, -1.0, -0.15, 1.0, 0.4) | cabin
    windows = polygon(u, v, [(-0.42, -0.22), (-0.25, -0.52), (-0.02, -0.52), (-0.02, -0.22)])
    windows |= polygon(u, v, [(0.08, -0.22), (0.08, -0.52), (0.3, -0.52), (0.47, -0.22)])
    wheels = disc(u, v, -0.55, 0.42, 0.24) | disc(u, v, 0.55, 0.42, 0.24)
    detail = windows | wheels
    return outline & ~detail, detail


def _fish(u, v):
    outline = disc(u, v, -0.15, 0.0, 0.75, 0.46) | polygon(u, v, [(0.4, 0.0), (1.0, -0.55), (1.0, 0.55)])
    eye = disc(u, v, -0.58, -0.1, 0.1)
    return outline & ~eye, eye


_PETALS = [(0.56 * float(np.cos(a)), 0.56 * float(np.sin(a))) for a in np.arange(6) * np.pi / 3 - np.pi / 2]


def _flower(u, v):
    petals = _none(u)
    for x, y in _PETALS:
        petals |= disc(u, v, x, y, 0.4)
    centre = disc(u, v, 0, 0, 0.3)
    return petals & ~centre, centre


def _ball(u, v):
    ball = disc(u, v, 0, 0, 0.95)
    seams = (np.abs(np.hypot(u - 1.3, v) - 0.95) < 0.11) | (np.abs(np.hypot(u + 1.3, v) - 0.95) < 0.11)
    return ball & ~seams, ball & seams


_EAR = [(-0.74, -0.05), (-0.62, -0.98), (-0.12, -0.48)]


def _cat(u, v):
    outline = disc(u, v, 0, 0.15, 0.76, 0.7) | polygon(u, v, _EAR) | polygon(u, v, _mirror(_EAR))
    eyes = disc(u, v, -0.3, 0.05, 0.12, 0.15) | disc(u, v, 0.3, 0.05, 0.12, 0.15)
    nose = polygon(u, v, [(-0.12, 0.32), (0.12, 0.32), (0.0, 0.46)])
    detail = eyes | nose
    return outline & ~detail, detail


def _puppy(u, v):
    head = disc(u, v, 0, -0.05, 0.6, 0.62) | disc(u, v, 0, 0.4, 0.36, 0.3)
    ears = disc(u, v, -0.66, 0.12, 0.24, 0.6) | disc(u, v, 0.66, 0.12, 0.24, 0.6)
    face = disc(u, v, -0.24, -0.15, 0.1) | disc(u, v, 0.24, -0.15, 0.1) | disc(u, v, 0, 0.28, 0.14, 0.1)
    detail = (ears & ~head) | face
    return head & ~detail, detail


def _life_vest(u, v):
    torso = polygon(u, v, [(-0.85, -0.4), (-0.45, -0.95), (0.45, -0.95), (0.85, -0.4), (0.8, 0.95), (-0.8, 0.95)])
    vest = torso & ~disc(u, v, 0, -0.9, 0.3, 0.5) & ~box(u, v, -0.07, -0.5, 0.07, 1.0)
    straps = box(u, v, -0.8, 0.12, 0.8, 0.26) | box(u, v, -0.8, 0.55, 0.8, 0.69)
    return vest & ~straps, straps


_RAYS = [
    [
        (0.62 * float(np.cos(a - 0.2)), 0.62 * float(np.sin(a - 0.2))),
        (0.98 * float(np.cos(a)), 0.98 * float(np.sin(a))),
        (0.62 * float(np.cos(a + 0.2)), 0.62 * float(np.sin(a + 0.2))),
    ]
    for a in np.arange(8) * np.pi / 4
]


def _sun(u, v):
    sun = disc(u, v, 0, 0, 0.52)
    for ray in _RAYS:
        sun |= polygon(u, v, ray)
    return sun, _none(u)


def _key(u, v):
    bow = disc(u, v, -0.58, 0, 0.4) & ~disc(u, v, -0.58, 0, 0.17)
    shaft = box(u, v, -0.22, -0.09, 0.96, 0.09)
    teeth = box(u, v, 0.55, 0.09, 0.68, 0.36) | box(u, v, 0.78, 0.09, 0.9, 0.28)
    return bow | shaft | teeth, _none(u)


def _cup(u, v):
    body = polygon(u, v, [(-0.68, -0.7), (0.48, -0.7), (0.36, 0.8), (-0.56, 0.8)])
    handle = disc(u, v, 0.48, -0.05, 0.42, 0.4) & ~disc(u, v, 0.48, -0.05, 0.2, 0.2) & (u > 0.4)
    rim = disc(u, v, -0.1, -0.7, 0.58, 0.12)
    return (body | handle) & ~rim, rim


ICONS: dict[str, Icon] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "ring": _ring,
    "cross": _cross,
    "heart": _heart,
    "house": _house,
    "tree": _tree,
    "car": _car,
    "fish": _fish,
    "flower": _flower,
    "ball": _ball,
    "cat": _cat,
    "puppy": _puppy,
    "life vest": _life_vest,
    "sun": _sun,
    "key": _key,
    "cup": _cup,
}

# Icons drawn rounder by the shading (a ball looks lit, a square does not).
SHADING: dict[str, float] = {"ball": 0.35, "circle": 0.04}
DEFAULT_SHADING = 0.1


def icon(obj: str) -> Icon:
    try:
        return ICONS[obj]
    except KeyError:
        raise ValueError(f"unknown object {obj!r}; known: {', '.join(ICONS)}") from None
