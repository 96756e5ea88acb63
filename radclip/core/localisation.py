"""Localisation scores of patch heatmaps (e.g. LRCLR's) against ground-truth lesion boxes.

Pure numpy/scipy/scikit-learn; nothing here runs a model. Conventions (each checked by
tests/core/test_localisation.py):

* **Geometry.** The image is square, ``image_size`` pixels a side, cut into ``grid x grid``
  patches of side ``image_size / grid``. Patches are indexed row-major, ``row * grid + col``,
  the order of ViT patch tokens. Boxes are NIH ChestX-ray14 ``(x, y, w, h)`` in continuous
  pixel coordinates: ``x`` the left edge's column, ``y`` the top edge's row, so ``(0, 0, 16, 16)``
  is exactly patch 0 at 16-px patches. Boxes are clipped to the image; several boxes of one
  finding (bilateral effusion) form one region, their *union*, computed exactly by cutting the
  plane at every box and patch edge (overlaps count once).
* **Hits.** A patch hits the finding when its coverage is > 0, i.e. it *intersects* the region.
  At coarse grids a small lesion contains no patch centre, so a centre rule would make it
  unhittable; intersecting is the pointing game at patch resolution.
* **Ties** in pointing and top-k are resolved in expectation under uniformly random tie-breaking
  (as in :mod:`radclip.core.metrics`); the ``*_chance`` values are the same scores of a uniform
  heatmap. For IoU the ``n`` highest patches are taken with ties broken by patch index (lowest
  first), and its chance is the exact expected IoU of ``n`` uniformly drawn patches, by
  enumeration over how many patches of each coverage value are drawn (hypergeometric weights),
  or a seeded Monte Carlo when that enumeration is larger than ``exact_limit``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from radclip.core.metrics import bootstrap_ci

_DECIMALS = 12  # coverage is rounded to this many decimals: float slivers of edges are not hits
EXACT_LIMIT = 20_000
MC_DRAWS = 4_000


def _clipped_boxes(boxes: Sequence[Sequence[float]] | np.ndarray, image_size: float) -> np.ndarray:
    """Validated boxes as (B, 4) ``x0, y0, x1, y1`` clipped to the image."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        raise ValueError("no boxes given: a finding's region needs at least one box")
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must be (B, 4) rows of x, y, w, h, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("boxes contain NaN or inf")
    for x, y, w, h in array:
        if w <= 0 or h <= 0:
            raise ValueError(f"box {(x, y, w, h)} has non-positive width or height")
        if x >= image_size or y >= image_size or x + w <= 0 or y + h <= 0:
            raise ValueError(f"box {(x, y, w, h)} lies entirely outside the {image_size} px image")
    corners = np.column_stack([array[:, 0], array[:, 1], array[:, 0] + array[:, 2], array[:, 1] + array[:, 3]])
    return np.clip(corners, 0.0, image_size)


def patch_coverage(boxes: Sequence[Sequence[float]] | np.ndarray, image_size: float, grid: int) -> np.ndarray:
    """(grid*grid,) fraction of each patch's area covered by the union of the boxes, row-major.

    Exact: the image is cut at every patch edge and every (clipped) box edge; each elementary
    cell is wholly inside or outside every box, and covered cells' areas are summed per patch.
    """
    if image_size <= 0 or grid < 1:
        raise ValueError(f"need image_size > 0 and grid >= 1, got {image_size} and {grid}")
    corners = _clipped_boxes(boxes, image_size)
    edges = np.linspace(0.0, image_size, grid + 1)
    nearest = edges[np.clip(np.rint(corners / (image_size / grid)).astype(int), 0, grid)]
    corners = np.where(np.abs(corners - nearest) < 1e-9 * image_size, nearest, corners)  # snap near-edges
    xs = np.unique(np.concatenate([edges, corners[:, 0], corners[:, 2]]))
    ys = np.unique(np.concatenate([edges, corners[:, 1], corners[:, 3]]))
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    inside_x = (corners[:, 0, None] < cx) & (cx < corners[:, 2, None])  # (B, nx)
    inside_y = (corners[:, 1, None] < cy) & (cy < corners[:, 3, None])  # (B, ny)
    covered = np.any(inside_y[:, :, None] & inside_x[:, None, :], axis=0)  # (ny, nx)
    area = np.outer(np.diff(ys), np.diff(xs)) * covered
    col = np.clip(np.searchsorted(edges, cx, side="right") - 1, 0, grid - 1)
    row = np.clip(np.searchsorted(edges, cy, side="right") - 1, 0, grid - 1)
    coverage = np.zeros((grid, grid), dtype=np.float64)
    np.add.at(coverage, (row[:, None], col[None, :]), area)
    coverage /= (image_size / grid) ** 2
    return np.clip(np.round(coverage, _DECIMALS), 0.0, 1.0).ravel()


def expected_top_k_hit(heatmap: np.ndarray, hits: np.ndarray, k: int) -> float:
    """P(any of the k highest patches hits), ties at the k-th value broken uniformly at random.

    Patches strictly above the k-th value are in; if none of them hits, ``r`` of the ``m`` tied
    patches are drawn, ``h`` of which hit: the hit probability is ``1 - C(m-h, r) / C(m, r)``.
    k = 1 is the pointing game (the fraction of tied maxima that hit).
    """
    scores, hits = np.asarray(heatmap, dtype=np.float64).ravel(), np.asarray(hits, dtype=bool).ravel()
    if not 1 <= k <= scores.size:
        raise ValueError(f"k must be in [1, {scores.size}], got {k}")
    kth = np.sort(scores)[::-1][k - 1]
    above = scores > kth
    if np.any(hits & above):
        return 1.0
    tied = scores == kth
    m, h, r = int(tied.sum()), int((tied & hits).sum()), k - int(above.sum())
    return 1.0 - math.comb(m - h, r) / math.comb(m, r)


def _compositions(sizes: Sequence[int], n: int) -> Iterator[tuple[int, ...]]:
    """Every (k_g) with 0 <= k_g <= sizes[g] and sum n (pruned: every branch yields)."""
    if not sizes:
        if n == 0:
            yield ()
        return
    rest = sum(sizes[1:])
    for k in range(max(0, n - rest), min(sizes[0], n) + 1):
        for tail in _compositions(sizes[1:], n - k):
            yield (k, *tail)


def expected_random_iou(
    coverage: np.ndarray, n: int, *, exact_limit: int = EXACT_LIMIT, n_draws: int = MC_DRAWS, seed: int = 0
) -> float:
    """Expected IoU of the union of ``n`` patches drawn uniformly without replacement with the region.

    In patch-area units, drawing S with ``s = sum of coverage over S`` and ``b = total coverage``
    gives IoU ``s / (n + b - s)``, which depends only on how many patches of each distinct coverage
    value are drawn. Exact: sum over those count vectors weighted by products of binomials over
    C(grid², n), when there are at most ``exact_limit`` of them; otherwise the mean over
    ``n_draws`` seeded uniform draws.
    """
    cov = np.asarray(coverage, dtype=np.float64).ravel()
    if not 1 <= n <= cov.size:
        raise ValueError(f"n must be in [1, {cov.size}], got {n}")
    b = float(cov.sum())
    values, counts = np.unique(np.round(cov, _DECIMALS), return_counts=True)
    sizes = [int(c) for c in counts]
    vectors = list(islice(_compositions(sizes, n), exact_limit + 1))
    if len(vectors) <= exact_limit:
        total, expected = math.comb(cov.size, n), 0.0
        for vector in vectors:
            weight = math.prod(math.comb(size, k) for size, k in zip(sizes, vector)) / total
            s = float(np.dot(vector, values))
            expected += weight * s / (n + b - s)
        return expected
    rng = np.random.default_rng(seed)
    chosen = np.argsort(rng.random((n_draws, cov.size)), axis=1)[:, :n]
    s_draws = cov[chosen].sum(axis=1)
    return float(np.mean(s_draws / (n + b - s_draws)))


def localise_image(
    heatmap: np.ndarray,
    boxes: Sequence[Sequence[float]] | np.ndarray,
    image_size: float,
    grid: int,
    *,
    top_k: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Localisation scores of one heatmap for one finding, each with its chance level.

    ``pointing`` / ``top{k}``: the highest / any of the k highest patches hits (ties in
    expectation). ``auroc``: ROC AUC of the heatmap for hitting vs other patches (NaN when all
    or none hit; chance 0.5). ``iou``: pixel IoU of the ``n`` highest patches (ties by patch
    index) with the region, ``n = max(1, round-half-up(covered area / patch area))``.
    ``area_fraction``: covered area / image area. ``seed`` only feeds the Monte Carlo fallback of
    :func:`expected_random_iou`.
    """
    scores = np.asarray(heatmap, dtype=np.float64)
    if scores.shape not in ((grid * grid,), (grid, grid)):
        raise ValueError(f"heatmap must have shape ({grid * grid},) or ({grid}, {grid}), got {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("heatmap contains NaN or inf")
    scores = scores.ravel()
    coverage = patch_coverage(boxes, image_size, grid)
    hits = coverage > 0
    uniform = np.zeros_like(scores)
    b = float(coverage.sum())  # covered area in patch areas
    n = max(1, math.floor(b + 0.5))
    chosen = np.argsort(-scores, kind="stable")[:n]
    s = float(coverage[chosen].sum())
    n_hit = int(hits.sum())
    return {
        "pointing": expected_top_k_hit(scores, hits, 1),
        "pointing_chance": expected_top_k_hit(uniform, hits, 1),
        f"top{top_k}": expected_top_k_hit(scores, hits, top_k),
        f"top{top_k}_chance": expected_top_k_hit(uniform, hits, top_k),
        "auroc": float(roc_auc_score(hits, scores)) if 0 < n_hit < hits.size else float("nan"),
        "auroc_chance": 0.5,
        "iou": s / (n + b - s),
        "iou_chance": expected_random_iou(coverage, n, seed=seed),
        "area_fraction": b / hits.size,
    }


def summarise_localisation(
    per_image: Sequence[Mapping[str, float]], *, level: float = 0.95, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Mean, percentile bootstrap CI over images, mean chance and ``beats_chance`` per metric.

    Metrics are the keys with a ``<key>_chance`` partner. Images whose value is NaN (AUROC when
    all or no patches hit) are left out of that metric, its chance mean included; ``n`` counts
    the images used. ``beats_chance`` is ``ci_low > chance``. Also ``mean_area_fraction`` and
    ``images``.
    """
    if not per_image:
        raise ValueError("summarise_localisation needs at least one image")
    keys = set(per_image[0])
    if any(set(row) != keys for row in per_image):
        raise ValueError("every image's scores must have the same keys")
    summary: dict[str, Any] = {}
    for name in sorted(k for k in keys if f"{k}_chance" in keys):
        values = np.array([row[name] for row in per_image], dtype=np.float64)
        chances = np.array([row[f"{name}_chance"] for row in per_image], dtype=np.float64)
        keep = ~np.isnan(values)
        if not keep.any():
            summary[name] = {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                             "chance": float("nan"), "beats_chance": False, "n": 0}
            continue
        low, high = bootstrap_ci(np.mean, values[keep], n_boot=n_boot, alpha=1 - level, seed=seed)
        chance = float(np.mean(chances[keep]))
        summary[name] = {"mean": float(np.mean(values[keep])), "ci_low": low, "ci_high": high,
                         "chance": chance, "beats_chance": bool(low > chance), "n": int(keep.sum())}
    if "area_fraction" in keys:
        summary["mean_area_fraction"] = float(np.mean([row["area_fraction"] for row in per_image]))
    summary["images"] = len(per_image)
    return summary
