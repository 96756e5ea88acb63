"""The ``evaluate`` stage: every evaluation suite through the paper's protocol, into DVC metrics and MLflow.

Per suite (an evaluation collection: 2D through the image encoder, 3D through the
slice cache and the adapter): linear probe on frozen features (5-fold, patient-level
70/10/20, accuracy and macro F1 as mean ± std), image–text matching (top-1 precision
over the suite's disease-level captions), zero-shot classification with a prompt
template ensemble, and image→text / text→image retrieval.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from radclip.config import Params
from radclip.reports import write_metrics
from radclip.evaluation.features import SuiteFeatures, image_features, volume_features
from radclip.evaluation.metrics import linear_probe, matching_precision, retrieval_metrics, zero_shot


def suite_names(params: Params) -> list[str]:
    names = [c.name for c in params.data.collections if c.role == "eval"]
    unknown = sorted(set(params.evaluate.suites) - set(names))
    if unknown:
        raise ValueError(f"evaluate.suites names collections that are not evaluation collections: {unknown}")
    return [n for n in names if not params.evaluate.suites or n in params.evaluate.suites]


def suite_features(model, params: Params, suite: str, slice_cache: Path) -> SuiteFeatures:
    """2D records through the image encoder; a suite without any is a 3D suite (slice cache + adapter)."""
    images = image_features(model, params.resolve(params.paths.curated), suite)
    if len(images.features):
        return images
    return volume_features(model, slice_cache, suite)


def evaluate_features(model, suite: SuiteFeatures, params: Params) -> dict:
    """All metrics of one suite, flat (name → number) for MLflow and dvc metrics."""
    settings = params.evaluate
    metrics: dict[str, float] = {"records": float(len(suite.features))}
    probe = linear_probe(
        suite.features, suite.labels, suite.patients,
        n_folds=settings.folds, epochs=settings.probe_epochs, lr=settings.probe_lr,
        seed=params.seed, method=settings.probe_method,
    )
    metrics.update(probe.metrics(prefix="probe_"))
    candidates = sorted(set(suite.captions))
    text = model.encode_text(candidates).float().cpu().numpy()
    candidate_index = {caption: index for index, caption in enumerate(candidates)}
    true_index = np.array([candidate_index[c] for c in suite.captions])
    metrics["matching_p1"] = matching_precision(suite.features, text, true_index)
    classes = sorted(set(suite.labels))
    class_caption = {label: suite.captions[suite.labels == label][0] for label in classes}
    prompts = [
        model.encode_text([t.format(caption=class_caption[c]) for t in settings.prompt_templates]).float().cpu().numpy()
        for c in classes
    ]
    label_index = np.array([classes.index(label) for label in suite.labels])
    metrics.update({f"zero_shot_{k}": v for k, v in zero_shot(suite.features, prompts, label_index).items()})
    positives = [np.array([i]) for i in true_index]
    retrieval = retrieval_metrics(suite.features, text, positives)
    metrics.update({k: float(v) for k, v in retrieval.items() if "queries" not in k})
    return metrics


def evaluate(params: Params, *, model_dir: Path, slice_cache: Path, suites: list[str] | None = None) -> dict[str, dict]:
    """Evaluate a saved RadCLIP on the configured suites; logs one MLflow run, returns metrics per suite."""
    from radclip import tracking
    from radclip.models import RadCLIP

    model = RadCLIP.from_pretrained(model_dir)
    model.eval()
    results: dict[str, dict] = {}
    with tracking.start_run(params, stage="evaluate", tags={"model.dir": str(model_dir)}):
        for suite in suites or suite_names(params):
            features = suite_features(model, params, suite, slice_cache)
            results[suite] = {"kind": features.kind, **evaluate_features(model, features, params)}
            tracking.log_metrics({f"{suite}.{k}": v for k, v in results[suite].items() if k != "kind"})
        tracking.log_dict(results, "evaluation.json")
    return results


def write_report(params: Params, results: dict[str, dict]) -> Path:
    """Headline metrics per suite for `dvc metrics show` (per-fold values stay in MLflow)."""
    headline = {suite: {k: v for k, v in metrics.items() if "_fold" not in k} for suite, metrics in results.items()}
    return write_metrics(params, "evaluate.json", headline)
