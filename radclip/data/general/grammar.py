"""Captions: a small grammar over a scene's attributes, with varied wording.

A noun phrase orders its words size, texture, colour, noun ("a large striped blue
fish"); "plain" is never said. Colour words are said for every object of a colour
image and never in a black-and-white one (a grey picture cannot show them); those
captions mostly start "a black and white photo of". Captions are lowercase ASCII
words, at most ``MAX_WORDS``.
"""

from __future__ import annotations

import numpy as np

from radclip.data.general.vocabulary import COLOURS, OBJECTS, SIZES, TEXTURES, plural

MAX_WORDS = 16
PREFIXES: tuple[str, ...] = ("a photo of", "a picture of", "an image of", "there is", "")
PREFIX_WEIGHTS = (0.4, 0.15, 0.15, 0.1, 0.2)
GREY_PREFIXES: tuple[str, ...] = ("a black and white photo of", "a black and white picture of")
GREY_PREFIX_FRACTION = 0.75  # of black-and-white captions; the rest use the colour prefixes
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
RELATION_PHRASES = {"left of": "to the left of", "above": "above"}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
CANONICAL_PREFIX = "a photo of"


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def noun_phrase(
    obj: str,
    *,
    colour: str | None = None,
    size: str | None = None,
    texture: str | None = None,
    count: int = 1,
    say_one: bool = False,
) -> str:
    """A noun phrase such as "a small striped red cat", "two green stars" or "an orange fish"."""
    words = [w for w in (size, None if texture == "plain" else texture, colour) if w]
    words.append(obj if count == 1 else plural(obj))
    determiner = COUNT_WORDS[count] if count > 1 or say_one else _article(words[0])
    return " ".join([determiner, *words])


def _prefix(rng: np.random.Generator, greyscale: bool, plural_subject: bool) -> str:
    if greyscale and rng.random() < GREY_PREFIX_FRACTION:
        return GREY_PREFIXES[int(rng.integers(len(GREY_PREFIXES)))]
    prefix = PREFIXES[int(rng.choice(len(PREFIXES), p=PREFIX_WEIGHTS))]
    return "there are" if prefix == "there is" and plural_subject else prefix


def caption(attributes: dict, rng: np.random.Generator) -> str:
    """One caption for a scene's attribute record (see ``Scene.attributes``)."""
    objects, kind = attributes["objects"], attributes["kind"]
    grey = bool(attributes["greyscale"])
    first = objects[0]
    colour = None if grey else first["colour"]
    prefix = _prefix(rng, grey, plural_subject=kind == "count")
    if kind == "single":
        with_size, with_texture = rng.random() < 0.75, rng.random() < 0.8
        say_one, with_position = rng.random() < 0.1, rng.random() < 0.5
        phrase = noun_phrase(
            first["object"],
            colour=colour,
            size=first["size"] if with_size else None,
            texture=first["texture"] if with_texture else None,
            say_one=say_one,
        )
        tail = [POSITION_PHRASES[first["position"]]] if with_position else []
        return _join(prefix, phrase, *tail)
    if kind == "count":
        with_size, with_texture = rng.random() < 0.3, rng.random() < 0.6
        phrase = noun_phrase(
            first["object"],
            colour=colour,
            size=first["size"] if with_size else None,
            texture=first["texture"] if with_texture else None,
            count=len(objects),
        )
        return _join(prefix, phrase)
    if kind == "relation":
        second = objects[1]
        textures = [o["texture"] if rng.random() < 0.4 else None for o in (first, second)]
        for attempt in range(2):  # the second attempt drops textures if the caption ran too long
            phrases = [
                noun_phrase(o["object"], colour=None if grey else o["colour"], texture=None if attempt else t)
                for o, t in zip((first, second), textures)
            ]
            text = _join(prefix, phrases[0], RELATION_PHRASES[attributes["relation"]], phrases[1])
            if len(text.split()) <= MAX_WORDS:
                break
        return text
    raise ValueError(f"unknown scene kind {kind!r}")


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def prompt(*, obj: str, colour: str | None = None, size: str | None = None) -> str:
    """The canonical single-object caption, e.g. "a photo of a small red cat" (for zero-shot).

    The grammar emits it for a plain single object with that prefix and no position
    (without ``colour``: such a black-and-white picture).
    """
    if obj not in OBJECTS:
        raise ValueError(f"unknown object {obj!r}; known: {', '.join(OBJECTS)}")
    if colour is not None and colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; known: {', '.join(COLOURS)}")
    if size is not None and size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
    return _join(CANONICAL_PREFIX, noun_phrase(obj, colour=colour, size=size))


def grammar_words() -> list[str]:
    """Every word a caption can contain, sorted."""
    phrases = [
        *PREFIXES,
        "there are",
        *GREY_PREFIXES,
        *POSITION_PHRASES.values(),
        *RELATION_PHRASES.values(),
        *COUNT_WORDS.values(),
        *OBJECTS,
        *(plural(o) for o in OBJECTS),
        *COLOURS,
        *SIZES,
        *(t for t in TEXTURES if t != "plain"),
        "a an",
    ]
    return sorted({word for phrase in phrases for word in phrase.split()})
