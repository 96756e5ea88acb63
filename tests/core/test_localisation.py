"""radclip.core.localisation: patch coverage of box unions, pointing / top-k / AUROC / IoU of patch
heatmaps with their chance levels, and the bootstrap summary over images. Reference values are
hand counts or independent pixel rasterisations and brute-force enumerations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from radclip.core.localisation import (
    expected_random_iou,
    expected_top_k_hit,
    localise_image,
    patch_coverage,
    summarise_localisation,
)

SIZE, GRID = 64, 4  # 16-px patches


def pixel_mask(boxes, size):
    """Boolean (size, size) mask of integer boxes (x, y, w, h), rows = y, clipped by slicing."""
    mask = np.zeros((size, size), dtype=bool)
    for x, y, w, h in boxes:
        mask[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = True
    return mask


def patch_masks(size, grid):
    p = size // grid
    masks = []
    for r in range(grid):
        for c in range(grid):
            m = np.zeros((size, size), dtype=bool)
            m[r * p:(r + 1) * p, c * p:(c + 1) * p] = True
            masks.append(m)
    return masks


# --------------------------------------------------------------------------- coverage


def test_box_on_one_patch_covers_exactly_that_patch():
    cov = patch_coverage([(16, 32, 16, 16)], SIZE, GRID)  # row 2, col 1
    expected = np.zeros(16)
    expected[2 * 4 + 1] = 1.0
    np.testing.assert_array_equal(cov, expected)


def test_box_straddling_four_patches():
    # x 8..24, y 12..28: cols 0 (8 px) and 1 (8 px); rows 0 (4 px) and 1 (12 px)
    cov = patch_coverage([(8, 12, 16, 16)], SIZE, GRID).reshape(4, 4)
    assert cov[0, 0] == pytest.approx(8 * 4 / 256) and cov[0, 1] == pytest.approx(8 * 4 / 256)
    assert cov[1, 0] == pytest.approx(8 * 12 / 256) and cov[1, 1] == pytest.approx(8 * 12 / 256)
    assert cov.sum() == pytest.approx(256 / 256)
    assert np.count_nonzero(cov) == 4


def test_overlapping_boxes_count_overlap_once():
    # both inside patch 0: 8x8 at (0,0) and 8x8 at (4,4), overlap 4x4 -> 64 + 64 - 16 = 112 px
    cov = patch_coverage([(0, 0, 8, 8), (4, 4, 8, 8)], SIZE, GRID)
    assert cov[0] == pytest.approx(112 / 256)
    assert cov[1:].sum() == 0
    # a duplicate box changes nothing
    np.testing.assert_allclose(patch_coverage([(0, 0, 8, 8)] * 3, SIZE, GRID),
                               patch_coverage([(0, 0, 8, 8)], SIZE, GRID))


def test_boxes_clipped_at_image_edge():
    cov = patch_coverage([(56, -8, 20, 16)], SIZE, GRID)  # visible x 56..64, y 0..8 in patch (0, 3)
    assert cov[3] == pytest.approx(8 * 8 / 256)
    assert cov.sum() == pytest.approx(64 / 256)


def test_coverage_matches_pixel_rasterisation_on_random_boxes():
    rng = np.random.default_rng(3)
    for _ in range(30):
        boxes = [(int(rng.integers(-10, 60)), int(rng.integers(-10, 60)), int(rng.integers(1, 40)),
                  int(rng.integers(1, 40))) for _ in range(int(rng.integers(1, 4)))]
        boxes = [b for b in boxes if b[0] < SIZE and b[1] < SIZE and b[0] + b[2] > 0 and b[1] + b[3] > 0]
        if not boxes:
            continue
        mask = pixel_mask(boxes, SIZE)
        expected = mask.reshape(4, 16, 4, 16).mean(axis=(1, 3)).ravel()
        np.testing.assert_allclose(patch_coverage(boxes, SIZE, GRID), expected, atol=1e-12)


def test_non_divisible_grid_and_fractional_boxes():
    # 3 x 3 on 64 px: patch side 64/3; a box exactly on the middle patch covers it fully
    side = 64 / 3
    cov = patch_coverage([(side, side, side, side)], SIZE, 3)
    expected = np.zeros(9)
    expected[4] = 1.0
    np.testing.assert_allclose(cov, expected, atol=1e-12)
    assert np.count_nonzero(cov) == 1


@pytest.mark.parametrize(("boxes", "message"), [
    ([], "no boxes"),
    ([(0, 0, 0, 5)], "non-positive"),
    ([(0, 0, 5, -1)], "non-positive"),
    ([(64, 0, 5, 5)], "outside"),
    ([(-10, 0, 10, 5)], "outside"),
    ([(0, 0, 5)], "shape"),
    ([(0, float("nan"), 5, 5)], "NaN"),
])
def test_bad_boxes_raise(boxes, message):
    with pytest.raises(ValueError, match=message):
        patch_coverage(boxes, SIZE, GRID)


# --------------------------------------------------------------------------- per image


def centred_peak(grid=GRID, size=SIZE, centre=(32.0, 32.0)):
    p = size / grid
    centres = (np.arange(grid) + 0.5) * p
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    return np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / 200.0)


def test_peak_at_centre_of_centred_box():
    boxes = [(20, 20, 24, 24)]  # 12 px into each of the 4 central patches: 144/256 each, 2.25 patches
    out = localise_image(centred_peak(), boxes, SIZE, GRID)
    assert out["pointing"] == 1.0 and out["top2"] == 1.0 and out["auroc"] == 1.0
    # n = 2; the 4 central patches tie, the lowest indices 5, 6 are taken: overlap 288, union 512+576-288
    assert out["iou"] == pytest.approx(288 / 800)
    assert out["area_fraction"] == pytest.approx(576 / 4096)
    assert out["pointing_chance"] == pytest.approx(4 / 16)


def test_peak_on_far_patch_misses():
    heatmap = np.zeros(16)
    heatmap[0] = 1.0
    out = localise_image(heatmap, [(20, 20, 24, 24)], SIZE, GRID)
    assert out["pointing"] == 0.0
    # top2: patch 0 is in (a miss), one of the 15 tied zeros is drawn, 4 of them hit
    assert out["top2"] == pytest.approx(4 / 15)
    assert out["iou"] == 0.0  # n = 2: patches 0 and 1 (index tie-break)


def test_top_k_ties_hypergeometric_by_hand():
    hits = np.array([0, 1, 0, 0, 0, 1], dtype=bool)
    scores = np.array([5.0, 3.0, 3.0, 3.0, 1.0, 1.0])
    # k=2: patch 0 in (miss); 1 of 3 tied at 3.0 drawn, 1 hits -> 1/3
    assert expected_top_k_hit(scores, hits, 2) == pytest.approx(1 / 3)
    # k=3: 2 of the 3 tied drawn -> 1 - C(2,2)/C(3,2) = 2/3
    assert expected_top_k_hit(scores, hits, 3) == pytest.approx(2 / 3)
    assert expected_top_k_hit(scores, hits, 1) == 0.0
    # a hit strictly above the k-th value
    assert expected_top_k_hit(np.array([0.0, 9.0, 3.0, 3.0, 1.0, 1.0]), hits, 2) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        expected_top_k_hit(scores, hits, 7)


def test_top_k_ties_match_tie_break_enumeration():
    scores = np.array([4.0, 2.0, 2.0, 2.0, 2.0, 0.0])
    hits = np.array([0, 0, 1, 1, 0, 1], dtype=bool)
    for k in (1, 2, 3, 4):
        wins = []
        for order in itertools.permutations(range(6)):  # tie-break rank among equal scores
            ranked = sorted(range(6), key=lambda i: (-scores[i], order[i]))
            wins.append(any(hits[i] for i in ranked[:k]))
        assert expected_top_k_hit(scores, hits, k) == pytest.approx(np.mean(wins))


def test_uniform_heatmap_scores_chance():
    boxes = [(16, 16, 32, 32)]  # exactly the 4 central patches
    out = localise_image(np.full((4, 4), 0.3), boxes, SIZE, GRID)
    assert out["pointing"] == out["pointing_chance"] == pytest.approx(0.25)
    assert out["top2"] == out["top2_chance"] == pytest.approx(1 - math.comb(12, 2) / math.comb(16, 2))
    assert out["auroc"] == 0.5 == out["auroc_chance"]
    # n = 4: j of the 4 drawn patches hit (hypergeometric), IoU = j / (8 - j)
    expected = sum(math.comb(4, j) * math.comb(12, 4 - j) / math.comb(16, 4) * j / (8 - j) for j in range(5))
    assert out["iou_chance"] == pytest.approx(expected)


def test_top_k_key_and_heatmap_validation():
    out = localise_image(centred_peak(), [(20, 20, 24, 24)], SIZE, GRID, top_k=3)
    assert "top3" in out and "top3_chance" in out and "top2" not in out
    with pytest.raises(ValueError, match="shape"):
        localise_image(np.zeros(15), [(0, 0, 5, 5)], SIZE, GRID)
    with pytest.raises(ValueError, match="NaN or inf"):
        localise_image(np.full(16, np.inf), [(0, 0, 5, 5)], SIZE, GRID)


def test_auroc_nan_when_every_patch_hits():
    out = localise_image(centred_peak(), [(0, 0, 64, 64)], SIZE, GRID)
    assert math.isnan(out["auroc"]) and out["pointing"] == 1.0 and out["iou"] == 1.0


# --------------------------------------------------------------------------- iou chance


def brute_force_iou_chance(boxes, size, grid, n):
    region = pixel_mask(boxes, size)
    masks = patch_masks(size, grid)
    ious = []
    for subset in itertools.combinations(range(grid * grid), n):
        chosen = np.any([masks[i] for i in subset], axis=0)
        ious.append((chosen & region).sum() / (chosen | region).sum())
    return float(np.mean(ious))


@pytest.mark.parametrize("boxes", [[(5, 7, 20, 13)], [(0, 0, 10, 30), (20, 25, 25, 20)], [(30, 30, 18, 18)]])
def test_iou_chance_matches_brute_force_enumeration(boxes):
    size, grid = 48, 3
    cov = patch_coverage(boxes, size, grid)
    for n in range(1, 10):
        assert expected_random_iou(cov, n) == pytest.approx(brute_force_iou_chance(boxes, size, grid, n), abs=1e-12)


def test_iou_chance_matches_monte_carlo():
    boxes = [(5, 7, 20, 13), (40, 30, 20, 30)]
    cov = patch_coverage(boxes, SIZE, GRID)
    n = 4
    region, masks = pixel_mask(boxes, SIZE), patch_masks(SIZE, GRID)
    rng = np.random.default_rng(11)
    ious = []
    for _ in range(4000):
        chosen = np.any([masks[i] for i in rng.choice(16, size=n, replace=False)], axis=0)
        ious.append((chosen & region).sum() / (chosen | region).sum())
    exact = expected_random_iou(cov, n)
    assert exact == pytest.approx(np.mean(ious), abs=4 * np.std(ious) / np.sqrt(4000))
    # the Monte Carlo fallback (forced by exact_limit=0) agrees too and is seeded
    fallback = expected_random_iou(cov, n, exact_limit=0, seed=5)
    assert fallback == pytest.approx(exact, abs=0.01)
    assert fallback == expected_random_iou(cov, n, exact_limit=0, seed=5)


# --------------------------------------------------------------------------- summary


def random_boxes(rng, n_images):
    return [[(int(rng.integers(0, 40)), int(rng.integers(0, 40)), int(rng.integers(6, 24)),
              int(rng.integers(6, 24)))] for _ in range(n_images)]


def test_summary_all_hits_beats_chance():
    rng = np.random.default_rng(0)
    rows = [localise_image(patch_coverage(b, SIZE, GRID), b, SIZE, GRID) for b in random_boxes(rng, 12)]
    summary = summarise_localisation(rows, n_boot=300)
    assert summary["images"] == 12
    for name in ("pointing", "top2"):
        assert summary[name]["mean"] == 1.0 and summary[name]["ci_low"] == 1.0
        assert summary[name]["beats_chance"] is True
    assert summary["auroc"]["beats_chance"] is True
    assert 0 < summary["mean_area_fraction"] < 1


def test_summary_uniform_heatmaps_do_not_beat_chance():
    rng = np.random.default_rng(1)
    rows = [localise_image(np.zeros(16), b, SIZE, GRID) for b in random_boxes(rng, 12)]
    summary = summarise_localisation(rows, n_boot=300)
    for name in ("pointing", "top2", "auroc"):
        assert summary[name]["mean"] == pytest.approx(summary[name]["chance"])
        assert summary[name]["beats_chance"] is False


def test_summary_skips_nan_auroc_and_is_seeded():
    rng = np.random.default_rng(2)
    boxes = random_boxes(rng, 8) + [[(0, 0, 64, 64)]]
    rows = [localise_image(centred_peak(), b, SIZE, GRID) for b in boxes]
    summary = summarise_localisation(rows, n_boot=300, seed=4)
    aurocs = [r["auroc"] for r in rows[:-1]]
    assert summary["auroc"]["n"] == 8 and summary["pointing"]["n"] == 9
    assert summary["auroc"]["mean"] == pytest.approx(np.mean(aurocs))
    assert summary == summarise_localisation(rows, n_boot=300, seed=4)
    assert summary["iou"]["ci_low"] <= summary["iou"]["mean"] <= summary["iou"]["ci_high"]
    with pytest.raises(ValueError, match="at least one"):
        summarise_localisation([])
