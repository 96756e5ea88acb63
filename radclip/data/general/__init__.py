"""A seeded, procedurally drawn, general-domain (non-medical) image-caption corpus.

It pretrains a small "vanilla" CLIP from scratch on CPU, so that both towers learn
general features (shapes, colours, sizes, textures, counts, positions, English words)
before they meet the grey radiology phantoms. Some (colour, object) pairs are held
out of train and val; the ``heldout`` split shows only those, for compositional
zero-shot tests.

One concept a module:

* :mod:`~radclip.data.general.vocabulary`: objects, colours, sizes, textures, held-out pairs;
* :mod:`~radclip.data.general.shapes`: every object as an icon of primitives;
* :mod:`~radclip.data.general.render`: the numpy rasteriser (background, textures, lighting, noise);
* :mod:`~radclip.data.general.scenes`: what goes in one image, and where;
* :mod:`~radclip.data.general.grammar`: captions, zero-shot prompts, the word list;
* :mod:`~radclip.data.general.shards`: reproducible WebDataset tar shards (stdlib tarfile);
* :mod:`~radclip.data.general.corpus`: ``CorpusSpec``, ``generate_corpus``, ``read_split``.
"""

from radclip.data.general.corpus import (
    SPLITS,
    CorpusSample,
    CorpusSpec,
    CorpusSplit,
    generate_corpus,
    read_split,
    render_sample,
)
from radclip.data.general.grammar import caption, grammar_words, prompt
from radclip.data.general.render import Placement, Rendered, render
from radclip.data.general.scenes import Scene, SceneObject, single_scene, training_scene
from radclip.data.general.shards import ShardError
from radclip.data.general.vocabulary import (
    COLOUR_RGB,
    COLOURS,
    OBJECTS,
    POSITIONS,
    RELATIONS,
    SIZE_RANGES,
    SIZES,
    TEXTURES,
    heldout_pairs,
)

__all__ = [
    "COLOURS",
    "COLOUR_RGB",
    "OBJECTS",
    "POSITIONS",
    "RELATIONS",
    "SIZES",
    "SIZE_RANGES",
    "SPLITS",
    "TEXTURES",
    "CorpusSample",
    "CorpusSpec",
    "CorpusSplit",
    "Placement",
    "Rendered",
    "Scene",
    "SceneObject",
    "ShardError",
    "caption",
    "generate_corpus",
    "grammar_words",
    "heldout_pairs",
    "prompt",
    "read_split",
    "render",
    "render_sample",
    "single_scene",
    "training_scene",
]
