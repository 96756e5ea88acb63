"""Stage ``sweep``: Optuna over adapter heads, lr and temperature on the fine-tuned slice cache."""

from __future__ import annotations

import yaml

from radclip.config import Params
from radclip.io import optuna_sweep
from radclip.io.optuna_sweep import SweepResult
from radclip.jobs.common import (
    MODEL_2D,
    best_params_path,
    log,
    model_dir,
    slice_cache_dir,
    stage_main,
    write_effective_params,
    write_metrics,
)

STAGE = "sweep"
PARAMS = ("profile", "sweep", "model.adapter", "loss", "train_adapter")

def load_best_params(params: Params) -> Params:
    """``params`` with the sweep's best values applied (what the final adapter trains with)."""
    path = best_params_path(params)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no sweep result (run `radclip sweep`, or set sweep.apply_best: false)")
    best = yaml.safe_load(path.read_text())
    return optuna_sweep.trial_params(params, best["params"])


def run(params: Params, *, progress: bool = True, n_trials: int | None = None) -> SweepResult:
    """Run (or continue) the study; ``sweep.workers`` local processes share it through its storage."""
    result = optuna_sweep.sweep(params, data_dir=slice_cache_dir(params), model_source=model_dir(params, MODEL_2D),
                                n_trials=n_trials)
    path = best_params_path(params)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"study": result.study, "best_trial": result.best_trial,
                                    "objective": optuna_sweep.OBJECTIVE, "value": result.best_value,
                                    "params": result.best_params}, sort_keys=False))
    write_metrics(params, "sweep.json", {"best_value": result.best_value, "best_trial": result.best_trial,
                                         **{f"trials_{k.lower()}": v for k, v in result.trials.items()}})
    write_effective_params(params, STAGE, PARAMS)
    log.info("sweep %s: best val loss %.4f at trial %d %s; trials %d complete, %d pruned, %d failed; "
             "dashboard: optuna-dashboard %s", result.study, result.best_value, result.best_trial, result.best_params,
             result.trials["COMPLETE"], result.trials["PRUNED"], result.trials["FAIL"], result.storage)
    return result


def main() -> None:
    stage_main(run)
