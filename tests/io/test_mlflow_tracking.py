"""radclip.io.mlflow_tracking against a throwaway SQLite store: lineage tags, params, run status, artifacts."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import mlflow
import pytest
import yaml
from helpers import git_commit
from mlflow import MlflowClient

from radclip.config import MlflowParams, Params
from radclip.io import mlflow_tracking as tracking

# MLflow's own SQLAlchemy store still uses a deprecated loader option; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

CURATED_MD5 = "0123456789abcdef0123456789abcdef.dir"


def _write_dvc_lock(root: Path, curated_path: str = "data/curated") -> None:
    lock = {
        "schema": "2.0",
        "stages": {
            "curate": {
                "cmd": "python pipelines/curate.py --quiet",
                "outs": [
                    {"path": "reports/curate.json", "hash": "md5", "md5": "ffffffffffffffffffffffffffffffff", "size": 10},
                    {"path": curated_path, "hash": "md5", "md5": CURATED_MD5, "size": 1234, "nfiles": 3},
                ],
            }
        },
    }
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))


@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_store):
    """A git-tracked tmp project (DVC_ROOT) with a dvc.lock, and the module's SQLite store + artifact root in tmp."""
    base = tmp_path_factory.mktemp("tracking")
    project = base / "project"
    project.mkdir()
    _write_dvc_lock(project)
    (project / "params.yaml").write_text("profile: default\n")
    head = git_commit(project, "params.yaml", "dvc.lock")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DVC_ROOT", str(project))
        patch.setenv("GIT_CEILING_DIRECTORIES", str(base))  # no repository above tmp may answer
        params = Params(mlflow=MlflowParams(artifact_root=str(mlflow_store.artifacts), experiment="radclip-test"))
        yield {"base": base, "project": project, "head": head, "params": params, "artifacts": mlflow_store.artifacts}


@pytest.fixture
def client(store) -> MlflowClient:
    return MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def test_run_carries_lineage_tags_and_flat_params(store, client):
    params = store["params"]
    with tracking.start_run(params, stage="train_2d", run_name="lineage", tags={"ray.workers": 2}) as run:
        tracking.log_metrics({"val/loss": 1.5}, step=0)
        tracking.set_tags({"note": "tagged inside"})
    finished = client.get_run(run.info.run_id)
    tags, logged = finished.data.tags, finished.data.params
    assert finished.info.status == "FINISHED"
    assert finished.info.run_name == "lineage"
    assert tags["radclip.stage"] == "train_2d"
    assert tags["git.commit"] == store["head"]
    assert tags["git.dirty"] == "false"
    assert tags["data.curated_hash"] == CURATED_MD5
    assert tags["params.digest"] == params.digest()
    assert tags["params.profile"] == "default"
    assert tags["ray.workers"] == "2"
    assert tags["note"] == "tagged inside"
    assert logged == tracking.flatten_params(params)
    assert logged["curate.image_size"] == str(params.curate.image_size)
    assert logged["curate.volume.axial.slices"] == str(params.curate.volume["axial"].slices)
    assert logged["loss.learnable_temperature"] == "true"
    assert json.loads(logged["phantoms.volume_shape"]) == list(params.phantoms.volume_shape)
    assert finished.data.metrics["val/loss"] == 1.5
    assert client.get_experiment(finished.info.experiment_id).name == "radclip-test"


def test_exception_inside_run_marks_it_failed(store, client):
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.start_run(store["params"], stage="train_2d") as run:
            raise RuntimeError("boom")
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_nested_runs_name_their_parent(store, client):
    params = store["params"]
    with tracking.start_run(params, stage="sweep", run_name="sweep") as parent:
        with tracking.start_run(params, stage="trial", nested=True, tags={"trial": 0}) as child:
            assert tracking.active_run_id() == child.info.run_id
        with pytest.raises(ValueError):
            with tracking.start_run(params, stage="trial", nested=True, tags={"trial": 1}) as failing:
                raise ValueError("bad trial")
        assert tracking.active_run_id() == parent.info.run_id
    for run, status in ((child, "FINISHED"), (failing, "FAILED")):
        stored = client.get_run(run.info.run_id)
        assert stored.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert stored.data.tags["radclip.stage"] == "trial"
        assert stored.info.status == status
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_a_stage_run_prints_where_to_open_it_and_child_runs_stay_quiet(store, caplog):
    params = store["params"]
    with caplog.at_level(logging.INFO, logger="radclip.mlflow"):
        with tracking.start_run(params, stage="evaluate", run_name="announced") as run:
            with tracking.start_run(params, stage="trial", nested=True) as child:
                pass
    infos = [record.getMessage() for record in caplog.records if record.levelno == logging.INFO]
    page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert len(infos) == 1 and run.info.run_id in infos[0] and "announced" in infos[0]
    assert f"mlflow ui --backend-store-uri {os.environ['MLFLOW_TRACKING_URI']}" in infos[0]
    assert infos[0].endswith(f"http://127.0.0.1:5000/{page}")
    assert child.info.run_id not in " ".join(infos)
    assert tracking.run_address("http://mlflow.internal:5000/", "7", "abc") == (
        "http://mlflow.internal:5000/#/experiments/7/runs/abc")


def test_runs_left_open_inside_the_block_are_closed(store, client):
    with tracking.start_run(store["params"], stage="train_2d") as run:
        stray = mlflow.start_run(nested=True)  # a careless caller; must not leave anything RUNNING
    assert client.get_run(stray.info.run_id).info.status == "FINISHED"
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert mlflow.active_run() is None


def test_artifacts_land_under_the_artifact_root(store, client, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.txt").write_text("auc 0.9\n")
    with tracking.start_run(store["params"], stage="evaluate") as run:
        tracking.log_artifacts(tmp_path / "out", "reports")
        tracking.log_dict({"accuracy": 0.5}, "eval/summary.json")
    artifact_root = store["artifacts"]
    run_dir = artifact_root / "radclip-test" / run.info.run_id / "artifacts"
    assert (run_dir / "reports" / "metrics.txt").read_text() == "auc 0.9\n"
    assert json.loads((run_dir / "eval" / "summary.json").read_text()) == {"accuracy": 0.5}
    full = json.loads((run_dir / tracking.PARAMS_ARTIFACT).read_text())
    assert full["curate"]["image_size"] == store["params"].curate.image_size
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location == (artifact_root / "radclip-test").as_uri()
    assert not (store["project"] / "mlruns").exists()


def test_default_uri_is_an_absolute_sqlite_file_under_the_project_root(store, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)  # a Ray worker or DVC experiment elsewhere sees the same store
    project = store["project"].resolve()
    params = Params()
    assert tracking.tracking_uri(params) == f"sqlite:///{project}/mlflow.db"
    assert tracking.tracking_uri(params).startswith("sqlite:////")  # four slashes: an absolute path
    assert tracking.artifact_location(params) == (project / "mlruns").as_uri()
    relative = Params(mlflow=MlflowParams(tracking_uri="sqlite:///meta/runs.db"))
    assert tracking.tracking_uri(relative) == f"sqlite:///{project}/meta/runs.db"
    server = Params(mlflow=MlflowParams(tracking_uri="http://127.0.0.1:5000"))
    assert tracking.tracking_uri(server) == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/env.db")
    assert tracking.tracking_uri(server) == "sqlite:////elsewhere/env.db"  # the environment wins


def test_curated_hash_matches_the_curated_path_or_is_unknown(store, monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    params = Params()
    assert tracking.curated_data_hash(params) == "unknown"  # no dvc.lock
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  phantoms:\n    outs: []\n")
    assert tracking.curated_data_hash(params) == "unknown"  # no curate stage
    _write_dvc_lock(tmp_path, curated_path="data/other")
    assert tracking.curated_data_hash(params) == "unknown"  # curate ran for another path
    absolute = Params(paths={"curated": str(tmp_path / "data" / "other")})
    assert tracking.curated_data_hash(absolute) == CURATED_MD5


def test_any_stages_output_hash_is_found_by_its_path(store, monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    lock = {"schema": "2.0", "stages": {
        "curate": {"outs": [{"path": "data/curated", "md5": CURATED_MD5}]},
        "embed_slices@finetuned": {"outs": [{"path": "data/slices/finetuned", "md5": "ab" * 16 + ".dir"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    params = Params()
    assert tracking.dvc_output_hash(params, "data/slices/finetuned") == "ab" * 16 + ".dir"  # a foreach stage's
    assert tracking.dvc_output_hash(params, tmp_path / "data" / "curated") == CURATED_MD5  # absolute or relative
    assert tracking.dvc_output_hash(params, "data/curated", stage="embed_slices@finetuned") == "unknown"
    assert tracking.dvc_output_hash(params, "data/slices/vanilla") == "unknown"


def test_model_digest_follows_the_bytes_not_the_folder(tmp_path):
    import shutil

    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"a": 1}')
    (model / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 4096)
    digest = tracking.model_digest(model)
    copy = Path(shutil.copytree(model, tmp_path / "elsewhere" / "copy"))
    assert tracking.model_digest(copy) == digest  # where it lies does not matter
    (copy / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 4095 + bytes(255) + b"\x01")
    assert tracking.model_digest(copy) != digest  # one changed byte does
    (copy / "sub" / "weights.bin").rename(copy / "weights.bin")
    (copy / "weights.bin").write_bytes(bytes(range(256)) * 4096)
    assert tracking.model_digest(copy) != digest  # the same bytes under another name: another model


def test_a_dataset_input_carries_the_dvc_hash_and_links_to_a_model(store, client):
    params = store["params"]
    curated = store["project"] / "data" / "curated"
    curated.mkdir(parents=True, exist_ok=True)
    with tracking.start_run(params, stage="test") as run:
        model = mlflow.initialize_logged_model(name="m", source_run_id=run.info.run_id)
        tracking.log_dataset_input(params, "data/curated", context="training", model_id=model.model_id)
    inputs = client.get_run(run.info.run_id).inputs
    [dataset_input] = inputs.dataset_inputs
    assert dataset_input.dataset.name == "curated" and dataset_input.dataset.digest == CURATED_MD5
    assert json.loads(dataset_input.dataset.source)["uri"] == str(curated.resolve())
    assert {tag.key: tag.value for tag in dataset_input.tags}["mlflow.data.context"] == "training"
    assert [m.model_id for m in inputs.model_inputs] == [model.model_id]


def test_git_state_outside_git_and_when_dirty(store, tmp_path):
    assert tracking.git_state(tmp_path) == ("unknown", "unknown")
    project = store["project"]
    params_file = project / "params.yaml"
    original = params_file.read_text()
    try:
        params_file.write_text("profile: paper\n")
        assert tracking.git_state(project) == (store["head"], "true")
    finally:
        params_file.write_text(original)
    (project / "untracked.txt").write_text("scratch")  # untracked files do not make the code dirty
    assert tracking.git_state(project) == (store["head"], "false")


def test_flatten_params_keys_and_values():
    params = Params.model_validate(
        {"data": {"collections": [{"name": "c", "format": "image_folders", "path": "x", "labels": {"a|b": "A", "n": None}}]}}
    )
    flat = tracking.flatten_params(params)
    assert flat["ray.address"] == "null"
    assert flat["phantoms.enabled"] == "true"
    collections = json.loads(flat["data.collections"])
    assert collections[0]["labels"] == {"a|b": "A", "n": None}
    assert all(len(value) <= tracking.MAX_PARAM_VALUE for value in flat.values())
    long = tracking._param_value("x" * 7000)
    assert len(long) == tracking.MAX_PARAM_VALUE and long.endswith("see params.json]")
