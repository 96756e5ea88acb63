"""Stage ``pretrain_adapter``: RadCLIP's slice pooling adapter on the fine-tuned encoder's slice cache (encoders
frozen). The ablation trains its own adapters (every encoder, several seeds) the same way."""

from __future__ import annotations

from radclip.config import Params
from radclip.io import mlflow_tracking as tracking
from radclip.jobs._fit_reports import write_fit_reports
from radclip.jobs.common import (
    CACHE_FINETUNED,
    ENCODER_MODELS,
    MODEL_FINAL,
    model_dir,
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
    (every ablation cell gets them too, so it compares like with like)."""
    return load_best_params(params) if params.sweep.apply_best else params


def run(params: Params, *, progress: bool = True) -> FitResult:
    params = adapter_params(params)
    # What it trains with, best params applied: reports/params/pretrain_adapter.yaml shows heads, lr and τ as used.
    effective = write_effective_params(params, STAGE, PARAMS)
    result = fit(params, "adapter", data_dir=slice_cache_dir(params, CACHE_FINETUNED), vocabulary=[],
                 model_source=model_dir(params, ENCODER_MODELS[CACHE_FINETUNED]),
                 out_dir=model_dir(params, MODEL_FINAL), tags={"encoder": CACHE_FINETUNED})
    tracking.log_artifact_to(result.mlflow_run_id, effective, "params")
    write_fit_reports(params, STAGE, result)
    return result


def main() -> None:
    stage_main(run)
