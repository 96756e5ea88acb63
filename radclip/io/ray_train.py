"""Ray Train, seen from the training loop and the driver: the only module that imports ``ray.train``.

Ray is imported inside the functions: a process that trains in-process (engine ``local``,
sweep trials, tests) never pays Ray's import time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from radclip.config import Params, TrainParams
from radclip.io.ray_cluster import ray_session


@dataclass(frozen=True)
class RayWorker:
    rank: int
    world_size: int
    checkpoint_dir: str | None  # the checkpoint to resume from


class _QuietRayFileLoggers(logging.Filter):
    """Drops INFO and below from Ray loggers named by a source file's path: Ray Train V2 logs each report
    ("Reporting training result ...") through ``logging.getLogger(__file__)``, a name its own LoggingConfig
    level filter (which matches ``ray.train*`` names) never sees. The driver prints one line per epoch."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_ray_file = record.name.endswith(".py") and "/ray/" in record.name
        return not from_ray_file or record.levelno > logging.INFO


def current_worker() -> RayWorker | None:
    """This Ray Train worker's rank, world size and resume checkpoint; None outside Ray Train. Inside one, Ray's
    per-report INFO lines are kept off the console from here on (they stay in Ray Train's log files)."""
    try:
        import ray.train

        context = ray.train.get_context()
        checkpoint = ray.train.get_checkpoint()
        worker = RayWorker(context.get_world_rank(), context.get_world_size(),
                           checkpoint.to_directory() if checkpoint else None)
    except Exception:  # not inside a Ray Train worker (get_context raises outside one)
        return None
    for handler in logging.getLogger().handlers:  # the console ones: Ray's log files keep every line
        console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if console and not any(isinstance(f, _QuietRayFileLoggers) for f in handler.filters):
            handler.addFilter(_QuietRayFileLoggers())
    return worker


def report(metrics: dict, checkpoint_dir: str | None) -> None:
    """Report an epoch (and its checkpoint directory, which Ray copies into the run's storage)."""
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)


def worker_device() -> torch.device:
    """This worker's GPU."""
    import ray.train.torch

    return ray.train.torch.get_device()


class ClusterConfigError(RuntimeError):
    """The configuration cannot work on the cluster Ray joined."""


def refuse_local_store_on_a_cluster(tracking_uri: str, nodes: int, address: str) -> None:
    """Raise :class:`ClusterConfigError` when workers on several ``nodes`` would log to a store on this machine
    (SQLite, a file path): rank 0 may run on any node and could not record the run's epochs."""
    from radclip.io.mlflow_tracking import is_local_store

    if nodes > 1 and is_local_store(tracking_uri):
        raise ClusterConfigError(
            f"ray.address {address!r} joined a cluster of {nodes} nodes, but MLflow tracks to {tracking_uri}, a store "
            "on this machine that the workers on the other nodes cannot write. Point mlflow.tracking_uri (or "
            "MLFLOW_TRACKING_URI) at a tracking server, e.g. `mlflow server --backend-store-uri "
            "postgresql://... --artifacts-destination s3://...` (README, Scaling out).")


def run_trainer(
    params: Params, train: TrainParams, worker: Callable[[dict], Any], config: dict, *, name: str, storage: Path
) -> Path:
    """``worker(config)`` on ``train.num_workers`` Ray Train workers; returns the last checkpoint's directory."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    with ray_session(params, num_cpus=None):
        if params.ray.address:
            import ray

            from radclip.io.mlflow_tracking import tracking_uri

            refuse_local_store_on_a_cluster(tracking_uri(params), sum(bool(node["Alive"]) for node in ray.nodes()),
                                            params.ray.address)
        trainer = TorchTrainer(
            worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu),
            torch_config=TorchConfig(backend=train.backend),
            # (ignored for mypy: it resolves ray.train.RunConfig to the V1 class, ray.air.config; the Train V2
            # class that runs takes logging_config.)
            run_config=RunConfig(  # type: ignore[call-arg]
                name=name,  # unique: reusing a name would resume that run's checkpoints
                storage_path=str(storage),
                failure_config=FailureConfig(max_failures=train.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                # Ray Train's own per-report INFO lines stay in its log files; the driver prints one line per
                # epoch (radclip.training.fit.epoch_line) and Ray's warnings still reach the console.
                logging_config=LoggingConfig(log_level="WARNING"),
            ),
        )
        result = trainer.fit()
        if result.error:
            raise RuntimeError(f"training failed: {result.error}") from result.error
        # The worker (train_worker) reports a checkpoint from rank 0 every epoch, and epochs >= 1.
        assert result.checkpoint is not None
        return Path(result.checkpoint.to_directory())
