"""The metrics and loss-curve table a training job writes (shared by pretrain_2d and pretrain_adapter)."""

from __future__ import annotations

from dataclasses import asdict

from radclip.config import Params
from radclip.jobs.common import log, write_history, write_metrics
from radclip.training.fit import FitResult


def write_fit_reports(params: Params, report: str, result: FitResult) -> None:
    summary = {k: v for k, v in asdict(result).items() if k not in ("history", "model_dir")}
    summary["epochs_run"] = len(result.history)
    metrics_file = write_metrics(params, f"{report}.json", summary)
    write_history(metrics_file.with_name(f"{report}_history.csv"), result.history)
    log.info("%s: best val loss %.4f at epoch %d (%d epochs, %d worker(s), %.0fs); model in %s; MLflow run %s",
             report, result.best_val_loss, result.best_epoch, len(result.history), result.workers, result.seconds,
             result.model_dir, result.mlflow_run_id)
