"""radclip.evaluation.ablation: seed aggregation and the pre-registered verdicts, on hand-made numbers."""

from __future__ import annotations

import statistics

import pytest

from radclip.config import AblationThresholds
from radclip.evaluation.ablation import aggregate, grid_cells, mean_over_suites, verdicts

THRESHOLDS = AblationThresholds().model_dump()


def _row(acc: float, seed_std: float = 0.01, p1: float = 0.5) -> dict:
    return {"probe_accuracy": acc, "probe_accuracy_seed_std": seed_std, "matching_p1": p1}


def _table(**overrides) -> dict:
    """Two suites: a 2D one (s2d) and a focal 3D one (focal), plus a global 3D suite (whole)."""
    base = {
        "random+average": {"s2d": _row(0.30), "focal": _row(0.40), "whole": _row(0.50)},
        "vanilla+average": {"s2d": _row(0.50, p1=0.30), "focal": _row(0.50, p1=0.40), "whole": _row(0.60, p1=0.5)},
        "finetuned+average": {"s2d": _row(0.70, p1=0.60), "focal": _row(0.55, p1=0.60), "whole": _row(0.70, p1=0.6)},
        "finetuned+adapter": {"s2d": _row(0.70), "focal": _row(0.65, seed_std=0.02), "whole": _row(0.69)},
    }
    for cell, suites in overrides.items():
        for suite, row in suites.items():
            base[cell][suite] = row
    return base


def _verdicts(table: dict, zero_shot: dict | None = None) -> dict:
    return verdicts(table, suites=["s2d", "focal", "whole"], chance={"s2d": 0.2, "focal": 1 / 3, "whole": 0.5},
                    focal_suites=["focal"], global_suites=["whole"], thresholds=THRESHOLDS,
                    general_zero_shot=zero_shot)


def test_seed_aggregate_is_the_mean_and_the_sample_std():
    rows = [{"probe_accuracy_mean": a, "probe_accuracy_std": f, "matching_p1": p}
            for a, f, p in [(0.5, 0.05, 0.4), (0.6, 0.07, 0.5), (0.7, 0.03, 0.3)]]
    out = aggregate(rows)
    assert out["seeds"] == 3
    assert out["probe_accuracy"] == pytest.approx(0.6)
    assert out["probe_accuracy_seed_std"] == pytest.approx(statistics.stdev([0.5, 0.6, 0.7]))
    assert out["probe_accuracy_fold_std"] == pytest.approx(0.05)
    assert out["matching_p1_seed_std"] == pytest.approx(0.1)
    assert aggregate(rows[:1])["probe_accuracy_seed_std"] == 0.0
    means = mean_over_suites({"c": {"a": {"x": 1.0}, "b": {"x": 3.0}, "skip": {"x": 9.0}}}, ["a", "b"])
    assert means == {"c": {"x": 2.0}}


def test_every_criterion_passes_on_a_table_that_meets_it():
    checks = _verdicts(_table(), {"mean_accuracy": 0.7, "chance": 0.08})
    assert all(check["passed"] for check in checks.values()), checks
    # (a) worst suite 0.10 over random; mean over chance ((0.3 + 0.1667 + 0.1) / 3)
    assert checks["a_general_over_random"]["value"] == pytest.approx(0.10)
    assert checks["a_general_over_chance"]["value"] == pytest.approx((0.3 + (0.5 - 1 / 3) + 0.1) / 3)
    assert checks["b_matching_gain"]["value"] == pytest.approx((0.3 + 0.2 + 0.1) / 3)
    assert checks["c_focal_gain.focal"]["value"] == pytest.approx(0.15)
    assert checks["c_focal_gain.focal"]["threshold"] == pytest.approx(2 * 0.02)  # the larger seed std
    assert checks["d_global_adapter.whole"]["value"] == pytest.approx(-0.01)


@pytest.mark.parametrize(("overrides", "failing"), [
    ({"random+average": {"focal": _row(0.46)}}, "a_general_over_random"),  # 0.04 < 0.05 on one suite
    ({"finetuned+average": {"s2d": _row(0.7, p1=0.35), "focal": _row(0.55, p1=0.45), "whole": _row(0.7, p1=0.55)}},
     "b_matching_gain"),  # gain 0.05 on the mean
    ({"finetuned+adapter": {"focal": _row(0.60, seed_std=0.06)}}, "c_focal_gain.focal"),  # 0.10 <= 2 × 0.06
    ({"finetuned+adapter": {"whole": _row(0.67)}}, "d_global_adapter.whole"),  # 0.03 below average pooling
])
def test_a_criterion_fails_exactly_when_its_number_misses(overrides, failing):
    checks = _verdicts(_table(**overrides))
    assert [name for name, check in checks.items() if not check["passed"]] == [failing]


def test_zero_shot_criterion_is_judged_only_when_the_general_model_was_trained():
    assert "e_general_zero_shot" not in _verdicts(_table())
    assert not _verdicts(_table(), {"mean_accuracy": 0.59, "chance": 0.08})["e_general_zero_shot"]["passed"]


def test_the_grid_has_every_encoder_with_both_poolings_and_the_other_reducers_on_the_finetuned_encoder():
    cells = grid_cells("attention")
    assert [cell.name for cell in cells] == [
        "random+average", "random+adapter", "vanilla+average", "vanilla+adapter", "finetuned+average",
        "finetuned+adapter", "finetuned+adapter-mhsa_mean", "finetuned+adapter-residual_mean"]
    assert [cell.trains_adapter for cell in cells] == [False, True, False, True, False, True, True, True]
    assert [cell.pooling for cell in cells if cell.trains_adapter] == [
        "attention", "attention", "attention", "mhsa_mean", "residual_mean"]
    # The pipeline's adapter is the main rows' reducer, whichever the sweep chose; the paper's formula stays in.
    chosen = grid_cells("mhsa_mean")
    assert {c.pooling for c in chosen if c.name in ("vanilla+adapter", "finetuned+adapter")} == {"mhsa_mean"}
    assert [c.name for c in chosen if c.variant] == ["finetuned+adapter-attention", "finetuned+adapter-residual_mean"]
    with pytest.raises(ValueError, match="trainable adapter reducer"):
        grid_cells("mean")
