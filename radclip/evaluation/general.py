"""What the general-domain CLIP learnt: compositional zero-shot on held-out (colour, object) pairs,
and image–text retrieval on its validation split."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from radclip.core.metrics import retrieval_metrics, zero_shot

EncodeTexts = Callable[[Sequence[str]], np.ndarray]


def attribute_zero_shot(
    image_emb: np.ndarray,
    attributes: Sequence[dict],
    encode_texts: EncodeTexts,
    *,
    objects: Sequence[str],
    colours: Sequence[str],
    prompt: Callable[..., str],
) -> dict[str, float]:
    """Zero-shot accuracy of single-object images whose (colour, object) pair was never seen in training.

    ``object``: the image's colour fixed, which object (chance 1/len(objects)); ``colour``: its object
    fixed, which colour (chance 1/len(colours)); ``pair``: among every colour × object prompt
    (chance 1/(colours × objects)). ``mean`` averages the object and colour accuracies, ``chance``
    their chance levels.
    """
    truth = [(a["objects"][0]["colour"], a["objects"][0]["object"]) for a in attributes]
    objects, colours = list(objects), list(colours)
    # Every colour × object prompt encoded once; each accuracy below scores a slice of them.
    pair_embeddings = encode_texts([prompt(obj=o, colour=c) for c in colours for o in objects])
    grid = pair_embeddings.reshape(len(colours), len(objects), -1)
    result: dict[str, float] = {}
    for attribute, values, fixed_index in (("object", objects, 0), ("colour", colours, 1)):
        hits, count = 0.0, 0
        for fixed in sorted({pair[fixed_index] for pair in truth}):
            rows = [i for i, pair in enumerate(truth) if pair[fixed_index] == fixed]
            # object: the image's colour fixed, the prompts run over objects; colour: the other way round
            candidates = grid[colours.index(fixed)] if attribute == "object" else grid[:, objects.index(fixed)]
            labels = np.array([values.index(truth[i][1 - fixed_index]) for i in rows])
            scores = zero_shot(image_emb[rows], [e[None] for e in candidates], labels, k=(1,))
            hits += scores["top1"] * len(rows)
            count += len(rows)
        result[f"{attribute}_accuracy"] = hits / count
    pair_labels = np.array([colours.index(c) * len(objects) + objects.index(o) for c, o in truth])
    result["pair_accuracy"] = zero_shot(image_emb, [e[None] for e in pair_embeddings], pair_labels, k=(1,))["top1"]
    result["mean_accuracy"] = (result["object_accuracy"] + result["colour_accuracy"]) / 2
    result["chance"] = (1 / len(objects) + 1 / len(colours)) / 2
    result["pair_chance"] = 1 / (len(colours) * len(objects))
    result["images"] = float(len(truth))
    return result


def caption_retrieval(image_emb: np.ndarray, captions: Sequence[str], encode_texts: EncodeTexts) -> dict[str, float]:
    """Image→text and text→image R@1/5 over the split's distinct captions (an image's positive: its caption)."""
    unique = sorted(set(captions))
    index = {caption: i for i, caption in enumerate(unique)}
    metrics = retrieval_metrics(image_emb, encode_texts(unique), np.array([index[c] for c in captions]), ks=(1, 5))
    return {key: value for key, value in metrics.items() if "recall" in key}
