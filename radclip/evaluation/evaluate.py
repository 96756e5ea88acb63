"""Every evaluation suite through the paper's protocol (the ``evaluate`` and ``ablate`` jobs run it).

Per suite (an evaluation collection: 2D through the image encoder, 3D through the
slice cache and the adapter): linear probe on frozen features (5-fold, patient-level
70/10/20, accuracy and macro F1 as mean ± std), image–text matching (top-1 precision
over the suite's disease-level captions), zero-shot classification with a prompt
template ensemble, image→text / text→image retrieval, multi-label AUROC with prompt
pairs, and bootstrap intervals for the metrics that have no folds. Figures: probe
confusion matrices, adapter attention over slices with the lesion slices marked, and
the paper's Fig. 5 modality-prompt scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from radclip.config import Params
from radclip.core.metrics import (
    bootstrap_ci,
    cosine_similarity,
    detection_table,
    ensemble_class_embeddings,
    lesion_attention,
    linear_probe,
    multilabel_auroc,
    multilabel_logits,
    rare_by_frequency,
    retrieval_metrics,
    top1_precision,
    validation_thresholds,
    zero_shot,
)
from radclip.data.captions import make_caption
from radclip.data.shards import MANIFEST_FILE
from radclip.data.slice_cache import IN_PROCESS, BatchEngine
from radclip.evaluation.features import SuiteFeatures, image_features, volume_features

FIGURES_DIR = "figures"  # under paths.reports
CONFUSION_DIR = "confusion"  # under paths.reports: the confusion matrices as tables, for `dvc plots`


class LeakageError(RuntimeError):
    """Evaluation records that also occur in training data."""


@dataclass
class SuiteResult:
    kind: str
    metrics: dict[str, float]
    confusion: np.ndarray
    classes: tuple[str, ...]
    features: SuiteFeatures = field(repr=False)


def suite_names(params: Params) -> list[str]:
    names = [c.name for c in params.data.collections if c.role == "eval"]
    unknown = sorted(set(params.evaluate.suites) - set(names))
    if unknown:
        raise ValueError(f"evaluate.suites names collections that are not evaluation collections: {unknown}")
    return [n for n in names if not params.evaluate.suites or n in params.evaluate.suites]


def check_no_leakage(curated_dir: Path) -> None:
    """Evaluation records must share neither a patient nor pixel content with training records
    (curation splits by patient and drops duplicate content; this checks, not assumes, it)."""
    manifest = pd.read_parquet(Path(curated_dir) / MANIFEST_FILE,
                               columns=["role", "collection", "source_path", "patient_hash", "content_hash"])
    evaluation, training = manifest[manifest["role"] == "eval"], manifest[manifest["role"] != "eval"]
    for column, what in (("patient_hash", "patient"), ("content_hash", "image content")):
        shared = evaluation[evaluation[column].isin(set(training[column]))]
        if len(shared):
            examples = ", ".join(f"{r.collection}/{r.source_path}" for r in shared.head(5).itertuples())
            raise LeakageError(f"{len(shared)} evaluation record(s) share a {what} with training data: {examples}")


def suite_features(
    model, params: Params, suite: str, slice_cache: Path | None, *, pooling: str = "adapter",
    engine: BatchEngine = IN_PROCESS,
) -> SuiteFeatures:
    """2D records through the image encoder (run by ``engine``); a suite without any is a 3D suite (slice cache,
    pooled by the adapter or, for the ablation, averaged)."""
    images = image_features(model, params.resolve(params.paths.curated), suite, engine=engine)
    if len(images.features):
        return images
    if slice_cache is None:  # the caller found no 3D records to build a cache for
        raise ValueError(f"suite {suite!r} has no 2D records and no slice cache was given for 3D ones")
    return volume_features(model, slice_cache, suite, pooling=pooling)


def _interval(params: Params, name: str, value: float, metric_fn, *arrays) -> dict[str, float]:
    if params.evaluate.bootstrap == 0:
        return {name: value}
    low, high = bootstrap_ci(metric_fn, *arrays, n_boot=params.evaluate.bootstrap, seed=params.evaluate.protocol_seed)
    return {name: value, f"{name}_ci_low": low, f"{name}_ci_high": high}


def training_condition_counts(curated_dir: Path) -> tuple[dict[tuple[str, str, str], int], int]:
    """(region, modality, condition) -> training images showing it, and the number of training
    images: the curated manifest's train split of the role-train collections, each condition of a
    multi-finding caption counted (normal images count in the total only)."""
    table = pd.read_parquet(Path(curated_dir) / MANIFEST_FILE, columns=["role", "split", "region", "modality",
                                                                         "conditions"])
    train = table[(table["role"] == "train") & (table["split"] == "train")]
    counts: dict[tuple[str, str, str], int] = {}
    for region, modality, value in zip(train["region"], train["modality"], train["conditions"].fillna("")):
        for condition in {c for c in str(value).split("|") if c}:
            key = (str(region), str(modality), condition)
            counts[key] = counts.get(key, 0) + 1
    return counts, len(train)


def _rare_split(params: Params, suite: SuiteFeatures, conditions: list[str]) -> tuple[dict, dict[str, float]]:
    """``multilabel_auroc``'s rare-class argument under ``evaluate.rare_by``, and per-condition metrics
    that document it (the training share of each condition)."""
    settings = params.evaluate
    if settings.rare_by == "evaluation":
        return {"rare_threshold": settings.rare_threshold}, {}
    counts, total = training_condition_counts(params.resolve(params.paths.curated))
    if total == 0:
        raise ValueError("evaluate.rare_by: training needs training records (train split) in the curated manifest; "
                         "set evaluate.rare_by: evaluation to split by the suite's own positives")
    region, modality = suite.region_modality
    train = {c: counts.get((region, modality, c), 0) for c in conditions}
    rare = rare_by_frequency(conditions, train, total, settings.rare_fraction)
    return {"rare_classes": rare}, {f"multilabel_train_fraction.{c}": n / total for c, n in train.items()}


def multilabel_metrics(model, suite: SuiteFeatures, params: Params,
                       validation: SuiteFeatures | None = None) -> dict[str, float]:
    """Per-condition AUROC of "<caption with the condition>" vs the normal caption, macro over all / base / rare.

    ``multilabel_base_classes`` / ``multilabel_rare_classes`` count the suite's conditions of each
    kind (``evaluate.rare_by``); an average over no class with an AUROC is left out, never NaN.
    With ``validation`` (the training collections' validation split of the suite's region and
    modality), also LRCLR's Table 1: per condition the specificity, precision, recall and F1 at the
    logit threshold with the best F1 on ``validation`` (0, P(present) = 0.5, for a condition it does
    not show), and the AUC (``detection_<metric>`` means, ``detection.<condition>.<metric>``).
    """
    conditions = sorted({c for value in suite.conditions for c in value.split("|") if c})
    if not conditions:
        return {}
    region, modality = suite.region_modality
    collection = next((c for c in params.data.collections if c.name == suite.suite), None)
    caption = (collection.caption if collection is not None else None) or params.data.caption  # as curation captions it
    positive = (
        model.encode_text([make_caption(caption, region, modality, (c,)) for c in conditions]).float().cpu().numpy()
    )
    normal = make_caption(caption, region, modality, ())
    negative = np.repeat(model.encode_text([normal]).float().cpu().numpy(), len(conditions), axis=0)
    targets = np.array([[int(c in value.split("|")) for c in conditions] for value in suite.conditions])
    scale = float(model.logit_scale_exp().detach())
    rare_argument, documented = _rare_split(params, suite, conditions)
    result = multilabel_auroc(suite.features, positive, negative, targets, conditions, logit_scale=scale,
                              **rare_argument)
    out = {"multilabel_base_classes": float(len(result["base_classes"])),
           "multilabel_rare_classes": float(len(result["rare_classes"]))}
    for key, name in (("macro", "multilabel_auroc_macro"), ("macro_base", "multilabel_auroc_base"),
                      ("macro_rare", "multilabel_auroc_rare")):
        if not math.isnan(result[key]):
            out[name] = result[key]
    out.update({f"multilabel_auroc.{name}": value for name, value in result["per_class"].items()})
    out.update(documented)
    if validation is not None and len(validation.features):
        logits = multilabel_logits(suite.features, positive, negative, logit_scale=scale)
        val_logits = multilabel_logits(validation.features, positive, negative, logit_scale=scale)
        val_targets = np.array([[int(c in value.split("|")) for c in conditions] for value in validation.conditions])
        table = detection_table(logits, targets, validation_thresholds(val_logits, val_targets), conditions)
        out.update({f"detection_{metric}": value for metric, value in table["mean"].items() if not math.isnan(value)})
        out.update({f"detection.{name}.{metric}": value for name, row in table["per_class"].items()
                    for metric, value in row.items() if not math.isnan(value)})
    return out


def evaluate_features(model, suite: SuiteFeatures, params: Params,
                      validation: SuiteFeatures | None = None) -> SuiteResult:
    """All metrics of one suite, flat (name → number) for MLflow and dvc metrics; ``validation`` adds
    the thresholded detection metrics (see :func:`multilabel_metrics`)."""
    settings = params.evaluate
    metrics: dict[str, float] = {"records": float(len(suite.features))}
    probe = linear_probe(
        suite.features, suite.labels, suite.patients,
        n_folds=settings.folds, epochs=settings.probe_epochs, lr=settings.probe_lr,
        seed=params.evaluate.protocol_seed, method=settings.probe_method,
    )
    metrics.update(probe.metrics(prefix="probe_"))
    candidates = sorted(set(suite.captions))
    text = model.encode_text(candidates).float().cpu().numpy()
    candidate_index = {caption: index for index, caption in enumerate(candidates)}
    true_index = np.array([candidate_index[c] for c in suite.captions])
    similarity = cosine_similarity(suite.features, text)
    metrics.update(_interval(params, "matching_p1", top1_precision(similarity, true_index), top1_precision,
                             similarity, true_index))
    classes = sorted(set(suite.labels))
    class_caption = {label: suite.captions[suite.labels == label][0] for label in classes}
    prompts = [
        model.encode_text([t.format(caption=class_caption[c]) for t in settings.prompt_templates]).float().cpu().numpy()
        for c in classes
    ]
    label_index = np.array([classes.index(label) for label in suite.labels])
    zero = zero_shot(suite.features, prompts, label_index)
    class_similarity = cosine_similarity(suite.features, ensemble_class_embeddings(prompts))
    metrics.update({f"zero_shot_{k}": v for k, v in zero.items() if k != "top1"})
    metrics.update(_interval(params, "zero_shot_top1", zero["top1"], top1_precision, class_similarity, label_index))
    if len(settings.prompt_templates) > 1:  # sensitivity to wording: each template alone (index into the list)
        for index in range(len(settings.prompt_templates)):
            template_prompts = [class_prompts[index:index + 1] for class_prompts in prompts]
            alone = zero_shot(suite.features, template_prompts, label_index)
            metrics[f"zero_shot_top1_template{index}"] = alone["top1"]
    positives = [np.array([i]) for i in true_index]
    retrieval = retrieval_metrics(suite.features, text, positives)
    metrics.update({k: float(v) for k, v in retrieval.items() if "queries" not in k})
    metrics.update(multilabel_metrics(model, suite, params, validation))
    metrics.update(_lesion_attention(params, suite))
    return SuiteResult(suite.kind, metrics, probe.confusion, tuple(probe.class_names), suite)


def prompt_scores(model, suites: list[SuiteFeatures], prompts: list[str]) -> dict[str, dict[str, float]]:
    """Paper Fig. 5: mean softmax probability of each modality-level prompt (and distractor) per suite."""
    text = model.encode_text(prompts).float().cpu().numpy()
    scale = float(model.logit_scale_exp().detach())
    scores: dict[str, dict[str, float]] = {}
    for suite in suites:
        logits = scale * cosine_similarity(suite.features, text)
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        region, modality = suite.region_modality
        group = f"{region} {modality} ({'3D' if suite.kind == '3d' else '2D'})"
        scores[group] = {prompt: float(p) for prompt, p in zip(prompts, probabilities.mean(axis=0))}
    return scores


def lesion_truth(params: Params) -> dict[tuple[str, str], list[int]]:
    """Phantom ground truth (suite folder, path) → finding slices; empty for real data."""
    from radclip.data.phantoms import LESION_TRUTH

    path = params.resolve(params.paths.raw) / LESION_TRUTH
    if not path.exists():
        return {}
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return {(r.suite, r.path): [int(s) for s in r.slices.split("|") if s] for r in table.itertuples()}


def _lesion_volumes(params: Params, suite: SuiteFeatures) -> list[tuple[int, list[int]]]:
    """Volumes of a 3D suite whose finding slices the phantoms recorded: (row, finding slices in
    curated slice indices). Empty for 2D suites and for real data (no truth file)."""
    if suite.kind != "3d" or suite.attention is None:
        return []
    assert suite.slice_counts is not None  # volume_features sets it on every 3D suite
    truth = lesion_truth(params)
    collection_paths = {c.name: c.path for c in params.data.collections}
    suite_folder = Path(collection_paths.get(suite.suite, "")).name
    raw_count = max(params.phantoms.volume_shape[0], 1)
    volumes = []
    for k in np.flatnonzero(suite.labels != "Normal"):
        raw_slices = truth.get((suite_folder, suite.source_paths[k].split("#")[0]))
        if not raw_slices:
            continue
        valid = int(suite.slice_counts[k])
        # curation resamples slices: raw slice i covers curated slices around (i + 0.5) * valid / raw
        volumes.append((int(k), sorted({min(valid - 1, int((i + 0.5) * valid / raw_count)) for i in raw_slices})))
    return volumes


def _lesion_attention(params: Params, suite: SuiteFeatures) -> dict[str, float]:
    """Attention mass and AUROC on the recorded finding slices (phantom suites only)."""
    volumes = _lesion_volumes(params, suite)
    if not volumes:
        return {}
    assert suite.attention is not None and suite.slice_counts is not None  # else no volumes above
    weights = [suite.attention[k, : int(suite.slice_counts[k])] for k, _ in volumes]
    return lesion_attention(weights, [slices for _, slices in volumes])


def _attention_examples(params: Params, suite: SuiteFeatures):
    """A few volumes with a finding: (weights over valid slices, lesion slices in curated indices, caption)."""
    volumes = _lesion_volumes(params, suite)[: params.evaluate.attention_volumes]
    if not volumes:
        return []
    assert suite.attention is not None and suite.slice_counts is not None  # else no volumes above
    return [
        (suite.attention[k, : int(suite.slice_counts[k])], slices, str(suite.captions[k]))
        for k, slices in volumes
    ]


def write_confusion_tables(results: dict[str, SuiteResult], out_dir: Path) -> list[Path]:
    """Per suite, ``<suite>.csv`` with one ``actual,predicted`` row per test-fold prediction of the linear probe:
    what DVC's ``confusion`` plot template counts (``dvc plots diff`` compares them across commits). The rows
    come from the probe's confusion counts, so the table and the PNG show the same matrix."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.csv"):  # a suite no longer evaluated leaves no table behind
        stale.unlink()
    written = []
    for name, result in results.items():
        counts = np.asarray(result.confusion, dtype=np.int64)
        actual, predicted = np.nonzero(counts)
        repeats = counts[actual, predicted]
        table = pd.DataFrame({"actual": np.repeat(np.asarray(result.classes, dtype=object)[actual], repeats),
                              "predicted": np.repeat(np.asarray(result.classes, dtype=object)[predicted], repeats)})
        path = out_dir / f"{name}.csv"
        table.to_csv(path, index=False)
        written.append(path)
    return written


def write_figures(params: Params, results: dict[str, SuiteResult], model, out_dir: Path) -> list[Path]:
    """Confusion matrices, slice attention with lesion slices marked, and the Fig. 5 prompt scores."""
    from radclip.evaluation.plots import (
        confusion_matrix_figure,
        prompt_scores_figure,
        slice_attention_figure,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, result in results.items():
        written.append(confusion_matrix_figure(result.confusion, result.classes, out_dir / f"confusion_{name}.png",
                                               title=f"{name}: linear probe (test folds)"))
        examples = _attention_examples(params, result.features)
        if examples:
            weights, lesions, labels = zip(*examples)
            written.append(slice_attention_figure(weights, lesions, labels, out_dir / f"attention_{name}.png",
                                                  title=f"{name}: adapter attention over slices"))
    if params.evaluate.modality_prompts:
        scores = prompt_scores(model, [r.features for r in results.values()], params.evaluate.modality_prompts)
        written.append(prompt_scores_figure(scores, out_dir / "modality_prompts.png",
                                            title="Modality prompts and distractors (mean softmax probability)"))
    return written
