"""Stage ``pretrain_lrclr``: LRCLR fine-tuning (paper 002) in two arms under one MLflow parent run.

Both arms start from the fine-tuned 2D encoder (``pretrain_2d``'s model) and train with the same
epochs, data order and seeds (``lrclr.train``); they differ only in λ: ``lrclr`` optimises
L_global + λ·L_local with the cross-modal transformer, ``control`` L_global alone (λ = 0). So a
difference between them is LRCLR's, not extra training's. Each arm keeps its best epoch by the loss it
optimises on the validation split (control: the global InfoNCE; lrclr: global + λ·local).
"""

from __future__ import annotations

import time
from dataclasses import asdict

from radclip.config import Params
from radclip.io import mlflow_tracking as tracking
from radclip.io import ray_train
from radclip.jobs.common import (
    MODEL_2D,
    MODEL_LRCLR,
    MODEL_LRCLR_CONTROL,
    log,
    model_dir,
    stage_main,
    vocabulary,
    write_effective_params,
    write_history,
    write_metrics,
)
from radclip.training.fit import FitResult, fit

STAGE = "pretrain_lrclr"
# what training reads (lrclr's suites and thresholds are localise's)
PARAMS = ("profile", "loss", "lrclr.local_weight", "lrclr.cross_modal", "lrclr.init_seed", "lrclr.train")
ARMS = {"lrclr": MODEL_LRCLR, "control": MODEL_LRCLR_CONTROL}
HISTORY_COLUMNS = ["arm", "epoch", "train_loss", "val_loss", "train_local_loss", "val_local_loss", "lr",
                   "temperature", "pairs_per_second"]


def arm_params(params: Params, arm: str) -> Params:
    """The params one arm trains with: ``control`` sets λ = 0, nothing else differs."""
    if arm not in ARMS:
        raise ValueError(f"unknown LRCLR arm {arm!r}: expected one of {sorted(ARMS)}")
    return params if arm == "lrclr" else params.with_values({"lrclr.local_weight": 0.0})


def run(params: Params, *, progress: bool = True) -> dict[str, FitResult]:
    start = model_dir(params, MODEL_2D)
    if not start.exists():
        raise FileNotFoundError(f"{start}: no fine-tuned 2D encoder to start from (run `dvc repro pretrain_2d`)")
    effective = write_effective_params(params, STAGE, PARAMS)
    captions = vocabulary(params)
    results: dict[str, FitResult] = {}
    name = f"{STAGE}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}"
    with (tracking.start_run(params, stage=STAGE, run_name=name, tags={"lrclr.arms": ",".join(ARMS)}) as parent,
          ray_train.trainer_session(params, params.lrclr.train)):
        tracking.log_artifact(effective, "params")
        for arm, model_name in ARMS.items():
            used = arm_params(params, arm)
            results[arm] = fit(used, "lrclr", data_dir=params.resolve(params.paths.curated), vocabulary=captions,
                               model_source=start, out_dir=model_dir(params, model_name),
                               parent_run_id=parent.info.run_id, run_name=f"{name}-{arm}",
                               tags={"lrclr.arm": arm, "lrclr.local_weight": used.lrclr.local_weight})
            log.info("%s %s: best val loss %.4f at epoch %d (%d epochs, %.0fs); model in %s", STAGE, arm,
                     results[arm].best_val_loss, results[arm].best_epoch, len(results[arm].history),
                     results[arm].seconds, results[arm].model_dir)
        summary = _summary(params, results)
        tracking.log_metrics({f"{arm}.{key}": value for arm, values in summary["arms"].items()
                              for key, value in values.items() if isinstance(value, (int, float))})
        summary["mlflow_run_id"] = parent.info.run_id
    path = write_metrics(params, f"{STAGE}.json", summary)
    write_history(path.with_name(f"{STAGE}_history.csv"),
                  [{"arm": arm, **row} for arm, result in results.items() for row in result.history], HISTORY_COLUMNS)
    return results


def _summary(params: Params, results: dict[str, FitResult]) -> dict:
    arms = {}
    for arm, result in results.items():
        values = {k: v for k, v in asdict(result).items() if k not in ("history", "model_dir")}
        values["epochs_run"] = len(result.history)
        final = result.history[-1]
        values.update({key: final[key] for key in ("train_local_loss", "val_local_loss") if key in final})
        # throughput as the workers measured it (training steps only; bench/lrclr.py times both side by side)
        values["pairs_per_second"] = sum(h["pairs_per_second"] for h in result.history) / len(result.history)
        arms[arm] = values
    return {"local_weight": params.lrclr.local_weight, "arms": arms}


def main() -> None:
    stage_main(run)
