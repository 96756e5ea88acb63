"""Ray Train, seen from the training loop and the driver: the only module that imports ``ray.train``.

Epochs travel with ``ray.train.report``: a callback on Ray Train's controller forwards each epoch's report
(rank 0's metrics and every worker's node) to a named relay actor, and a thread of the driver takes them from
there: it logs them (MLflow, the epoch line) and, when the driver decides (a sweep's pruner), answers each epoch
with stop or go, which rank 0 waits for and shares with the other workers. Nothing goes through files or the
tracking store, so workers on any node need neither, and a pruned trial stops after the very epoch its pruner
saw, on Ray as in-process.

Ray is imported inside the functions: a process that trains in-process (engine ``local``,
sweep trials, tests) never pays Ray's import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
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
    node_ip: str  # the address of the node it runs on


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
        import ray.util

        context = ray.train.get_context()
        checkpoint = ray.train.get_checkpoint()
        worker = RayWorker(context.get_world_rank(), context.get_world_size(),
                           checkpoint.to_directory() if checkpoint else None, ray.util.get_node_ip_address())
    except Exception:  # not inside a Ray Train worker (get_context raises outside one)
        return None
    for handler in logging.getLogger().handlers:  # the console ones: Ray's log files keep every line
        console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if console and not any(isinstance(f, _QuietRayFileLoggers) for f in handler.filters):
            handler.addFilter(_QuietRayFileLoggers())
    return worker


NODE_KEY = "radclip_node_ip"  # added to each worker's report: the driver records where the workers ran
RELAY_NAMESPACE = "radclip"


def relay_name(run_name: str) -> str:
    """The relay actor of the fit named ``run_name`` (names are unique per fit)."""
    return f"radclip-epochs-{run_name}"


def report(metrics: dict, checkpoint_dir: str | None) -> None:
    """Report an epoch (and its checkpoint directory, which Ray copies into the run's storage)."""
    import ray.train
    import ray.util

    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report({**metrics, NODE_KEY: ray.util.get_node_ip_address()}, checkpoint=checkpoint)


def driver_says_stop(relay: str, epoch: int) -> bool:
    """Rank 0, after reporting ``epoch``: wait for the driver's decision on it (stop, or train on)."""
    import ray

    return bool(ray.get(ray.get_actor(relay, namespace=RELAY_NAMESPACE).decision.remote(epoch)))


def _relay_actor(name: str):
    """The relay: an asyncio actor (its waits block no other call) holding each epoch's report, once, and the
    driver's decisions. It needs no CPU and lives on the driver's node."""
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class EpochRelay:
        def __init__(self) -> None:
            self.reports: list[dict] = []
            self.epochs: set[int] = set()
            self.decisions: dict[int, bool] = {}
            self.changed = asyncio.Condition()

        async def push(self, metrics: dict, nodes: list[str]) -> None:
            async with self.changed:
                # a worker group restarted from a checkpoint does not re-report, but a duplicate would be the same
                if metrics["epoch"] not in self.epochs:
                    self.epochs.add(metrics["epoch"])
                    self.reports.append({"metrics": metrics, "nodes": nodes})
                self.changed.notify_all()

        async def reports_after(self, count: int, timeout: float) -> list[dict]:
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait_for(lambda: len(self.reports) > count), timeout)
                return self.reports[count:]

        async def decide(self, epoch: int, stop: bool) -> None:
            async with self.changed:
                self.decisions[epoch] = stop
                self.changed.notify_all()

        async def decision(self, epoch: int) -> bool:
            async with self.changed:
                await self.changed.wait_for(lambda: epoch in self.decisions)
                return self.decisions[epoch]

    return EpochRelay.options(name=name, namespace=RELAY_NAMESPACE).remote()  # type: ignore[attr-defined]


def _report_forwarder(relay):
    """The Ray Train controller's callback: every epoch's reports, as they arrive, to the relay."""
    import ray
    from ray.train import UserCallback

    class ForwardReports(UserCallback):
        def __init__(self, relay) -> None:
            self.relay = relay

        def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
            nodes = [str(worker_metrics.get(NODE_KEY, "")) for worker_metrics in metrics]
            rank_0 = {key: value for key, value in metrics[0].items() if key != NODE_KEY}
            ray.get(self.relay.push.remote(rank_0, nodes))

    return ForwardReports(relay)


@dataclass
class TrainerResult:
    checkpoint_dir: Path  # the last checkpoint, copied to the driver's disk
    history: list[dict]  # rank 0's metrics of every epoch, in order
    worker_nodes: list[str]  # the node address of each worker (rank order) in the last epoch


def worker_device() -> torch.device:
    """This worker's GPU."""
    import ray.train.torch

    return ray.train.torch.get_device()


class ClusterConfigError(RuntimeError):
    """The configuration cannot work on the cluster Ray joined."""


def refuse_local_store_on_a_cluster(tracking_uri: str, nodes: int, address: str) -> None:
    """Raise :class:`ClusterConfigError` when a run on several ``nodes`` would be tracked in a store on this machine
    (SQLite, a file path): the driver could write it, but the cluster's other machines (its other jobs, sweep
    workers, the registry and serving) could not reach the runs it trains."""
    from radclip.io.mlflow_tracking import is_local_store

    if nodes > 1 and is_local_store(tracking_uri):
        raise ClusterConfigError(
            f"ray.address {address!r} joined a cluster of {nodes} nodes, but MLflow tracks to {tracking_uri}, a store "
            "on this machine that the cluster's other nodes cannot reach. Point mlflow.tracking_uri (or "
            "MLFLOW_TRACKING_URI) at a tracking server, e.g. `mlflow server --backend-store-uri "
            "postgresql://... --artifacts-destination s3://...` (README, Scaling out).")


def refuse_default_storage_on_a_cluster(storage_path: str | None, nodes: int, address: str) -> None:
    """Raise :class:`ClusterConfigError` when Ray Train would keep a multi-node run's checkpoints in this machine's
    scratch folder: workers on the other nodes would write theirs to their own disks and nothing could resume."""
    if nodes > 1 and not storage_path:
        raise ClusterConfigError(
            f"ray.address {address!r} joined a cluster of {nodes} nodes, but ray.storage_path is not set, so Ray "
            "Train's checkpoints would go to this machine's scratch folder, which the other nodes cannot write. Set "
            "ray.storage_path to a folder every node mounts or to an object-store URI such as s3://bucket/prefix "
            "(README, Scaling out).")


def storage_location(params: Params) -> str:
    """Where Ray Train keeps checkpoints: ``ray.storage_path``, else the project's scratch folder."""
    return params.ray.storage_path or str(params.resolve(params.paths.tmp) / "ray-results")


def delete_run_storage(storage: str, name: str) -> None:
    """Remove one finished run's checkpoints from ``storage`` (a folder or an object-store URI)."""
    if "://" not in storage:
        shutil.rmtree(Path(storage) / name, ignore_errors=True)
        return
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(storage)
    try:
        filesystem.delete_dir(f"{root.rstrip('/')}/{name}")
    except FileNotFoundError:
        pass


class _Forwarder:
    """The driver's thread that takes each epoch from the relay, hands it to ``on_report`` (which returns whether
    to stop) and answers with that decision. An error in ``on_report`` stops the workers and is raised after."""

    def __init__(self, relay, on_report: Callable[[dict], bool]):
        self.relay, self.on_report = relay, on_report
        self.history: list[dict] = []
        self.nodes: list[str] = []
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="radclip-epoch-forwarder")

    def _loop(self) -> None:
        import ray

        while True:
            finishing = self.finished.is_set()
            reports = ray.get(self.relay.reports_after.remote(len(self.history), 0.5))
            for report in reports:
                metrics = report["metrics"]
                self.history.append(metrics)
                self.nodes = report["nodes"]
                stop = True
                if self.error is None:
                    try:
                        stop = bool(self.on_report(metrics))
                    except BaseException as error:  # noqa: BLE001 - kept and raised in the driver's thread
                        self.error = error
                self.relay.decide.remote(metrics["epoch"], stop)
            if finishing and not reports:
                return


def trainer_session(params: Params, train: TrainParams) -> contextlib.AbstractContextManager[None]:
    """Ray for a job that fits several times with ``train`` (arms, seeds): one session for all its fits, so
    Ray starts and stops once, not once per fit (each :func:`run_trainer` joins a session already open).
    Nothing when the fits run in-process."""
    return ray_session(params, num_cpus=None) if train.engine == "ray" else contextlib.nullcontext()


def run_trainer(
    params: Params, train: TrainParams, worker: Callable[[dict], Any], config: dict, *, name: str,
    checkpoint_copy: Path, on_report: Callable[[dict], bool],
) -> TrainerResult:
    """``worker(config)`` on ``train.num_workers`` Ray Train workers, checkpoints in :func:`storage_location`.

    ``on_report(metrics)`` runs on the driver for every epoch, in order; its answer (stop?) reaches the workers
    when the config's ``driver_decides`` is set. The last checkpoint is copied to ``checkpoint_copy``."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    with ray_session(params, num_cpus=None):
        if params.ray.address:
            from radclip.io.mlflow_tracking import tracking_uri

            nodes = sum(bool(node["Alive"]) for node in ray.nodes())
            refuse_local_store_on_a_cluster(tracking_uri(params), nodes, params.ray.address)
            refuse_default_storage_on_a_cluster(params.ray.storage_path, nodes, params.ray.address)
        relay = _relay_actor(relay_name(name))
        forwarder = _Forwarder(relay, on_report)
        trainer = TorchTrainer(
            worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu,
                                         placement_strategy=params.ray.placement_strategy),
            torch_config=TorchConfig(backend=train.backend),
            # (ignored for mypy: it resolves ray.train.RunConfig to the V1 class, ray.air.config; the Train V2
            # class that runs takes logging_config.)
            run_config=RunConfig(  # type: ignore[call-arg]
                name=name,  # unique: reusing a name would resume that run's checkpoints
                storage_path=storage_location(params),
                callbacks=[_report_forwarder(relay)],
                failure_config=FailureConfig(max_failures=train.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                # Ray Train's own per-report INFO lines stay in its log files; the driver prints one line per
                # epoch (radclip.training.fit.epoch_line) and Ray's warnings still reach the console.
                logging_config=LoggingConfig(log_level="WARNING"),
            ),
        )
        forwarder.thread.start()
        try:
            result = trainer.fit()
        finally:
            forwarder.finished.set()
            forwarder.thread.join()
            ray.kill(relay)
        if forwarder.error is not None:
            raise forwarder.error
        if result.error:
            raise RuntimeError(f"training failed: {result.error}") from result.error
        # The worker (train_worker) reports a checkpoint from rank 0 every epoch, and epochs >= 1.
        assert result.checkpoint is not None
        shutil.rmtree(checkpoint_copy, ignore_errors=True)
        result.checkpoint.to_directory(str(checkpoint_copy))
        return TrainerResult(checkpoint_copy, forwarder.history, forwarder.nodes)
