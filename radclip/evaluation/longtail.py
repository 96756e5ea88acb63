"""CXR-CML's long-tail evaluation (paper 003, Table 2/3 layout): zero-shot multi-label macro AUROC, total /
base / rare, of every arm on the long-tail suite, paired-bootstrap CIs of each arm's difference from
``control`` (and of ``t`` from ``meta``), and the pre-registered verdicts.

A class's score is its present-caption against the normal caption (global embeddings), in the captions
the arm trained on. Rare classes are the suite's classes whose share of the long-tail collection's
training images (train split; each finding of a multi-finding image counted) is below
``evaluate.rare_fraction`` — training counts, never the suite's own. Numbers are means over the arm's
seeds; a bootstrap resample draws the suite's images once and scores every seed on it, so the CI is
that of the seed-mean difference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from radclip.config import CaptionTemplate, CmlThresholds, Params
from radclip.core.metrics import bootstrap_ci, patient_folds, rare_by_frequency
from radclip.data.shards import MANIFEST_FILE, CuratedDataset
from radclip.evaluation.localisation import SuiteImages, zero_shot_logits

SUBSETS = ("total", "base", "rare")


@dataclass(frozen=True)
class LongTailSuite:
    images: np.ndarray  # (N, H, W) uint8
    conditions: list[tuple[str, ...]]
    patients: np.ndarray  # (N,) patient hashes
    region: str
    modality: str
    classes: list[str]  # the suite's conditions, sorted

    def targets(self) -> np.ndarray:
        return np.array([[int(c in value) for c in self.classes] for value in self.conditions])

    def captioned(self, template: CaptionTemplate) -> SuiteImages:
        from radclip.data.captions import make_caption

        return SuiteImages(self.images, self.conditions,
                           lambda found: make_caption(template, self.region, self.modality, tuple(found)))


def long_tail_suite(params: Params) -> LongTailSuite:
    query = f"collection == '{params.cml.suite}' and kind == '2d'"
    data = CuratedDataset(params.resolve(params.paths.curated), query=query)
    if not len(data):
        raise ValueError(f"cml.suite {params.cml.suite!r} has no curated 2D records (is it in data.collections, "
                         "with role eval?)")
    manifest = data.manifest
    conditions = [tuple(c for c in str(v).split("|") if c) for v in manifest["conditions"].fillna("")]
    classes = sorted({c for value in conditions for c in value})
    return LongTailSuite(np.stack([data.array(i) for i in range(len(data))]), conditions,
                         manifest["patient_hash"].to_numpy(), str(manifest["region"].iloc[0]),
                         str(manifest["modality"].iloc[0]), classes)


def rare_classes(params: Params, classes: Sequence[str]) -> tuple[list[str], dict[str, float]]:
    """The suite's rare classes by the long-tail collection's training counts, and each class's share."""
    import pandas as pd

    table = pd.read_parquet(Path(params.resolve(params.paths.curated)) / MANIFEST_FILE,
                            columns=["collection", "split", "conditions"])
    train = table[(table["collection"] == params.cml.collection) & (table["split"] == "train")]
    if train.empty:
        raise ValueError(f"cml.collection {params.cml.collection!r} has no records in the train split")
    counts = Counter(c for value in train["conditions"].fillna("") for c in str(value).split("|") if c)
    shares = {c: counts.get(c, 0) / len(train) for c in classes}
    return rare_by_frequency(classes, counts, len(train), params.evaluate.rare_fraction), shares


def auroc_columns(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AUROC of every column of ``scores`` (N, K) against ``targets`` (N, K) by the rank-sum (Mann–Whitney)
    identity, ties averaged as scikit-learn does; NaN for a column with one class only. Vectorised: the
    bootstrap calls it thousands of times."""
    ranks = rankdata(scores, axis=0)
    positives = targets.sum(axis=0).astype(np.float64)
    negatives = len(targets) - positives
    rank_sum = (ranks * targets).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)


def subset_macros(logits: np.ndarray, targets: np.ndarray, rare: np.ndarray) -> np.ndarray:
    """(S, 3) macro AUROC total / base / rare per seed of ``logits`` (N, S, C); ``rare`` (C,) bool."""
    n, seeds, classes = logits.shape
    auc = auroc_columns(logits.reshape(n, seeds * classes), np.tile(targets, (1, seeds))).reshape(seeds, classes)
    with np.errstate(all="ignore"):
        return np.stack([np.nanmean(auc, axis=1), np.nanmean(auc[:, ~rare], axis=1),
                         np.nanmean(auc[:, rare], axis=1)], axis=1)


def arm_logits(models: Sequence[Any], suite: LongTailSuite, template: CaptionTemplate) -> np.ndarray:
    """(N, S, C) zero-shot logits of one arm's seed models on the suite, in the arm's captions."""
    captioned = suite.captioned(template)
    return np.stack([zero_shot_logits(model, captioned, suite.classes)[0] for model in models], axis=1)


def _ci_difference(first: np.ndarray, second: np.ndarray, targets: np.ndarray, rare: np.ndarray, subset: int, *,
                   n_boot: int, level: float, seed: int) -> dict[str, float]:
    def difference(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> float:
        return float(np.mean(subset_macros(a, t, rare)[:, subset]) - np.mean(subset_macros(b, t, rare)[:, subset]))

    point = difference(first, second, targets)
    if n_boot == 0:
        return {"difference": point}
    low, high = bootstrap_ci(difference, first, second, targets, n_boot=n_boot, alpha=1 - level, seed=seed)
    return {"difference": point, "ci_low": low, "ci_high": high}


def fold_std(logits: np.ndarray, targets: np.ndarray, rare: np.ndarray, patients: np.ndarray, folds: int,
             seed: int) -> list[float]:
    """Std over ``folds`` patient-disjoint parts of the suite of the seed-mean macro AUROC (total, base, rare)."""
    parts = [test for _, _, test in patient_folds(patients, n_folds=folds, seed=seed)]
    values = np.array([subset_macros(logits[part], targets[part], rare).mean(axis=0) for part in parts])
    return [float(v) for v in np.nanstd(values, axis=0, ddof=1)]


def long_tail_table(logits: Mapping[str, np.ndarray], suite: LongTailSuite, rare_names: Sequence[str], params: Params
                    ) -> dict[str, Any]:
    """Per arm: seed-mean ± seed-std macro AUROC (total, base, rare), fold std, per-class AUROC; per arm
    but control its difference from control with a paired-bootstrap CI, and t − meta."""
    targets = suite.targets()
    rare = np.array([c in set(rare_names) for c in suite.classes])
    settings, level = params.evaluate, params.cml.thresholds.ci_level
    arms: dict[str, Any] = {}
    for arm, values in logits.items():
        macros = subset_macros(values, targets, rare)
        per_class = np.nanmean(auroc_columns(values.reshape(len(values), -1),
                                             np.tile(targets, (1, values.shape[1]))).reshape(values.shape[1], -1),
                               axis=0)
        folds = fold_std(values, targets, rare, suite.patients, settings.folds, settings.protocol_seed)
        arms[arm] = {
            **{name: float(np.mean(macros[:, i])) for i, name in enumerate(SUBSETS)},
            **{f"{name}_seed_std": float(np.std(macros[:, i], ddof=1)) if len(macros) > 1 else 0.0
               for i, name in enumerate(SUBSETS)},
            **{f"{name}_fold_std": folds[i] for i, name in enumerate(SUBSETS)},
            "per_class": {c: float(v) for c, v in zip(suite.classes, per_class)},
            "seeds": int(values.shape[1]),
        }
    comparisons: dict[str, Any] = {}
    pairs = [(arm, "control") for arm in logits if arm != "control"] + [("t", "meta")]
    for first, second in pairs:
        if first in logits and second in logits:
            comparisons[f"{first}-{second}"] = {
                name: _ci_difference(logits[first], logits[second], targets, rare, i, n_boot=settings.bootstrap,
                                     level=level, seed=settings.protocol_seed)
                for i, name in enumerate(SUBSETS)}
    return {"classes": suite.classes, "rare_classes": [c for c in suite.classes if c in set(rare_names)],
            "base_classes": [c for c in suite.classes if c not in set(rare_names)],
            "positives": {c: int(v) for c, v in zip(suite.classes, targets.sum(axis=0))},
            "images": len(targets), "arms": arms, "comparisons": comparisons}


def verdicts(table: Mapping[str, Any], nmi: Mapping[str, float], thresholds: CmlThresholds) -> dict[str, Any]:
    """Issue 13's pre-registered criteria on seed means (see ``CmlThresholds``)."""
    t_control = table["comparisons"]["t-control"]
    rare, base, total = t_control["rare"], t_control["base"], t_control["total"]
    out: dict[str, Any] = {
        "t_vs_control_rare": {"value": rare["difference"], "ci_low": rare.get("ci_low"),
                              "threshold": thresholds.rare_gain,
                              "passed": bool(rare["difference"] >= thresholds.rare_gain
                                             and rare.get("ci_low", float("nan")) > 0)},
        "t_vs_control_base": {"value": base["difference"], "threshold": -thresholds.base_margin,
                              "passed": bool(base["difference"] >= -thresholds.base_margin)},
        "t_vs_control_total": {"value": total["difference"], "threshold": thresholds.total_gain,
                               "passed": bool(total["difference"] >= thresholds.total_gain)},
        "nmi_t_vs_gauss": {"t": nmi.get("t"), "gauss": nmi.get("gauss"),
                           "passed": bool(nmi.get("t", float("nan")) >= nmi.get("gauss", float("nan")))},
    }
    t_meta = table["comparisons"].get("t-meta", {}).get("total")
    if t_meta is not None:  # reported, not a pass/fail criterion
        low, high = t_meta.get("ci_low", float("nan")), t_meta.get("ci_high", float("nan"))
        out["t_vs_meta_total"] = {"value": t_meta["difference"], "ci_low": low, "ci_high": high,
                                  "reproduced": bool(low > 0)}  # a CI above 0: the paper's gain is positive
    return out
