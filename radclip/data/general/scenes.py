"""What goes in one image: the scene kind, each object's attributes and its placement.

Three kinds: one object (any size, at one of five positions), two or three copies of
one small object, or two different small objects side by side or one above the
other. Train and val scenes draw colours only from an object's training colours, so
held-out (colour, object) pairs never appear in them; held-out scenes show exactly
one held-out pair, in colour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from radclip.data.general.render import Placement
from radclip.data.general.vocabulary import COLOUR_RGB, OBJECTS, POSITIONS, RELATIONS, SIZE_RANGES, SIZES, TEXTURES

KINDS: tuple[str, ...] = ("single", "count", "relation")
KIND_WEIGHTS = (0.55, 0.2, 0.25)
TEXTURE_WEIGHTS = (0.4, 0.2, 0.2, 0.2)  # plain, striped, dotted, checkered
# A quarter in black and white (captions then name no colour). Chosen on the val split's zero-shot: half
# in black and white, or fewer textured objects with batch 256 and lr 2e-3, learnt shape no better
# (object zero-shot 0.19 and 0.16 against 0.24 here; colour 0.96-0.97 in all three).
GREYSCALE_FRACTION = 0.25

# Distance of a single object's centre from the image centre at "left", "top", ...:
# large objects sit nearer the middle so most of them stays in the picture.
_POSITION_OFFSET = {"small": 0.25, "large": 0.14}
_DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1), "center": (0, 0)}
# Where the copies of a count scene go (centres, fractions of the side).
_COUNT_LAYOUTS: dict[int, tuple[tuple[tuple[float, float], ...], ...]] = {
    2: (((0.27, 0.5), (0.73, 0.5)), ((0.5, 0.27), (0.5, 0.73)),
        ((0.28, 0.28), (0.72, 0.72)), ((0.28, 0.72), (0.72, 0.28))),
    3: (((0.5, 0.26), (0.25, 0.72), (0.75, 0.72)), ((0.5, 0.74), (0.25, 0.28), (0.75, 0.28))),
}  # fmt: skip
_RELATION_SLOTS = {"left of": ((0.27, 0.5), (0.73, 0.5)), "above": ((0.5, 0.27), (0.5, 0.73))}
_RELATION_POSITIONS = {"left of": ("left", "right"), "above": ("top", "bottom")}

ColoursFor = Callable[[str], Sequence[str]]  # object -> the colours it may take


@dataclass(frozen=True)
class SceneObject:
    object: str
    colour: str
    size: str
    texture: str
    position: str
    placement: Placement

    def attributes(self) -> dict:
        p = self.placement
        return {
            "object": self.object,
            "colour": self.colour,
            "size": self.size,
            "texture": self.texture,
            "position": self.position,
            "center": [round(p.cx, 4), round(p.cy, 4)],
            "radius": round(p.radius, 4),
        }


@dataclass(frozen=True)
class Scene:
    kind: str
    objects: tuple[SceneObject, ...]
    relation: str | None
    greyscale: bool

    @property
    def placements(self) -> list[Placement]:
        return [o.placement for o in self.objects]

    def attributes(self) -> dict:
        """The sample's JSON record: what the caption may say, and where each object is."""
        return {
            "kind": self.kind,
            "count": len(self.objects),
            "relation": self.relation,
            "greyscale": self.greyscale,
            "objects": [o.attributes() for o in self.objects],
        }


def position_of(cx: float, cy: float) -> str:
    """The position word for a centre: the dominant direction from the middle, or "center"."""
    dx, dy = cx - 0.5, cy - 0.5
    if max(abs(dx), abs(dy)) < 0.1:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def _jitter_colour(rng: np.random.Generator, colour: str) -> tuple[float, float, float]:
    # mostly multiplicative per channel: an additive jitter would turn dark colours' hue (brown to olive)
    rgb = np.asarray(COLOUR_RGB[colour]) * rng.uniform(0.88, 1.08) * (1.0 + rng.normal(0.0, 0.04, 3))
    rgb += rng.normal(0.0, 0.01, 3)
    r, g, b = (float(c) for c in np.clip(rgb, 0.0, 1.0))
    return r, g, b


def _texture(rng: np.random.Generator) -> str:
    return TEXTURES[int(rng.choice(len(TEXTURES), p=TEXTURE_WEIGHTS))]


def _place(
    rng: np.random.Generator, obj: str, rgb: tuple[float, float, float], texture: str, cx: float, cy: float, size: str
) -> Placement:
    return Placement(
        obj=obj,
        rgb=rgb,
        texture=texture,
        cx=cx,
        cy=cy,
        radius=float(rng.uniform(*SIZE_RANGES[size])),
        angle=float(np.clip(rng.normal(0.0, 0.12), -0.3, 0.3)),
        flip=bool(rng.random() < 0.5),
        pattern_angle=float(rng.uniform(0.0, np.pi)),
        pattern_phase=float(rng.uniform()),
    )


def single_scene(rng: np.random.Generator, obj: str, colour: str, *, greyscale: bool) -> Scene:
    size = SIZES[int(rng.integers(len(SIZES)))]
    position = POSITIONS[int(rng.integers(len(POSITIONS)))]
    texture = _texture(rng)
    (dx, dy), offset = _DIRECTIONS[position], _POSITION_OFFSET[size]
    cx = 0.5 + dx * offset + rng.uniform(-0.04, 0.04)
    cy = 0.5 + dy * offset + rng.uniform(-0.04, 0.04)
    placement = _place(rng, obj, _jitter_colour(rng, colour), texture, float(cx), float(cy), size)
    return Scene("single", (SceneObject(obj, colour, size, texture, position, placement),), None, greyscale)


def _count_scene(rng: np.random.Generator, obj: str, colour: str, *, greyscale: bool) -> Scene:
    count = int(rng.integers(2, 4))
    layouts = _COUNT_LAYOUTS[count]
    centres = layouts[int(rng.integers(len(layouts)))]
    texture = _texture(rng)
    rgb = _jitter_colour(rng, colour)  # copies of one object look alike
    shift = rng.uniform(-0.03, 0.03, 2)
    objects = []
    for x, y in centres:
        cx, cy = (float(c) for c in np.asarray([x, y]) + shift + rng.uniform(-0.02, 0.02, 2))
        placement = _place(rng, obj, rgb, texture, cx, cy, "small")
        objects.append(SceneObject(obj, colour, "small", texture, position_of(cx, cy), placement))
    return Scene("count", tuple(objects), None, greyscale)


def _relation_scene(rng: np.random.Generator, colours_for: ColoursFor, *, greyscale: bool) -> Scene:
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    first = OBJECTS[int(rng.integers(len(OBJECTS)))]
    others = [o for o in OBJECTS if o != first]
    second = others[int(rng.integers(len(others)))]
    along = rng.uniform(-0.1, 0.1)  # both shifted together across the relation's axis
    objects = []
    for obj, (x, y), position in zip((first, second), _RELATION_SLOTS[relation], _RELATION_POSITIONS[relation]):
        colours = colours_for(obj)
        colour = colours[int(rng.integers(len(colours)))]
        texture = _texture(rng)
        jx, jy = rng.uniform(-0.04, 0.04, 2)
        cx, cy = (x + along + jx, y + jy) if relation == "above" else (x + jx, y + along + jy)
        placement = _place(rng, obj, _jitter_colour(rng, colour), texture, float(cx), float(cy), "small")
        objects.append(SceneObject(obj, colour, "small", texture, position, placement))
    return Scene("relation", tuple(objects), relation, greyscale)


def training_scene(rng: np.random.Generator, colours_for: ColoursFor) -> Scene:
    """A train/val scene: any kind, colours only from ``colours_for``, a quarter in black and white."""
    kind = KINDS[int(rng.choice(len(KINDS), p=KIND_WEIGHTS))]
    greyscale = bool(rng.random() < GREYSCALE_FRACTION)
    if kind == "relation":
        return _relation_scene(rng, colours_for, greyscale=greyscale)
    obj = OBJECTS[int(rng.integers(len(OBJECTS)))]
    colours = colours_for(obj)
    colour = colours[int(rng.integers(len(colours)))]
    if kind == "count":
        return _count_scene(rng, obj, colour, greyscale=greyscale)
    return single_scene(rng, obj, colour, greyscale=greyscale)
