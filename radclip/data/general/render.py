"""The numpy rasteriser: natural-looking backgrounds with icons composited on top.

Objects are drawn at twice the output size and box-averaged down (antialiasing);
the background is 1/f noise with a colour tint; the whole picture then gets a smooth
lighting gradient, a slight blur and mild pixel noise, and optionally becomes black
and white (three equal channels). All of it is whole-array numpy: an object is
evaluated only on the crop of the grid it can cover.
"""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from radclip.data.general.shapes import DEFAULT_SHADING, SHADING, icon

RGB = tuple[float, float, float]
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_EXTENT = 1.45  # an icon fills [-1, 1]^2; rotated it stays within radius sqrt(2)


@dataclass(frozen=True)
class Placement:
    """One object on the canvas; positions and radius are fractions of the image side."""

    obj: str
    rgb: RGB  # already jittered
    texture: str
    cx: float
    cy: float
    radius: float
    angle: float = 0.0  # radians
    flip: bool = False  # mirror left-right (a car facing the other way)
    pattern_angle: float = 0.0
    pattern_phase: float = 0.0


@dataclass(frozen=True)
class Rendered:
    image: np.ndarray  # uint8 (H, W, 3)
    bodies: list[np.ndarray]  # per placement: float32 (H, W) coverage of its visible colour-filled body
    silhouettes: list[np.ndarray]  # per placement: float32 (H, W) coverage of its visible outline (body + details)


def luminance(rgb: Sequence[float] | np.ndarray) -> float:
    return float(np.dot(_LUMA, np.asarray(rgb, dtype=np.float32)))


def _pattern(texture: str, u: np.ndarray, v: np.ndarray, period: float, angle: float, phase: float) -> np.ndarray:
    """Where the texture's second shade goes, in the icon's own coordinates (it turns with the icon)."""
    if texture == "plain":
        return np.zeros(u.shape, dtype=bool)
    cos, sin = np.cos(angle), np.sin(angle)
    a = (u * cos + v * sin) / period + phase
    b = (v * cos - u * sin) / period + phase
    if texture == "striped":
        return (a % 1.0) < 0.5
    if texture == "dotted":
        return ((a % 1.0) - 0.5) ** 2 + ((b % 1.0) - 0.5) ** 2 < 0.32**2  # see _PATTERN_SHARE
    if texture == "checkered":
        return (np.floor(a * 1.6) + np.floor(b * 1.6)) % 2 == 0
    raise ValueError(f"unknown texture {texture!r}")


def _shades(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The texture's second shade and the detail colour: same hue, contrasting lightness."""
    if luminance(rgb) > 0.3:
        return rgb * 0.5, rgb * 0.18
    return rgb * 0.5 + 0.4, rgb * 0.3 + 0.72


# Share of a body the texture's second shade covers (dots of radius 0.32 period: pi * 0.32^2).
_PATTERN_SHARE = {"plain": 0.0, "striped": 0.5, "dotted": 0.32, "checkered": 0.5}


def _mean_lightness(p: Placement) -> float:
    """The body's average luminance, texture included: what the background must differ from."""
    rgb = np.asarray(p.rgb, dtype=np.float32)
    share = _PATTERN_SHARE[p.texture]
    return (1.0 - share) * luminance(rgb) + share * luminance(_shades(rgb)[0])


def _draw(
    p: Placement, s: int, output_size: int
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray] | None:
    """Body mask, detail mask and colours of one placement on its crop of the 2x grid."""
    half = p.radius * _EXTENT
    x0, x1 = max(0, int(np.floor((p.cx - half) * s))), min(s, int(np.ceil((p.cx + half) * s)))
    y0, y1 = max(0, int(np.floor((p.cy - half) * s))), min(s, int(np.ceil((p.cy + half) * s)))
    if x0 >= x1 or y0 >= y1:
        return None
    dx = ((np.arange(x0, x1, dtype=np.float32) + 0.5) / s - p.cx)[None, :]
    dy = ((np.arange(y0, y1, dtype=np.float32) + 0.5) / s - p.cy)[:, None]
    cos, sin = np.float32(np.cos(p.angle)), np.float32(np.sin(p.angle))
    u = (cos * dx + sin * dy) / np.float32(p.radius)
    v = (cos * dy - sin * dx) / np.float32(p.radius)
    if p.flip:
        u = -u
    body, detail = icon(p.obj)(u, v)
    rgb = np.asarray(p.rgb, dtype=np.float32)
    second, detail_rgb = _shades(rgb)
    # a pattern period of at least 4.5 output pixels, so it survives the downsampling
    period = max(0.5, 4.5 / (p.radius * output_size))
    pattern = _pattern(p.texture, u, v, period, p.pattern_angle, p.pattern_phase)
    shading = SHADING.get(p.obj, DEFAULT_SHADING)
    shade = 1.0 - shading * (0.6 * (u * u + v * v) + 0.4 * (0.6 * u + 0.8 * v))  # lit from the upper left
    colours = np.where(pattern[..., None], second, rgb) * np.clip(shade, 0.3, 1.2)[..., None]
    colours = np.where(detail[..., None], detail_rgb, colours)
    return (slice(y0, y1), slice(x0, x1)), body, detail, colours


def _downsample(a: np.ndarray) -> np.ndarray:
    """2x2 box mean (the antialiasing of the 2x rendering)."""
    if a.dtype == bool:  # masks: count the covered subpixels (small integers, exact)
        a = a.view(np.uint8)
    return ((a[0::2, 0::2] + a[1::2, 0::2]) + (a[0::2, 1::2] + a[1::2, 1::2])) * np.float32(0.25)


@functools.lru_cache(maxsize=8)
def _frequencies(n: int) -> np.ndarray:
    f = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.rfftfreq(n)[None, :])
    f[0, 0] = np.inf  # no DC: the fields are normalised to zero mean anyway
    return f


def pink_noise(rng: np.random.Generator, n: int, fields: int, exponent: float) -> np.ndarray:
    """``fields`` (n, n) fields with amplitude spectrum 1/f^exponent, zero mean, unit std."""
    spectrum = np.fft.rfft2(rng.standard_normal((fields, n, n))) * _frequencies(n) ** -exponent
    out = np.fft.irfft2(spectrum, s=(n, n))
    out -= out.mean(axis=(1, 2), keepdims=True)
    out /= out.std(axis=(1, 2), keepdims=True) + 1e-8
    return out.astype(np.float32)


def _tint(rng: np.random.Generator, hue: float) -> np.ndarray:
    rgb = np.asarray(colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.05, 0.45), 1.0), dtype=np.float32)
    return rgb / luminance(rgb)  # unit luminance: the lightness comes from the noise field


def _free_levels(levels: Sequence[float], lo: float, hi: float, gap: float) -> list[tuple[float, float]]:
    """The parts of [lo, hi] at least ``gap`` away from every level."""
    free, start = [], lo
    for level in sorted(levels):
        end = min(level - gap, hi)
        if end > start:
            free.append((start, end))
        start = max(start, level + gap)
    if start < hi:
        free.append((start, hi))
    return free


def _background_level(rng: np.random.Generator, foregrounds: Sequence[float]) -> float:
    """Mean background lightness, at least 0.2 away from every object's (all must show in grey too);
    where no level is, 0.2 away from the first (the main object)."""
    free = _free_levels(foregrounds, 0.12, 0.88, 0.2)
    if sum(b - a for a, b in free) < 0.02:
        free = _free_levels(foregrounds[:1], 0.12, 0.88, 0.2)
    t = rng.uniform(0.0, sum(b - a for a, b in free))
    for a, b in free:
        if t <= b - a:
            return a + t
        t -= b - a
    return free[-1][1]


def background(rng: np.random.Generator, n: int, foregrounds: Sequence[float]) -> np.ndarray:
    """(n, n, 3) float32: 1/f lightness, tinted with a blend of two related hues."""
    fields = pink_noise(rng, n, 2, rng.uniform(0.9, 1.4))
    lightness = _background_level(rng, foregrounds) + rng.uniform(0.05, 0.14) * fields[0]
    hue = rng.uniform()
    tint_a, tint_b = _tint(rng, hue), _tint(rng, hue + rng.uniform(-0.15, 0.15))
    mix = (0.5 + 0.5 * np.tanh(fields[1]))[..., None]
    return lightness[..., None] * (tint_a * (1.0 - mix) + tint_b * mix)


def _blur(image: np.ndarray, strength: float) -> np.ndarray:
    """Blend with a separable [1, 2, 1] / 4 blur (edges replicated)."""
    p = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
    blurred = 0.25 * rows[:, :-2] + 0.5 * rows[:, 1:-1] + 0.25 * rows[:, 2:]
    return (1.0 - strength) * image + strength * blurred


def render(placements: Sequence[Placement], *, size: int, greyscale: bool, rng: np.random.Generator) -> Rendered:
    """Draw the placements in order (later ones on top) over a fresh background."""
    s = 2 * size
    layer = np.zeros((s, s, 3), dtype=np.float32)  # premultiplied colour of the objects
    alpha = np.zeros((s, s), dtype=np.float32)
    bodies: list[np.ndarray] = []
    outlines: list[np.ndarray] = []
    for p in placements:
        body_full, outline_full = np.zeros((s, s), dtype=bool), np.zeros((s, s), dtype=bool)
        drawn = _draw(p, s, size)
        if drawn is not None:
            crop, body, detail, colours = drawn
            outline = body | detail
            for earlier_body, earlier_outline in zip(bodies, outlines):
                earlier_body[crop] &= ~outline
                earlier_outline[crop] &= ~outline
            layer[crop][outline] = colours[outline]
            alpha[crop][outline] = 1.0
            body_full[crop], outline_full[crop] = body, outline
        bodies.append(body_full)
        outlines.append(outline_full)
    coverage = _downsample(alpha)[..., None]
    foregrounds = [_mean_lightness(p) for p in placements]
    image = _downsample(layer) + background(rng, size, foregrounds) * (1.0 - coverage)

    axis, slope = rng.uniform(0.0, 2.0 * np.pi), 2.0 * rng.uniform(0.0, 0.15)
    ramp = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    lighting = 1.0 + slope * (float(np.cos(axis)) * ramp[None, :] + float(np.sin(axis)) * ramp[:, None])
    image = _blur(image * lighting[..., None], rng.uniform(0.0, 0.7))
    sigma = rng.uniform(0.004, 0.02)
    if greyscale:
        grey = image @ _LUMA + sigma * rng.standard_normal((size, size), dtype=np.float32)
        image = np.repeat(grey[..., None], 3, axis=2)
    else:
        image = image + sigma * rng.standard_normal((size, size, 3), dtype=np.float32)
    pixels = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Rendered(
        image=pixels,
        bodies=[_downsample(b) for b in bodies],
        silhouettes=[_downsample(o) for o in outlines],
    )
