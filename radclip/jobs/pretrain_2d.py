"""Stage ``pretrain_2d``: fine-tune the 2D image encoder (text tower frozen) with Ray Train; logs to MLflow."""

from __future__ import annotations

from radclip.config import Params
from radclip.io import mlflow_tracking as tracking
from radclip.jobs import init_model
from radclip.jobs._fit_reports import write_fit_reports
from radclip.jobs.common import (
    MODEL_2D,
    MODEL_INIT,
    model_dir,
    stage_main,
    vocabulary,
    write_effective_params,
)
from radclip.training.fit import FitResult, fit

STAGE = "pretrain_2d"
PARAMS = ("profile", "loss", "train_2d")


def run(params: Params, *, progress: bool = True, fail_at: tuple[int, int] | None = None) -> FitResult:
    start = model_dir(params, MODEL_INIT)
    if not start.exists():  # outside DVC (e.g. `radclip pretrain-2d` alone): save the starting weights first
        init_model.run(params)
    effective = write_effective_params(params, STAGE, PARAMS)
    result = fit(params, "2d", data_dir=params.resolve(params.paths.curated), vocabulary=vocabulary(params),
                 model_source=start, out_dir=model_dir(params, MODEL_2D), fail_at=fail_at)
    tracking.log_artifact_to(result.mlflow_run_id, effective, "params")
    write_fit_reports(params, STAGE, result)
    return result


def main() -> None:
    stage_main(run)
