"""Optuna sweep over the adapter's head count, the learning rate and the temperature.

Trials train the slice pooling adapter on the slice-embedding cache (seconds each). The
Optuna trial always lives in this (the driver's) process: the training loop reports every
epoch back here, ``trial.report`` / ``trial.should_prune`` decide, and a pruned trial's
workers stop after that epoch.

Storage: a journal file under ``paths.sweeps`` by default (crash-safe, shared by
several processes on one machine), an RDB URL from ``sweep.storage`` for workers on
several machines (PostgreSQL, MySQL). A re-run loads the study (``load_if_exists``) and
runs only the trials still missing, so no finished trial is lost or repeated. A trial
whose process died ends FAIL and is retried with its params (Optuna's
``RetryHeartbeatStaleTrialCallback``, up to ``sweep.max_retries``): on RDB storage when its
heartbeat stops (any worker's next trial fails it), on either storage when a worker finds
it RUNNING with its process on this machine gone. A worker that reaches ``n_trials`` waits for the trials
other workers still run and runs the retries of those that died, so a study ends with no trial RUNNING.
The study's name digests everything its trials depend on, radclip's own source included: a re-run
after any change (``dvc repro -f`` after a code edit) starts a fresh study rather than reusing trials
that other code trained.

Every trial is an MLflow child run under one sweep run per study, however many local
processes fill it (``sweep.workers``: the first opens the run, the others nest their trials
under it); the trial records its run id as the user attribute ``mlflow_run_id`` and the study
names its objective (``set_metric_names``), so the dashboard and MLflow point at each other.
A trial logs no model (its weights are discarded; the best params retrain). A trial that
raises is recorded FAIL and the sweep goes on, up to ``sweep.max_consecutive_failures``
failures in a row. The sweep run logs the best params, the
optimisation history and the parameter importances. The ``sweep`` job
(:mod:`radclip.jobs.sweep`) writes the best params for the final training stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import optuna
import optuna.storages.journal
import psutil
from optuna.trial import TrialState

from radclip.config import Params
from radclip.io import mlflow_tracking as tracking
from radclip.training.fit import fit

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger("radclip.sweep")

JOURNAL_FILE = "optuna.journal"
OBJECTIVE = "val_loss"  # validation InfoNCE of the trial's best epoch (minimised); the test split is never read
MAX_HEADS = 16
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the radclip package whose code the trials run
WORKER_ATTR = "worker"  # "<host>:<pid>" of the process running a trial
RUN_ATTR = "mlflow_run_id"  # the trial's MLflow run
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class SweepResult:
    study: str
    storage: str
    best_value: float
    best_params: dict
    best_trial: int
    trials: dict[str, int]  # state name → count
    mlflow_run_id: str


# --------------------------------------------------------------------------- the study


def head_choices(params: Params) -> list[int]:
    """Head counts to try: ``sweep.space.heads`` or every divisor of the embedding width up to 16."""
    width = params.model.projection_dim
    choices = params.sweep.space.heads or [h for h in range(1, MAX_HEADS + 1) if width % h == 0]
    wrong = [h for h in choices if h < 1 or width % h]
    if wrong:
        raise ValueError(f"sweep.space.heads {wrong} do not divide the embedding width {width}")
    return sorted(choices)


def cache_fingerprint(cache_dir: Path) -> str:
    from radclip.data.slice_cache import read_cache_info

    return read_cache_info(cache_dir)["encoder_fingerprint"][:8]


def code_fingerprint(root: Path = PACKAGE_ROOT) -> str:
    """Digest of the Python source under ``root`` (relative paths and bytes, in sorted order)."""
    return tracking.tree_digest(root, "*.py")[:16]


def study_name(params: Params, data_fingerprint: str, code: str | None = None) -> str:
    """The configured name plus a digest of what the trials depend on: a changed search space,
    objective, encoder or radclip code (``code``, default :func:`code_fingerprint`) starts a new
    study instead of mixing incomparable trials. Without the code, ``dvc repro -f`` after an edit
    of the adapter reloaded the finished study and kept best params that the old code had found."""
    basis = {
        "sweep": params.sweep.model_dump(mode="json", exclude={"n_trials", "workers", "storage",
                                                                "max_consecutive_failures", "max_retries",
                                                                "heartbeat_seconds", "grace_seconds"}),
        "model": params.model.model_dump(mode="json"),
        "loss": params.loss.model_dump(mode="json"),
        "train": params.train_adapter.model_dump(mode="json"),
        "data": data_fingerprint,
        "code": code if code is not None else code_fingerprint(),
    }
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:8]
    return f"{params.sweep.study}-{digest}"


def storage_for(params: Params) -> tuple[optuna.storages.BaseStorage, str]:
    """(storage, its location for `optuna-dashboard`)."""
    if params.sweep.storage:
        # Heartbeats: a trial whose process died stops beating; the next trial started fails and retries it.
        storage = optuna.storages.RDBStorage(
            params.sweep.storage, heartbeat_interval=params.sweep.heartbeat_seconds,
            grace_period=params.sweep.grace_seconds, heartbeat_stale_trial_callback=retry_callback(params))
        return storage, params.sweep.storage
    path = params.resolve(params.paths.sweeps) / JOURNAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    return optuna.storages.JournalStorage(backend), str(path)


def retry_callback(params: Params) -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Enqueues a failed trial's params once more (at most ``sweep.max_retries`` times over its retries)."""
    with warnings.catch_warnings():  # Optuna's public API for it, marked experimental since v2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=params.sweep.max_retries)


def _sampler(params: Params) -> optuna.samplers.BaseSampler:
    seed = params.sweep.sampler_seed
    if params.sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=params.sweep.startup_trials)


def _pruner(params: Params, epochs: int) -> optuna.pruners.BasePruner:
    sweep = params.sweep
    if sweep.pruner == "none":
        return optuna.pruners.NopPruner()
    if sweep.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, sweep.warmup_epochs), max_resource=epochs)
    return optuna.pruners.MedianPruner(n_startup_trials=sweep.startup_trials, n_warmup_steps=sweep.warmup_epochs)


def _this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive_here(worker: str) -> bool | None:
    """Whether the process that runs a trial is alive; None when it ran on another machine."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        # a zombie (a killed sweep helper its parent has not joined yet) is gone too: it runs no trial
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it exists
        return True


def fail_interrupted_trials(study: optuna.Study, params: Params) -> list[int]:
    """Mark FAIL the RUNNING trials whose process on this machine is gone (a killed sweep) and retry their
    params, as the heartbeat does for RDB storage (which may already have done it: then nothing is done twice)."""
    failed = []
    retry = retry_callback(params)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _alive_here(str(trial.user_attrs.get(WORKER_ATTR, ""))) is False:
            frozen = study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            if frozen.state == TrialState.FAIL and trial.number not in retried_trials(study):
                retry(study, frozen)
            failed.append(trial.number)
    return failed


def retried_trials(study: optuna.Study) -> set[int]:
    """Numbers of the failed trials whose params were enqueued again (Optuna's retry history)."""
    return {number for trial in study.get_trials(deepcopy=False)
            for number in trial.system_attrs.get("retry_history", [])}


def open_study(params: Params, data_fingerprint: str) -> tuple[optuna.Study, str]:
    storage, location = storage_for(params)
    epochs = params.sweep.epochs or params.train_adapter.epochs
    study = optuna.create_study(
        study_name=study_name(params, data_fingerprint),
        storage=storage,
        sampler=_sampler(params),
        pruner=_pruner(params, epochs),
        direction="minimize",
        load_if_exists=True,
    )
    study.set_metric_names([OBJECTIVE])
    return study, location


# --------------------------------------------------------------------------- trials


def trial_params(params: Params, values: dict) -> Params:
    """``params`` with a trial's (or the best) values: the adapter's reducer, heads, lr and temperature
    (a result from before the reducer was searched keeps the configured one)."""
    stage_key = "train_adapter"
    raw = params.model_dump(mode="json", by_alias=True)
    if "reducer" in values:
        raw["model"]["adapter"]["reducer"] = str(values["reducer"])
    raw["model"]["adapter"]["heads"] = int(values["heads"])
    raw[stage_key]["lr"] = float(values["lr"])
    raw["loss"]["temperature"] = float(values["temperature"])
    if params.sweep.epochs:
        raw[stage_key]["epochs"] = params.sweep.epochs
    return Params.model_validate(raw)


def _suggest(trial: optuna.Trial, params: Params) -> dict:
    space = params.sweep.space
    reducers: list[str] = list(space.reducers) or [params.model.adapter.reducer]
    return {
        "reducer": trial.suggest_categorical(name="reducer", choices=reducers),
        "heads": trial.suggest_categorical(name="heads", choices=head_choices(params)),
        "lr": trial.suggest_float(name="lr", low=space.lr[0], high=space.lr[1], log=True),
        "temperature": trial.suggest_float(
            name="temperature", low=space.temperature[0], high=space.temperature[1], log=True
        ),
    }


def _objective(params: Params, parent_run_id: str, scratch: Path, data_dir: Path, model_source: Path):

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, _this_worker())
        values = _suggest(trial, params)
        settings = trial_params(params, values)

        def on_epoch(metrics: dict) -> bool:
            trial.report(metrics["val_loss"], step=int(metrics["epoch"]))
            return trial.should_prune()

        out_dir = scratch / f"trial-{trial.number}"
        try:
            result = fit(settings, "adapter", data_dir=data_dir, vocabulary=[], model_source=model_source,
                         out_dir=out_dir, on_epoch=on_epoch, parent_run_id=parent_run_id,
                         run_name=f"trial-{trial.number}",
                         tags={"optuna.trial": trial.number, "optuna.study": trial.study.study_name},
                         epoch_lines=False, log_model=False)  # a trial's weights are discarded: the best params retrain
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        trial.set_user_attr(RUN_ATTR, result.mlflow_run_id)
        state = "PRUNED" if result.stopped_by_callback else "COMPLETE"
        log.info("sweep trial %d %s after %d epochs: best val loss %.4f (%s), %.0fs", trial.number, state.lower(),
                 len(result.history), result.best_val_loss,
                 ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()),
                 result.seconds)
        tracking.set_run_tags(
            result.mlflow_run_id, {"optuna.state": state, **{f"optuna.param.{k}": v for k, v in values.items()}}
        )
        if result.stopped_by_callback:
            raise optuna.TrialPruned()
        return result.best_val_loss

    return objective


# --------------------------------------------------------------------------- the sweep


class StopAfterConsecutiveFailures:
    """Stops the study once its last ``limit`` finished trials all failed (a systematic error, not a bad draw)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.stopped = False

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        ended = sorted((t for t in study.get_trials(deepcopy=False) if t.state.is_finished()), key=lambda t: t.number)
        last = ended[-self.limit:]
        if len(last) == self.limit and all(t.state == TrialState.FAIL for t in last):
            self.stopped = True
            study.stop()


def unsettled_trials(study: optuna.Study, params: Params) -> list[int]:
    """Fail (and retry) the RUNNING trials whose process is gone, and return the numbers of those still RUNNING
    whose end this worker will see. On RDB storage heartbeats decide, for this machine's trials too: one silent
    past the grace period is failed, the others are waited for. On the journal a trial of a dead process on this
    machine is failed and one of a live process is waited for; another machine's trial there has no heartbeat,
    so it is not waited for."""
    running = (TrialState.RUNNING,)
    if params.sweep.storage:
        with warnings.catch_warnings():  # Optuna's public call for it, marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return [t.number for t in study.get_trials(deepcopy=False, states=running)]
    fail_interrupted_trials(study, params)
    return [t.number for t in study.get_trials(deepcopy=False, states=running)
            if _alive_here(str(t.user_attrs.get(WORKER_ATTR, ""))) is True]


def _optimize(params: Params, data_dir: Path, model_source: Path, target: int, parent_run_id: str) -> None:
    """Fill the study up to ``target`` finished trials, each a child run of ``parent_run_id``, then settle it:
    wait for the trials other workers still run, and run the retry of any whose process died (also one found
    dead only after the target was reached), so that no trial is left RUNNING or WAITING."""
    study, _ = open_study(params, cache_fingerprint(data_dir))
    scratch = params.resolve(params.paths.tmp) / "sweep" / _this_worker().replace(":", "-")
    objective = _objective(params, parent_run_id, scratch, data_dir, model_source)
    failures = StopAfterConsecutiveFailures(params.sweep.max_consecutive_failures)
    poll_seconds = min(params.sweep.heartbeat_seconds, 5)
    waited_for: list[int] = []
    while not failures.stopped:
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        if finished < target or study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            # past the target the callback stops after one trial: the waiting retry, which Optuna runs first
            study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(n_trials=target, states=FINISHED),
                                                 failures],
                           catch=(Exception,))  # recorded FAIL with the traceback in the log; the next trial goes on
            continue
        running = unsettled_trials(study, params)
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            continue  # a dead worker's trial was failed just now: run its retry
        if not running:
            return
        if running != waited_for:
            log.info("sweep: %d trials finished; waiting for trial(s) %s that other workers still run",
                     finished, ", ".join(map(str, running)))
            waited_for = running
        time.sleep(poll_seconds)


def sweep(params: Params, *, data_dir: Path, model_source: Path, n_trials: int | None = None) -> SweepResult:
    """Run (or continue) the study until it holds ``n_trials`` finished trials of adapters trained on the
    slice cache ``data_dir`` from ``model_source``, in ``sweep.workers`` local processes under one MLflow run."""
    target = n_trials or params.sweep.n_trials
    study, location = open_study(params, cache_fingerprint(data_dir))
    interrupted = fail_interrupted_trials(study, params)
    tags = {"optuna.study": study.study_name, "optuna.storage": location, "optuna.failed_interrupted": len(interrupted),
            "optuna.workers": params.sweep.workers}
    with tracking.start_run(params, stage="sweep", run_name=f"sweep-{study.study_name}", tags=tags) as parent:
        context = multiprocessing.get_context("spawn")
        helpers = [context.Process(target=_optimize, args=(params, data_dir, model_source, target, parent.info.run_id))
                   for _ in range(params.sweep.workers - 1)]
        for helper in helpers:
            helper.start()
        try:
            _optimize(params, data_dir, model_source, target, parent.info.run_id)
        finally:
            for helper in helpers:
                helper.join()
        failed_helpers = [helper.exitcode for helper in helpers if helper.exitcode != 0]
        if failed_helpers:
            raise RuntimeError(f"study {study.study_name}: {len(failed_helpers)} sweep worker process(es) exited "
                               f"with {failed_helpers}")
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not finished:
            raise RuntimeError(f"study {study.study_name}: no trial completed (all pruned or failed)")
        best = study.best_trial
        assert best.value is not None  # the best trial is a COMPLETE single-objective trial: it has a value
        counts = {state.name: len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}
        tracking.log_metrics({"best_value": best.value, "trials_complete": counts["COMPLETE"],
                              "trials_pruned": counts["PRUNED"], "trials_failed": counts["FAIL"]})
        tracking.log_dict(
            {"study": study.study_name, "best_trial": best.number, "params": best.params,
             "mlflow_run_id": best.user_attrs.get(RUN_ATTR)}, "best_params.json"
        )
        for _name, path in _study_figures(study, params.resolve(params.paths.tmp) / "sweep-figures").items():
            tracking.log_artifact(path, "optuna")
        return SweepResult(study.study_name, location, float(best.value), dict(best.params), best.number,
                           counts, parent.info.run_id)


def _study_figures(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    """Optimisation history and parameter importances (Optuna's matplotlib plots) as PNGs."""
    import matplotlib

    matplotlib.use("Agg")  # this CLI process never shows windows
    from optuna.visualization import matplotlib as optuna_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Callable[[optuna.Study], Axes]] = {
        "optimization_history": optuna_plots.plot_optimization_history
    }
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 2:
        figures["param_importances"] = optuna_plots.plot_param_importances
    written = {}
    for name, plot in figures.items():
        with warnings.catch_warnings():  # Optuna flags its matplotlib plots experimental; we pin Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = plot(study)
        path = out_dir / f"{name}.png"
        figure = cast("Figure", axes.figure)  # Optuna draws on a top-level figure, never a SubFigure
        figure.savefig(path, dpi=110, bbox_inches="tight")
        matplotlib.pyplot.close(figure)
        written[name] = path
    return written
