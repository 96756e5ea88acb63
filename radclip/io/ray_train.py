"""Ray Train, seen from the training loop and the driver: the only module that imports ``ray.train``.

Ray is imported inside the functions: a process that trains in-process (engine ``local``,
sweep trials, tests) never pays Ray's import time.
"""

from __future__ import annotations

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


def current_worker() -> RayWorker | None:
    """This Ray Train worker's rank, world size and resume checkpoint; None outside Ray Train."""
    try:
        import ray.train

        context = ray.train.get_context()
        checkpoint = ray.train.get_checkpoint()
        return RayWorker(context.get_world_rank(), context.get_world_size(),
                         checkpoint.to_directory() if checkpoint else None)
    except Exception:  # not inside a Ray Train worker (get_context raises outside one)
        return None


def report(metrics: dict, checkpoint_dir: str | None) -> None:
    """Report an epoch (and its checkpoint directory, which Ray copies into the run's storage)."""
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)


def worker_device() -> torch.device:
    """This worker's GPU."""
    import ray.train.torch

    return ray.train.torch.get_device()


def run_trainer(
    params: Params, train: TrainParams, worker: Callable[[dict], Any], config: dict, *, name: str, storage: Path
) -> Path:
    """``worker(config)`` on ``train.num_workers`` Ray Train workers; returns the last checkpoint's directory."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    with ray_session(params, num_cpus=None):
        trainer = TorchTrainer(
            worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu),
            torch_config=TorchConfig(backend=train.backend),
            run_config=RunConfig(
                name=name,  # unique: reusing a name would resume that run's checkpoints
                storage_path=str(storage),
                failure_config=FailureConfig(max_failures=train.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )
        result = trainer.fit()
        if result.error:
            raise RuntimeError(f"training failed: {result.error}") from result.error
        # The worker (train_worker) reports a checkpoint from rank 0 every epoch, and epochs >= 1.
        assert result.checkpoint is not None
        return Path(result.checkpoint.to_directory())
