"""Stage ``register``: a new MLflow model version (pyfunc, alias challenger); the gate makes it champion if it wins."""

from __future__ import annotations

import json

import yaml

from radclip.config import Params
from radclip.io import mlflow_registry as registry
from radclip.jobs.common import (
    MODEL_FINAL,
    log,
    model_dir,
    stage_main,
    write_effective_params,
    write_metrics,
)
from radclip.jobs.sweep import best_params_path

STAGE = "register"
PARAMS = ("registry",)


class MissingEvaluation(FileNotFoundError):
    """register needs reports/evaluate.json."""


def run(params: Params, *, progress: bool = True) -> registry.Decision:
    report = params.resolve(params.paths.reports) / "evaluate.json"
    if not report.is_file():
        raise MissingEvaluation(f"{report}: no evaluation results (run `radclip evaluate` first)")
    evaluation = json.loads(report.read_text())
    best = best_params_path(params)
    sweep_result = (yaml.safe_load(best.read_text()) or {}) if best.exists() else {}
    extra_tags = {f"optuna.{key}": sweep_result[key] for key in ("study", "best_trial") if key in sweep_result}
    decision = registry.register(params, model_dir=model_dir(params, MODEL_FINAL), evaluation=evaluation,
                                 extra_tags=extra_tags)
    write_metrics(params, "registry.json", decision.as_dict())
    write_effective_params(params, STAGE, PARAMS)
    log.info("%s", decision.summary())
    return decision


def main() -> None:
    stage_main(run)
