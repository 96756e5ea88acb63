"""Stage ``pretrain_adapter``: the slice pooling adapter on one encoder's slice cache (encoders frozen)."""

from __future__ import annotations

from radclip.config import Params
from radclip.io import mlflow_tracking as tracking
from radclip.jobs._fit_reports import write_fit_reports
from radclip.jobs.common import (
    ADAPTED_MODELS,
    CACHE_FINETUNED,
    ENCODER_MODELS,
    model_dir,
    report_name,
    slice_cache_dir,
    stage_main,
    write_effective_params,
)
from radclip.jobs.sweep import load_best_params
from radclip.training.fit import FitResult, fit

STAGE = "pretrain_adapter"
PARAMS = ("profile", "model.adapter", "loss", "train_adapter", "sweep.apply_best")


def adapter_params(params: Params) -> Params:
    """The adapter's training params: the sweep's best heads / lr / temperature when ``sweep.apply_best``
    (both encoders get them, so the ablation compares like with like)."""
    return load_best_params(params) if params.sweep.apply_best else params


def run(params: Params, *, encoder: str = CACHE_FINETUNED, progress: bool = True) -> FitResult:
    params = adapter_params(params)
    report = report_name(STAGE, encoder)
    # What it trains with, best params applied: reports/params/<report>.yaml shows heads, lr and τ as used.
    effective = write_effective_params(params, report, PARAMS, {"encoder": encoder})
    result = fit(params, "adapter", data_dir=slice_cache_dir(params, encoder), vocabulary=[],
                 model_source=model_dir(params, ENCODER_MODELS[encoder]),
                 out_dir=model_dir(params, ADAPTED_MODELS[encoder]), tags={"encoder": encoder})
    tracking.log_artifact_to(result.mlflow_run_id, effective, "params")
    write_fit_reports(params, report, result)
    return result


def main() -> None:
    stage_main(run, encoder_option=True)
