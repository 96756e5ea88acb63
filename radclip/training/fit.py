"""Running a fit from the driver: Ray Train or in-process, MLflow run, final model.

The driver opens the MLflow run (params, lineage tags, worker count), starts the
workers (``TorchTrainer`` with ``ScalingConfig``/``TorchConfig``/``FailureConfig``
from params, on the local loopback Ray or ``ray.address``), logs each epoch the workers
report (``ray.train.report``, relayed to the driver by :mod:`radclip.io.ray_train`) into that run
and tags it with the nodes the workers ran on, then rebuilds the model from the last checkpoint
with the best-validation weights, saves it (HF-style directory, safetensors) and
logs it as a LoggedModel of that run (the served pyfunc, :mod:`radclip.io.mlflow_pyfunc`), with the
training data as the run's input. A crash ends the run FAILED.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from radclip.config import Params
from radclip.evaluation.plots import loss_curves_figure
from radclip.io import mlflow_pyfunc, ray_train
from radclip.io import mlflow_tracking as tracking
from radclip.training.loop import (
    BEST_FILE,
    STATE_FILE,
    FitConfig,
    Stage,
    fresh_adapter,
    prepare_lrclr,
    train_params_for,
    train_worker,
)

log = logging.getLogger("radclip.training")
STAGE_NAMES = {"2d": "pretrain_2d", "adapter": "pretrain_adapter", "lrclr": "pretrain_lrclr", "cml": "finetune_cml"}


@dataclass
class FitResult:
    model_dir: str
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    seconds: float
    mlflow_run_id: str
    workers: int
    stopped_by_callback: bool = False  # on_epoch asked to stop (a pruned sweep trial)
    mlflow_model_id: str | None = None  # the LoggedModel it was logged as (none with log_model=False)


def fit(
    params: Params,
    stage: Stage,
    *,
    data_dir: Path,
    vocabulary: list[str],
    out_dir: Path,
    model_source: Path | None = None,
    fail_at: tuple[int, int] | None = None,
    fail_node: str | None = None,
    tags: Mapping[str, Any] | None = None,
    on_epoch: Callable[[dict], bool] | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    log_model: bool = True,
    epoch_lines: bool = True,
    arm: str | None = None,
    seed_offset: int = 0,
) -> FitResult:
    """Train one stage and save the best model to ``out_dir``; ``tags`` go on its MLflow run.

    ``on_epoch(metrics)`` is called on this (the driver's) side after every epoch; returning
    True stops training after that epoch (the sweep's pruner). ``parent_run_id`` nests the
    run (a sweep trial under its sweep). ``log_model=False`` logs no LoggedModel and no loss curves (sweep
    trials and the ablation's seed replicates, evaluated and discarded). ``epoch_lines`` logs one
    line per epoch (epoch, losses, pairs/s, time left at most); the sweep and the ablation, which fit many
    short runs, log one line per run instead. ``fail_at`` (epoch, step) kills one Ray worker once there, the last
    rank or the one on node ``fail_node`` (resume tests). ``arm`` and ``seed_offset``: stage cml's arm and seed.
    """
    from radclip.core.models import RadCLIP
    from radclip.core.preprocessing import Preprocessing
    from radclip.training.build import build_model

    train = train_params_for(params, stage)
    stage_name = STAGE_NAMES[stage]
    name = run_name or f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}"
    run_dir = params.resolve(params.paths.tmp) / "runs" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    workers = train.num_workers if train.engine == "ray" else 1
    started = time.perf_counter()
    stopped = False
    first_epoch_at: float | None = None  # when the first epoch ended: later epochs' pace excludes start-up

    with tracking.start_run(
        params, stage=stage_name, run_name=name, parent_run_id=parent_run_id, nested=parent_run_id is not None,
        tags={"ray.workers": workers, "engine": train.engine, **(tags or {})},
    ) as run:

        def epoch_done(metrics: dict) -> bool:
            """On the driver, after every epoch: log it, and ask ``on_epoch`` whether to stop."""
            nonlocal first_epoch_at, stopped
            tracking.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=int(metrics["epoch"]),
                                 run_id=run.info.run_id)
            if epoch_lines:
                now = time.perf_counter()
                first_epoch_at = now if first_epoch_at is None else first_epoch_at
                log.info("%s", epoch_line(stage_name + (f" {run_name}" if run_name else ""), metrics,
                                          train.epochs, now - started, now - first_epoch_at))
            if on_epoch is not None and not stopped and on_epoch(metrics):
                stopped = True
            return stopped

        config = FitConfig(
            params=params.model_dump(mode="json", by_alias=True),
            stage=stage,
            data_dir=str(data_dir),
            vocabulary=vocabulary,
            run_dir=str(run_dir),
            model_source=str(model_source) if model_source else None,
            fail_at=fail_at,
            fail_node=fail_node,
            relay=ray_train.relay_name(name) if train.engine == "ray" else None,
            driver_decides=on_epoch is not None,
            arm=arm,
            seed_offset=seed_offset,
        )
        if train.engine == "ray":
            trained = ray_train.run_trainer(params, train, train_worker, asdict(config), name=name,
                                            checkpoint_copy=run_dir / "final-checkpoint", on_report=epoch_done)
            history, checkpoint_dir = trained.history, trained.checkpoint_dir
            tracking.set_tags({"ray.worker_nodes": ",".join(trained.worker_nodes)})
        else:
            reports = train_worker(asdict(config), on_epoch=epoch_done)
            history = [metrics for metrics, _ in reports]
            checkpoint_dir = Path(reports[-1][1])
        state = json.loads((checkpoint_dir / STATE_FILE).read_text())["state"]

        if model_source:
            model = RadCLIP.from_pretrained(model_source)
        else:  # a fresh model carries the contract curation wrote beside its data, as init_model's does
            model = build_model(params, vocabulary, Preprocessing.read_if_saved(data_dir))
        if stage == "adapter":
            fresh_adapter(model, params, train.loop_seed)
        if stage == "lrclr":
            prepare_lrclr(model, params)
        model.load_state_dict(load_file(str(checkpoint_dir / BEST_FILE)), strict=False)
        shutil.rmtree(out_dir, ignore_errors=True)
        model.save_pretrained(out_dir)
        seconds = time.perf_counter() - started
        model_id = None
        if log_model and model.preprocessing is None:
            log.warning("%s: no preprocessing contract, so no LoggedModel (serving could not prepare its inputs); "
                        "the weights are saved there all the same", out_dir)
        elif log_model:
            # Logged once, here, in the run that trained it: evaluation links its metrics to this LoggedModel
            # and `register` registers it, so the registered version's source is this run.
            model_id = mlflow_pyfunc.log_model(out_dir, name=f"radclip-{stage}",
                                               tags={tracking.TAG_STAGE: stage_name}).model_id
        tracking.log_metrics(
            {"best_val_loss": state["best_val"], "best_epoch": state["best_epoch"], "seconds": seconds},
            model_id=model_id,
        )
        tracking.log_dataset_input(params, data_dir, context="training", model_id=model_id)
        if log_model:
            curves = loss_curves_figure(history, run_dir / f"loss_{stage}.png",
                                        title=f"{stage_name}: loss per epoch")
            tracking.log_artifact(curves, "plots")
        result = FitResult(
            model_dir=str(out_dir),
            history=history,
            best_epoch=state["best_epoch"],
            best_val_loss=state["best_val"],
            stopped_early=bool(state["stopped_early"]),
            seconds=seconds,
            mlflow_run_id=run.info.run_id,
            workers=workers,
            stopped_by_callback=stopped,
            mlflow_model_id=model_id,
        )
    # The run finished: its scratch and Ray Train checkpoints are no longer needed (names are unique,
    # so nothing would ever resume from them).
    shutil.rmtree(run_dir, ignore_errors=True)
    if train.engine == "ray":
        ray_train.delete_run_storage(ray_train.storage_location(params), name)
    return result


def epoch_line(name: str, metrics: Mapping[str, float], max_epochs: int, elapsed: float,
               since_first: float = 0.0) -> str:
    """``pretrain_2d epoch 3/30: train 2.4100, val 2.3300, 212 pairs/s, ≤ 4m10s left`` (early stopping may end
    it sooner: the time left is for every remaining epoch). The pace is that of the epochs after the first
    (``since_first`` seconds since it ended), which excludes start-up; after the first, ``elapsed`` is all there is."""
    done = int(metrics["epoch"]) + 1
    pace = since_first / (done - 1) if done > 1 and since_first > 0 else elapsed / done
    left = pace * max(0, max_epochs - done)
    minutes, seconds = divmod(int(round(left)), 60)
    extra = f", local {metrics['val_local_loss']:.4f}" if "val_local_loss" in metrics else ""
    return (f"{name} epoch {done}/{max_epochs}: train {metrics['train_loss']:.4f}, val {metrics['val_loss']:.4f}"
            f"{extra}, {metrics['pairs_per_second']:.0f} pairs/s, ≤ {minutes}m{seconds:02d}s left")
