"""radclip.evaluation.evaluate: evaluation refuses records shared with training, and splits the multi-label
AUROC into base and rare classes by training frequency (the suite metrics of a trained model:
tests/training/test_fit.py, which trains one; behaviour: tests/evaluation/test_model_behaviour.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import tiny_params

from radclip.data.shards import MANIFEST_FILE
from radclip.evaluation.evaluate import (
    LeakageError,
    check_no_leakage,
    multilabel_metrics,
    training_condition_counts,
)
from radclip.evaluation.features import SuiteFeatures


def test_evaluation_refuses_records_shared_with_training(tiny_curated, tmp_path):
    source = tiny_curated.curated_dir / "manifest.parquet"
    check_no_leakage(source.parent)  # curation keeps them apart
    manifest = pd.read_parquet(source)
    evaluation = manifest.index[manifest["role"] == "eval"][0]
    manifest.loc[evaluation, "patient_hash"] = manifest.loc[manifest["role"] == "train", "patient_hash"].iloc[0]
    manifest.to_parquet(tmp_path / "manifest.parquet")
    with pytest.raises(LeakageError, match=manifest.loc[evaluation, "source_path"]):
        check_no_leakage(tmp_path)


# --------------------------------------------------------------------------- base vs rare by training frequency


class PromptModel:
    """A stand-in for RadCLIP's text side: a caption naming a condition embeds on that condition's
    axis, any other caption (the normal one) on the last axis."""

    def __init__(self, conditions: list[str]) -> None:
        self.conditions = conditions

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        rows = np.zeros((len(texts), len(self.conditions) + 1), dtype=np.float32)
        for row, text in enumerate(texts):
            named = [i for i, c in enumerate(self.conditions) if c in text]
            rows[row, named[0] if named else -1] = 1.0
        return torch.from_numpy(rows)

    def logit_scale_exp(self) -> torch.Tensor:
        return torch.tensor(10.0)


def _training_manifest(directory: Path, alpha_in_train: int) -> None:
    """1300 training images (train split): Chest X-ray with Alpha ``alpha_in_train`` times (5 of them
    "Alpha|Beta"), Beta 200 times, and 300 Chest CT with Alpha; plus Alpha rows that must not count
    (the val split, an evaluation collection)."""
    def rows(n: int, region: str, modality: str, conditions: str, role: str = "train", split: str = "train"):
        return [{"role": role, "split": split, "collection": "c", "region": region, "modality": modality,
                 "conditions": conditions}] * n

    table = (rows(alpha_in_train - 5, "Chest", "X-ray", "Alpha") + rows(5, "Chest", "X-ray", "Alpha|Beta")
             + rows(195, "Chest", "X-ray", "Beta") + rows(805 - alpha_in_train, "Chest", "X-ray", "")
             + rows(300, "Chest", "CT", "Alpha")
             + rows(500, "Chest", "X-ray", "Alpha", split="val") + rows(500, "Chest", "X-ray", "Alpha", "eval", "eval"))
    directory.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(table).to_parquet(directory / MANIFEST_FILE)


def _reference_shares(directory: Path) -> dict[tuple[str, str, str], float]:
    """Training shares by another route: explode the conditions of the train split's rows."""
    manifest = pd.read_parquet(directory / MANIFEST_FILE)
    train = manifest[(manifest["role"] == "train") & (manifest["split"] == "train")].reset_index(drop=True)
    exploded = train.assign(condition=train["conditions"].str.split("|")).explode("condition").reset_index()
    exploded = exploded[exploded["condition"] != ""].drop_duplicates(["index", "condition"])  # one per image
    counts = exploded.groupby(["region", "modality", "condition"]).size()
    return {key: count / len(train) for key, count in counts.items()}


def _suite() -> SuiteFeatures:
    """60 chest X-rays: Alpha in 30 (frequent here), Beta in 3 (rare here)."""
    rng = np.random.default_rng(0)
    n = 60
    conditions = np.array(["Alpha"] * 30 + ["Beta"] * 3 + [""] * 27)
    features = rng.normal(size=(n, 3))
    features[:30, 0] += 0.8
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = np.where(conditions == "", "Normal", conditions)
    return SuiteFeatures(suite="phantom_chest_xray_5class", kind="2d", features=features, labels=labels,
                         patients=np.arange(n).astype(str), captions=labels, conditions=conditions,
                         source_paths=np.arange(n).astype(str), region_modality=("Chest", "X-ray"))


def _reference_auroc(suite: SuiteFeatures, column: int, condition: str) -> float:
    scores = suite.features[:, column] - suite.features[:, -1]  # cos(img, pos) - cos(img, normal): unit axes
    positive = np.array([condition in value.split("|") for value in suite.conditions])
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_training_condition_counts_match_an_independent_count(tiny_curated, tmp_path):
    for directory in (tiny_curated.curated_dir, tmp_path):
        if directory == tmp_path:
            _training_manifest(tmp_path, alpha_in_train=10)
        counts, total = training_condition_counts(directory)
        assert {key: n / total for key, n in counts.items()} == pytest.approx(_reference_shares(directory))
    assert counts[("Chest", "X-ray", "Alpha")] == 10 and counts[("Chest", "X-ray", "Beta")] == 200
    assert total == 1300


def test_multilabel_rare_classes_are_those_rare_in_training_not_in_the_suite(tmp_path):
    params = tiny_params(tmp_path, evaluate={"rare_by": "training", "rare_fraction": 0.02})
    _training_manifest(params.resolve(params.paths.curated), alpha_in_train=10)  # Alpha 0.8 %, Beta 15 %
    suite = _suite()
    metrics = multilabel_metrics(PromptModel(["Alpha", "Beta"]), suite, params)
    assert metrics["multilabel_rare_classes"] == 1 and metrics["multilabel_base_classes"] == 1
    assert metrics["multilabel_auroc_rare"] == pytest.approx(_reference_auroc(suite, 0, "Alpha"))  # 30 positives
    assert metrics["multilabel_auroc_base"] == pytest.approx(_reference_auroc(suite, 1, "Beta"))  # 3 positives
    assert metrics["multilabel_train_fraction.Alpha"] == pytest.approx(10 / 1300)

    by_suite = multilabel_metrics(PromptModel(["Alpha", "Beta"]), suite,
                                  tiny_params(tmp_path, evaluate={"rare_by": "evaluation", "rare_threshold": 10}))
    assert by_suite["multilabel_auroc_rare"] == pytest.approx(_reference_auroc(suite, 1, "Beta"))  # the old rule


def test_multilabel_metrics_say_when_no_class_is_rare_and_write_no_nan(tmp_path):
    params = tiny_params(tmp_path, evaluate={"rare_by": "training", "rare_fraction": 0.02})
    _training_manifest(params.resolve(params.paths.curated), alpha_in_train=100)  # Alpha 7.7 %: base
    metrics = multilabel_metrics(PromptModel(["Alpha", "Beta"]), _suite(), params)
    assert metrics["multilabel_rare_classes"] == 0 and metrics["multilabel_base_classes"] == 2
    assert "multilabel_auroc_rare" not in metrics
    headline = {k: v for k, v in metrics.items() if "." not in k}  # what reports/evaluate.json carries
    json.dumps(headline, allow_nan=False)


def test_multilabel_prompts_use_the_suites_own_caption_template(tmp_path):
    """The sex suite captions "Brain MRI of a Male patient" (as the real IXI collection of params/paper.yaml):
    its prompts are those captions against "Brain MRI", not the default "... with ..." ones. Male and
    Female never occur in training, so both are rare (share 0) and the rare AUROC is a number."""
    params = tiny_params(tmp_path)
    _training_manifest(params.resolve(params.paths.curated), alpha_in_train=10)
    seen: list[str] = []

    class Recording(PromptModel):
        def encode_text(self, texts: list[str]) -> torch.Tensor:
            seen.extend(texts)
            return super().encode_text(texts)

    rng = np.random.default_rng(1)
    conditions = np.array(["Male", "Female"] * 10)
    suite = SuiteFeatures(suite="phantom_brain_mri_3d_sex", kind="3d", features=rng.normal(size=(20, 3)),
                          labels=conditions, patients=np.arange(20).astype(str), captions=conditions,
                          conditions=conditions, source_paths=np.arange(20).astype(str),
                          region_modality=("Brain", "MRI"))
    metrics = multilabel_metrics(Recording(["Female", "Male"]), suite, params)
    assert seen == ["Brain MRI of a Female patient", "Brain MRI of a Male patient", "Brain MRI"]
    assert metrics["multilabel_rare_classes"] == 2 and metrics["multilabel_base_classes"] == 0
    assert np.isfinite(metrics["multilabel_auroc_rare"]) and "multilabel_auroc_base" not in metrics


def _validation() -> SuiteFeatures:
    """40 validation chest X-rays: Alpha in 20 (shifted towards its axis), Beta in none."""
    rng = np.random.default_rng(5)
    features = rng.normal(size=(40, 3))
    features[:20, 0] += 0.8
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    conditions = np.array(["Alpha"] * 20 + [""] * 20)
    labels = np.where(conditions == "", "Normal", conditions)
    return SuiteFeatures(suite="validation", kind="2d", features=features, labels=labels,
                         patients=np.arange(40).astype(str), captions=labels, conditions=conditions,
                         source_paths=np.arange(40).astype(str), region_modality=("Chest", "X-ray"))


def _counts_at(scores: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, float]:
    called = scores >= threshold
    tp, fp = (called & truth).sum(), (called & ~truth).sum()
    fn, tn = (~called & truth).sum(), (~called & ~truth).sum()
    return {"specificity": tn / (tn + fp), "precision": tp / (tp + fp), "recall": tp / (tp + fn),
            "f1": 2 * tp / (2 * tp + fp + fn)}


def test_detection_metrics_use_thresholds_chosen_on_the_validation_split(tmp_path):
    """LRCLR's Table 1 beside the AUROC: each condition's threshold is the F1-best one on the validation
    features (found here by trying every cut), 0 for a condition the validation split does not show."""
    params = tiny_params(tmp_path, evaluate={"rare_by": "evaluation", "rare_threshold": 2})
    suite, validation = _suite(), _validation()
    metrics = multilabel_metrics(PromptModel(["Alpha", "Beta"]), suite, params, validation)
    val_scores = 10 * (validation.features[:, 0] - validation.features[:, -1])
    val_truth = validation.conditions == "Alpha"
    best = max(sorted(set(val_scores), reverse=True), key=lambda t: _counts_at(val_scores, val_truth, t)["f1"])
    assert metrics["detection.Alpha.threshold"] == pytest.approx(best)
    scores = 10 * (suite.features[:, 0] - suite.features[:, -1])
    expected = _counts_at(scores, suite.conditions == "Alpha", best)
    for metric, value in expected.items():
        assert metrics[f"detection.Alpha.{metric}"] == pytest.approx(value)
    assert metrics["detection.Alpha.auc"] == pytest.approx(_reference_auroc(suite, 0, "Alpha"))
    assert metrics["detection.Beta.threshold"] == 0.0  # no Beta in the validation split: P(present) = 0.5
    beta = _counts_at(10 * (suite.features[:, 1] - suite.features[:, -1]), suite.conditions == "Beta", 0.0)
    assert metrics["detection.Beta.recall"] == pytest.approx(beta["recall"])
    assert metrics["detection_recall"] == pytest.approx((expected["recall"] + beta["recall"]) / 2)
    assert "detection_f1" not in multilabel_metrics(PromptModel(["Alpha", "Beta"]), suite, params)  # no validation


def test_confusion_tables_hold_one_row_per_prediction_and_recount_to_the_matrix(tmp_path):
    """What DVC's confusion template counts from the table equals the probe's matrix (rows = truth), classes that
    were never predicted or never true included; a suite no longer evaluated leaves no table behind."""
    from radclip.evaluation.evaluate import SuiteResult, write_confusion_tables

    matrix = np.array([[5, 1, 0], [0, 0, 0], [2, 3, 4]])  # class "b" never occurs and is never predicted
    classes = ("a", "b", "c")
    out = tmp_path / "confusion"
    out.mkdir()
    (out / "old_suite.csv").write_text("actual,predicted\na,a\n")
    result = SuiteResult("2d", {}, matrix, classes, features=None)  # type: ignore[arg-type]  # unused here
    [path] = write_confusion_tables({"suite.x": result}, out)
    assert path == out / "suite.x.csv" and sorted(p.name for p in out.iterdir()) == ["suite.x.csv"]
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(table.columns) == ["actual", "predicted"] and len(table) == matrix.sum()
    recount = pd.crosstab(pd.Categorical(table["actual"], categories=classes),
                          pd.Categorical(table["predicted"], categories=classes), dropna=False)
    assert np.array_equal(recount.to_numpy(), matrix)
