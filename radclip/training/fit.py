"""Running a fit from the driver: Ray Train or in-process, MLflow run, final model.

The driver opens the MLflow run (params, lineage tags, worker count), starts the
workers (``TorchTrainer`` with ``ScalingConfig``/``TorchConfig``/``FailureConfig``
from params, on the local loopback Ray or ``ray.address``), lets rank 0 log the
per-epoch metrics into that run, then rebuilds the model from the last checkpoint
with the best-validation weights, saves it (HF-style directory, safetensors) and
logs it as an artifact. A crash ends the run FAILED.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors.torch import load_file

from radclip import tracking
from radclip.config import Params
from radclip.training.loop import BEST_FILE, STATE_FILE, FitConfig, Stage, fresh_adapter, train_worker


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


def _train_params(params: Params, stage: Stage):
    return params.train_2d if stage == "2d" else params.train_adapter


def _ray_storage(params: Params) -> Path:
    return params.resolve(params.paths.tmp) / "ray-results"


def _run_ray(params: Params, config: FitConfig, name: str) -> Path:
    """Ray Train workers; returns the directory of the last checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from radclip.raycluster import ray_session

    train = _train_params(params, config.stage)
    storage = _ray_storage(params)
    with ray_session(params, num_cpus=None):
        trainer = TorchTrainer(
            train_worker,
            train_loop_config=asdict(config),
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
        return Path(result.checkpoint.to_directory())


def fit(
    params: Params,
    stage: Stage,
    *,
    data_dir: Path,
    vocabulary: list[str],
    out_dir: Path,
    model_source: Path | None = None,
    fail_at: tuple[int, int] | None = None,
) -> FitResult:
    """Train one stage and save the best model to ``out_dir``."""
    from radclip.models import RadCLIP, build_model

    train = _train_params(params, stage)
    name = f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}"
    run_dir = params.resolve(params.paths.tmp) / "runs" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    workers = train.num_workers if train.engine == "ray" else 1
    started = time.perf_counter()
    with tracking.start_run(
        params, stage=f"pretrain_{stage}", run_name=name, tags={"ray.workers": workers, "engine": train.engine}
    ) as run:
        config = FitConfig(
            params=params.model_dump(mode="json", by_alias=True),
            stage=stage,
            data_dir=str(data_dir),
            vocabulary=vocabulary,
            run_dir=str(run_dir),
            model_source=str(model_source) if model_source else None,
            mlflow_run_id=run.info.run_id,
            fail_at=fail_at,
        )
        if train.engine == "ray":
            checkpoint_dir = _run_ray(params, config, name)
            history = _history_from_run(run.info.run_id)
        else:
            reports = train_worker(asdict(config))
            history = [metrics for metrics, _ in reports]
            checkpoint_dir = Path(reports[-1][1])
        state = json.loads((checkpoint_dir / STATE_FILE).read_text())["state"]

        model = RadCLIP.from_pretrained(model_source) if model_source else build_model(params, vocabulary)
        if stage == "adapter":
            fresh_adapter(model, params, train.seed)
        model.load_state_dict(load_file(str(checkpoint_dir / BEST_FILE)), strict=False)
        shutil.rmtree(out_dir, ignore_errors=True)
        model.save_pretrained(out_dir)
        seconds = time.perf_counter() - started
        tracking.log_metrics({"best_val_loss": state["best_val"], "best_epoch": state["best_epoch"], "seconds": seconds})
        tracking.log_artifacts(out_dir, "model")
        result = FitResult(
            model_dir=str(out_dir),
            history=history,
            best_epoch=state["best_epoch"],
            best_val_loss=state["best_val"],
            stopped_early=bool(state["stopped_early"]),
            seconds=seconds,
            mlflow_run_id=run.info.run_id,
            workers=workers,
        )
    # The run finished: its scratch and Ray Train checkpoints are no longer needed (names are unique,
    # so nothing would ever resume from them).
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(_ray_storage(params) / name, ignore_errors=True)
    return result


def _history_from_run(run_id: str) -> list[dict]:
    """Per-epoch metrics as rank 0 logged them into the run (Ray keeps only the last report)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    by_epoch: dict[int, dict] = {}
    for key in ("train_loss", "val_loss", "lr", "temperature", "pairs_per_second"):
        for point in client.get_metric_history(run_id, key):
            by_epoch.setdefault(point.step, {"epoch": point.step})[key] = point.value
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]
