"""LRCLR's evaluation helpers and model persistence: regions onto patches, the verdicts of the pre-registered
criteria, the paired zero-shot comparison, and a RadCLIP with a cross-modal transformer saved and reloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_params
from sklearn.metrics import roc_auc_score

from radclip.config import LrclrThresholds
from radclip.core.models.regions import CrossModalSpec
from radclip.evaluation.localisation import (
    macro_auroc,
    paired_auroc_difference,
    regions_hit,
    regions_to_patches,
    verdicts,
)


def test_selected_regions_land_on_their_patches_repeats_summed():
    indices = torch.tensor([[3, 3, 0, 15], [1, 2, 1, 1]])
    weights = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    heat = regions_to_patches(indices, weights, 16)
    expected = np.zeros((2, 16))
    expected[0, [3, 0, 15]] = [0.3, 0.3, 0.4]
    expected[1, [1, 2]] = [0.75, 0.25]
    np.testing.assert_allclose(heat.numpy(), expected, atol=1e-7)


def test_selected_regions_hit_when_one_touches_a_box_against_the_chance_of_as_many_random_patches():
    box = [(16.0, 16.0, 16.0, 16.0)]  # exactly patch 5 of a 4 x 4 grid on 64 px
    assert regions_hit(np.array([5, 0, 0, 15]), box, 64, 4)["regions_hit"] == 1.0
    missed = regions_hit(np.array([0, 0, 3, 3]), box, 64, 4)
    assert missed["regions_hit"] == 0.0
    # 2 distinct patches drawn from 16 of which 1 hits: 1 - C(15, 2) / C(16, 2) = 1 - 105 / 120
    assert missed["regions_hit_chance"] == pytest.approx(15 / 120)


def _summary(mean: float, low: float, chance: float) -> dict:
    return {"mean": mean, "ci_low": low, "ci_high": mean + 0.1, "chance": chance, "beats_chance": low > chance}


def _entry(text_pointing: float, text_low: float, control_pointing: float, area: float) -> dict:
    text = {"pointing": _summary(text_pointing, text_low, 0.2), "top2": _summary(0.6, text_low + 0.1, 0.35)}
    return {"lrclr_text_regions": text, "lrclr_rollout": {"pointing": _summary(0.3, 0.1, 0.2)},
            "control_rollout": {"pointing": _summary(control_pointing, 0.1, 0.2)}, "box_area_patches": area}


def test_verdicts_apply_the_thresholds_and_excuse_only_sub_patch_findings():
    thresholds = LrclrThresholds()
    zero_shot = {"a": {"difference": -0.004}, "b": {"difference": -0.010}}  # mean -0.007 >= -0.01
    table = {"Mass": _entry(0.7, 0.5, 0.3, 3.0), "Nodule": _entry(0.25, 0.15, 0.2, 0.3)}
    result = verdicts(table, zero_shot, thresholds)
    a = result["a_text_regions_beat_chance"]
    assert a["findings"]["Mass"]["pass"] and not a["findings"]["Nodule"]["pass"]
    assert a["excused"] == ["Nodule"] and a["pass"]  # the miss is a finding smaller than one patch
    b = result["b_pointing_gain"]
    assert b["best_heatmap"] == "lrclr_text_regions"  # mean 0.475 beats the LRCLR rollout's 0.3
    assert b["gain"] == pytest.approx(0.475 - 0.25) and b["pass"]
    assert result["c_zero_shot_auroc"]["pass"] and result["c_zero_shot_auroc"]["difference"] == pytest.approx(-0.007)

    table["Nodule"]["box_area_patches"] = 1.5  # the same miss on a finding of a patch and more: no excuse
    assert not verdicts(table, zero_shot, thresholds)["a_text_regions_beat_chance"]["pass"]
    worse = {"a": {"difference": -0.02}, "b": {"difference": -0.01}}
    assert not verdicts(table, worse, thresholds)["c_zero_shot_auroc"]["pass"]
    flat = {"Mass": _entry(0.32, 0.2, 0.3, 3.0)}  # gain 0.02 < 0.10
    assert not verdicts(flat, zero_shot, thresholds)["b_pointing_gain"]["pass"]


def test_paired_zero_shot_difference_is_zero_for_one_model_and_follows_sklearn():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, size=(80, 3))
    logits = targets + rng.normal(0, 1.0, size=targets.shape)
    assert macro_auroc(logits, targets) == pytest.approx(np.mean([roc_auc_score(targets[:, c], logits[:, c])
                                                                  for c in range(3)]))
    same = paired_auroc_difference(logits, logits.copy(), targets, n_boot=200, level=0.95, seed=0)
    assert same["difference"] == 0.0 and same["ci_low"] == same["ci_high"] == 0.0
    better = paired_auroc_difference(targets * 3.0 + rng.normal(0, 0.1, targets.shape), logits, targets,
                                     n_boot=200, level=0.95, seed=0)
    assert better["difference"] > 0 and better["ci_low"] > 0  # a clearly better arm's CI excludes 0
    targets[:, 0] = 1  # a finding every image has: no AUROC, left out of the macro
    assert macro_auroc(logits, targets) == pytest.approx(np.mean([roc_auc_score(targets[:, c], logits[:, c])
                                                                  for c in (1, 2)]))


def test_a_radclip_with_a_cross_modal_transformer_reloads_with_it(tmp_path):
    from radclip.core.models import RadCLIP
    from radclip.training.build import build_model

    params = tiny_params(tmp_path)
    captions = ["Chest X-ray with Nodule", "Normal Chest X-ray"]
    model = build_model(params, captions)
    with pytest.raises(ValueError, match="no cross-modal transformer"):
        model.local_features(model.encode_regions(np.zeros((1, 32, 32), np.uint8)), captions[:1])
    model.save_pretrained(tmp_path / "plain")
    assert RadCLIP.from_pretrained(tmp_path / "plain").cross_modal is None
    torch.manual_seed(1)
    model.attach_cross_modal(CrossModalSpec(width=32, layers=2, heads=4))
    assert {id(p) for p in model.cross_modal.parameters()} <= {id(p) for p in model.trainable_parameters("lrclr")}
    assert not {id(p) for p in model.cross_modal.parameters()} & {id(p) for p in model.trainable_parameters("2d")}
    model.save_pretrained(tmp_path / "lrclr")
    loaded = RadCLIP.from_pretrained(tmp_path / "lrclr")
    assert loaded.config["cross_modal"] == {"width": 32, "layers": 2, "heads": 4, "dropout": 0.0}
    images = np.random.default_rng(0).integers(0, 255, size=(3, 32, 32), dtype=np.uint8)
    model.eval()
    with torch.no_grad():
        want = model.local_features(model.encode_regions(images), [captions[0], captions[1], captions[0]])
        got = loaded.local_features(loaded.encode_regions(images), [captions[0], captions[1], captions[0]])
    for a, b in ((want.image, got.image), (want.text, got.text), (want.text_to_regions, got.text_to_regions)):
        torch.testing.assert_close(a, b)
    # a model without one, saved over a directory that had one, leaves no stale weights behind
    RadCLIP.from_pretrained(tmp_path / "plain").save_pretrained(tmp_path / "lrclr")
    assert not (tmp_path / "lrclr" / "cross_modal.safetensors").exists()
    assert RadCLIP.from_pretrained(tmp_path / "lrclr").cross_modal is None
