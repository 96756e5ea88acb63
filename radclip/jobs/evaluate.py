"""Stage ``evaluate``: every evaluation suite through the paper's protocol, into DVC metrics and MLflow.

``run(params)`` is the pipeline's stage (its final model, all suites, figures and
``reports/evaluate.json``); ``run(params, model=X, suites=[...])`` scores any saved
model, 3D suites through slices encoded by X's own 2D encoder (see
:func:`radclip.jobs.embed_slices.cache_for`), and writes no pipeline report. Either way the metrics are
linked to the LoggedModel the weights were logged as (found by their digest), and the curated dataset is
the run's input; the pipeline's evaluation also tags that model with its run id (what ``register`` reads).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from radclip.config import Params
from radclip.core.models.radclip import RadCLIP
from radclip.data.shards import MANIFEST_FILE
from radclip.data.slice_cache import BatchEngine
from radclip.evaluation.evaluate import (
    CONFUSION_DIR,
    FIGURES_DIR,
    SuiteResult,
    check_no_leakage,
    evaluate_features,
    suite_features,
    suite_names,
    write_confusion_tables,
    write_figures,
)
from radclip.evaluation.features import SuiteFeatures, validation_features
from radclip.io import mlflow_tracking as tracking
from radclip.jobs import embed_slices
from radclip.jobs._inference import inference_precision, load_model
from radclip.jobs.common import (
    MODEL_FINAL,
    log,
    model_dir,
    stage_main,
    write_effective_params,
    write_metrics,
)
from radclip.jobs.embed_slices import batch_engine

STAGE = "evaluate"
PARAMS = ("evaluate", "inference", "embed", "data.caption", "data.collections", "phantoms.volume_shape")


def headline(metrics: dict) -> dict:
    """What `dvc metrics show` carries per suite (per-fold and per-class values stay in MLflow)."""
    return {k: v for k, v in metrics.items() if "_fold" not in k and "." not in k}


def run(
    params: Params, *, model: Path | None = None, suites: list[str] | None = None, progress: bool = True
) -> dict[str, dict]:
    """Evaluate a saved RadCLIP (default: the pipeline's final model) on the configured suites; one MLflow run."""
    pipeline = model is None and not suites
    location = model or model_dir(params, MODEL_FINAL)
    check_no_leakage(params.resolve(params.paths.curated))
    loaded = load_model(params, location)
    names = suites or suite_names(params)
    with batch_engine(params) as engine:  # embed.engine: 2D features (and a missing slice cache) on Ray Data
        cache = embed_slices.cache_for(params, loaded, progress=progress) if _has_volumes(params, names) else None
        flat = _evaluate(params, loaded, location, names, cache, engine, pipeline)
    for name, metrics in flat.items():
        log.info("%s (%s): probe acc %.3f ± %.3f, F1 %.3f ± %.3f; matching P@1 %.3f; zero-shot top-1 %.3f", name,
                 metrics["kind"], metrics["probe_accuracy_mean"], metrics["probe_accuracy_std"],
                 metrics["probe_macro_f1_mean"], metrics["probe_macro_f1_std"], metrics["matching_p1"],
                 metrics["zero_shot_top1"])
    return flat


def _evaluate(params: Params, loaded: RadCLIP, location: Path, names: list[str], cache: Path | None,
              engine: BatchEngine, pipeline: bool) -> dict[str, dict]:
    """The suites scored in one MLflow run; the pipeline's evaluation also writes its reports."""
    results: dict[str, SuiteResult] = {}
    # The LoggedModel these weights were logged as by the run that trained them: the metrics are linked to it.
    logged = tracking.find_logged_model(params, location)
    model_id = logged.model_id if logged else None
    if logged is None:
        log.warning("%s: logged as no LoggedModel in this MLflow store; the evaluation run holds the metrics, "
                    "no model links them", location)
    run_tags = {"model.dir": str(location), **({"model.id": model_id} if model_id else {})}
    with tracking.start_run(params, stage=STAGE, tags=run_tags) as run, inference_precision(params):
        tracking.log_dataset_input(params, params.paths.curated, context="evaluation", model_id=model_id)
        validation: dict[tuple[str, str, str], SuiteFeatures] = {}  # per kind, region, modality
        for suite in names:
            features = suite_features(loaded, params, suite, cache, engine=engine)
            key = (features.kind, *features.region_modality)
            if key not in validation:
                validation[key] = validation_features(loaded, params.resolve(params.paths.curated), cache, *key,
                                                      engine=engine)
            results[suite] = evaluate_features(loaded, features, params, validation[key])
            tracking.log_metrics({f"{suite}.{k}": v for k, v in results[suite].metrics.items()}, model_id=model_id)
        flat = {suite: {"kind": r.kind, **r.metrics} for suite, r in results.items()}
        tracking.log_dict(flat, "evaluation.json")
        if pipeline:
            reports = params.resolve(params.paths.reports)
            for path in write_figures(params, results, loaded, reports / FIGURES_DIR):
                tracking.log_artifact(path, "figures")
            for path in write_confusion_tables(results, reports / CONFUSION_DIR):
                tracking.log_artifact(path, CONFUSION_DIR)
            write_metrics(params, "evaluate.json", {suite: headline(metrics) for suite, metrics in flat.items()})
            tracking.log_artifact(write_effective_params(params, STAGE, PARAMS), "params")
            if model_id:  # what `register` gates this model on: the pipeline's evaluation, not a partial one
                tracking.set_logged_model_tags(model_id, {tracking.TAG_EVALUATION_RUN: run.info.run_id})
    return flat


def _has_volumes(params: Params, suites: list[str]) -> bool:
    """Whether any suite has 3D records (those need a slice cache of the model's encoder)."""
    manifest = pd.read_parquet(
        params.resolve(params.paths.curated) / MANIFEST_FILE, columns=["collection", "kind"]
    )
    return bool(((manifest["kind"] == "3d") & manifest["collection"].isin(suites)).any())


def main() -> None:
    stage_main(run)
