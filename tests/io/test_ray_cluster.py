"""Ray Train on a real two-node cluster (``tests/ray_cluster.py``: two ``ray start`` nodes on 127.0.0.2 and
127.0.0.3), tracked by a shared MLflow server (``tests/tracking_server.py``: PostgreSQL + an S3 bucket): the
2D stage's two workers land one on each node, every epoch reaches the server through ``ray.train.report``, a
worker killed on the second node resumes from the shared storage and ends where the uninterrupted run ended,
the driver's stop reaches both nodes after the very epoch it decided on, embed_slices' Ray Data actors on the
cluster write the cache one process writes, a sweep on PostgreSQL trains its trials on both nodes, and the
configurations that cannot work on several nodes are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import assert_resumed_like_uninterrupted, assert_same_cache, tiny_params
from mlflow.tracking import MlflowClient

from radclip.config import Params

pytestmark = [
    pytest.mark.slow,
    # MLflow's own deprecated calls (SQLAlchemy loader option, a pandas comparison); not ours to fix.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.filterwarnings("ignore:Operation with range is deprecated"),
]


@pytest.fixture(scope="module")
def workspace(tiny_curated, tmp_path_factory) -> Path:
    return tiny_curated.workspace(tmp_path_factory.mktemp("cluster-project"))


def _params(workspace: Path, ray: dict, **train_2d) -> Params:
    return tiny_params(workspace, ray=ray, train_2d={"engine": "ray", "num_workers": 2, **train_2d},
                       mlflow={"experiment": "cluster-test"})


def _fit(params: Params, out: str, **options):
    from radclip.jobs.common import vocabulary
    from radclip.training.fit import fit

    return fit(params, "2d", data_dir=params.resolve(params.paths.curated), vocabulary=vocabulary(params),
               out_dir=params.resolve(params.paths.models) / out, **options)


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, mlflow_server, workspace):
    return _fit(_params(workspace, ray_cluster.ray_params()), "uninterrupted")


def test_the_two_workers_run_one_on_each_node_and_every_epoch_reaches_the_server(ray_cluster, mlflow_server,
                                                                                 uninterrupted):
    client = MlflowClient()
    assert client.tracking_uri == mlflow_server.url
    run = client.get_run(uninterrupted.mlflow_run_id)
    assert sorted(run.data.tags["ray.worker_nodes"].split(",")) == [ray_cluster.head_ip, ray_cluster.second_ip]
    assert run.data.tags["ray.workers"] == "2"
    history = client.get_metric_history(uninterrupted.mlflow_run_id, "val_loss")
    assert [int(point.step) for point in history] == [int(epoch["epoch"]) for epoch in uninterrupted.history]
    assert [point.value for point in history] == [epoch["val_loss"] for epoch in uninterrupted.history]
    assert len(uninterrupted.history) >= 2
    assert uninterrupted.history[-1]["train_loss"] < uninterrupted.history[0]["train_loss"]
    run_storage = ray_cluster.storage / Path(uninterrupted.model_dir).name
    assert not any(ray_cluster.storage.iterdir()), f"{run_storage}: a finished run's checkpoints are removed"


def test_a_worker_killed_on_the_second_node_resumes_from_shared_storage_at_the_same_metrics(
        ray_cluster, mlflow_server, workspace, uninterrupted):
    from radclip.training.loop import FAULT_MARKER

    params = _params(workspace, ray_cluster.ray_params())
    killed: list[str] = []

    def record_the_kill(metrics: dict) -> bool:
        marker = next(params.resolve(params.paths.tmp).glob(f"runs/*/{FAULT_MARKER}"), None)
        if marker is not None and not killed:
            killed.append(marker.read_text())
        return False

    resumed = _fit(params, "resumed", fail_at=(1, 1), fail_node=ray_cluster.second_ip, on_epoch=record_the_kill)
    assert killed and f"on node {ray_cluster.second_ip} killed at epoch 1 step 1" in killed[0]
    assert_resumed_like_uninterrupted(resumed, uninterrupted)


def test_the_drivers_stop_reaches_both_nodes_after_the_epoch_it_decided_on(ray_cluster, mlflow_server, workspace):
    params = _params(workspace, ray_cluster.ray_params(), epochs=20, patience=20)
    seen: list[int] = []

    def stop_after_second_epoch(metrics: dict) -> bool:
        seen.append(int(metrics["epoch"]))
        return metrics["epoch"] >= 1

    result = _fit(params, "stopped", on_epoch=stop_after_second_epoch)
    assert result.stopped_by_callback
    assert seen == [0, 1] and [int(epoch["epoch"]) for epoch in result.history] == [0, 1]


def test_embed_slices_on_ray_data_actors_on_the_cluster_builds_the_cache_one_process_builds(ray_cluster, workspace):
    from radclip.core.preprocessing import Preprocessing
    from radclip.jobs.common import vocabulary
    from radclip.jobs.embed_slices import build_cache
    from radclip.training.build import build_model

    local = tiny_params(workspace, embed={"engine": "local", "batch_volumes": 3})
    model = build_model(local, vocabulary(local), Preprocessing.read_if_saved(local.resolve(local.paths.curated)))
    build_cache(local, model, workspace / "cache-in-process", meta={}, progress=False)
    on_cluster = tiny_params(workspace, ray=ray_cluster.ray_params(),
                             embed={"engine": "ray", "concurrency": 2, "batch_volumes": 3})
    # Where Ray Data places its actors is its scheduler's choice (SPREAD is best effort: runs placed them on both
    # nodes and on the head alone), so the test asserts the result, not the placement.
    build_cache(on_cluster, model, workspace / "cache-on-cluster", meta={}, progress=False)
    assert_same_cache(workspace / "cache-on-cluster", workspace / "cache-in-process")


def test_a_sweep_on_postgresql_trains_every_trial_on_both_nodes(ray_cluster, mlflow_server, postgres_server,
                                                                  workspace, uninterrupted):
    import optuna

    from radclip.core.models import RadCLIP
    from radclip.io.optuna_sweep import RUN_ATTR
    from radclip.jobs import sweep
    from radclip.jobs.common import MODEL_2D, model_dir, slice_cache_dir
    from radclip.jobs.embed_slices import build_cache

    database = postgres_server.create_database("cluster_sweep")
    try:
        params = tiny_params(
            workspace, ray=ray_cluster.ray_params(), mlflow={"experiment": "cluster-test"},
            train_adapter={"engine": "ray", "num_workers": 2},
            sweep={"n_trials": 2, "epochs": 2, "startup_trials": 1, "warmup_epochs": 0, "sampler": "random",
                   "storage": postgres_server.uri(database), "apply_best": False})
        shutil.copytree(uninterrupted.model_dir, model_dir(params, MODEL_2D))
        build_cache(params, RadCLIP.from_pretrained(model_dir(params, MODEL_2D)), slice_cache_dir(params), meta={},
                    progress=False)
        result = sweep.run(params, progress=False)
        assert result.trials["COMPLETE"] + result.trials["PRUNED"] == 2 and result.trials["FAIL"] == 0
        trials = optuna.load_study(study_name=result.study, storage=postgres_server.uri(database)).trials
        assert len(trials) == 2
        client = MlflowClient()
        for trial in trials:
            tags = client.get_run(trial.user_attrs[RUN_ATTR]).data.tags
            assert sorted(tags["ray.worker_nodes"].split(",")) == [ray_cluster.head_ip, ray_cluster.second_ip]
    finally:
        postgres_server.drop_database(database)


def test_a_local_tracking_store_or_checkpoint_folder_is_refused_on_the_cluster(ray_cluster, mlflow_server,
                                                                              workspace, tmp_path):
    from radclip.io.ray_train import ClusterConfigError

    no_storage = {**ray_cluster.ray_params(), "storage_path": None}
    with pytest.raises(ClusterConfigError, match=r"cluster of 2 nodes.*ray\.storage_path is not set"):
        _fit(_params(workspace, no_storage), "refused")
    sqlite = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", sqlite)
        with pytest.raises(ClusterConfigError, match=r"cluster of 2 nodes.*cannot reach"):
            _fit(_params(workspace, ray_cluster.ray_params()), "refused")
