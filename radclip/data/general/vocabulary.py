"""The attribute lists of the general corpus and its held-out (colour, object) pairs.

Everything a caption can say about an object is listed here, with the RGB each colour
is drawn in; the renderer, the scene sampler and the grammar all read these lists, so
adding a colour or an object is one edit.
"""

from __future__ import annotations

import functools

import numpy as np

# Nouns a real CLIP knows, each drawn as a simple icon (see shapes.py). "life vest",
# "puppy" and "cat" are the distractor prompts of the project's Fig. 5.
OBJECTS: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "ring", "cross", "heart", "house", "tree", "car",
    "fish", "flower", "ball", "cat", "puppy", "life vest", "sun", "key", "cup",
)

PLURALS: dict[str, str] = {
    "cross": "crosses",
    "fish": "fish",
    "puppy": "puppies",
    "life vest": "life vests",
}


def plural(obj: str) -> str:
    return PLURALS.get(obj, obj + "s")


# Named colours in linear-ish sRGB, 0..1; each image jitters them a little.
COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.09),
    "green": (0.12, 0.66, 0.16),
    "blue": (0.10, 0.26, 0.88),
    "yellow": (0.96, 0.86, 0.10),
    "orange": (0.97, 0.50, 0.05),
    "purple": (0.52, 0.16, 0.72),
    "pink": (0.97, 0.48, 0.72),
    "brown": (0.50, 0.29, 0.11),
    "white": (0.96, 0.96, 0.96),
    "black": (0.06, 0.06, 0.06),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)

SIZES: tuple[str, ...] = ("small", "large")
# Object half-extent as a fraction of the image side; the ranges do not overlap.
# Radii as fractions of the side. At 64 px with 16-px patches an object must span a few patches for its
# shape (not only its colour) to be learnable: a first run with radii 0.12-0.16 / 0.26-0.34 learnt colour
# (0.96 zero-shot) but hardly shape (0.13, chance 0.05), on seen and held-out pairs alike.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.16, 0.2), "large": (0.3, 0.37)}

TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
RELATIONS: tuple[str, ...] = ("left of", "above")  # objects[0] is left of / above objects[1]
COUNTS: tuple[int, ...] = (1, 2, 3)

HELDOUT_FRACTION = 0.12  # of all (colour, object) pairs
_HELDOUT_STREAM = 7_001  # rng stream of the held-out draw, apart from every sample's stream


def all_pairs() -> list[tuple[str, str]]:
    return [(colour, obj) for obj in OBJECTS for colour in COLOURS]


@functools.lru_cache(maxsize=8)
def heldout_pairs(seed: int) -> frozenset[tuple[str, str]]:
    """A deterministic ~12 % of (colour, object) pairs, never shown in train or val.

    Capped per object and per colour, so every object keeps most colours in training
    and every colour most objects (the compositional test needs both parts seen).
    """
    pairs = all_pairs()
    n_target = round(HELDOUT_FRACTION * len(pairs))
    max_per_object = -(-n_target // len(OBJECTS))
    max_per_colour = -(-n_target // len(COLOURS))
    rng = np.random.default_rng([seed, _HELDOUT_STREAM])
    chosen: list[tuple[str, str]] = []
    per_object = dict.fromkeys(OBJECTS, 0)
    per_colour = dict.fromkeys(COLOURS, 0)
    for i in rng.permutation(len(pairs)):
        colour, obj = pairs[int(i)]
        if per_object[obj] < max_per_object and per_colour[colour] < max_per_colour:
            chosen.append((colour, obj))
            per_object[obj] += 1
            per_colour[colour] += 1
            if len(chosen) == n_target:
                break
    return frozenset(chosen)


def training_colours(obj: str, seed: int) -> tuple[str, ...]:
    """The colours ``obj`` may take in train and val."""
    held = heldout_pairs(seed)
    return tuple(c for c in COLOURS if (c, obj) not in held)
