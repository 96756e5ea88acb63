"""Training, the registry and serving against a shared MLflow tracking server, as on a cluster: ``mlflow server``
with its backend store on PostgreSQL and its artifacts in an S3-compatible bucket (``tests/tracking_server.py``
starts both on 127.0.0.1)."""

from __future__ import annotations

import base64
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import tiny_params
from mlflow.tracking import MlflowClient

pytestmark = [
    pytest.mark.slow,
    # MLflow's own deprecated calls (SQLAlchemy loader option, a pandas comparison); not ours to fix.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.filterwarnings("ignore:Operation with range is deprecated"),
]

MODEL_NAME = "radclip-server-test"
GATE = "brain_mri_4class.probe_accuracy_mean"


@pytest.fixture(scope="module")
def trained(tiny_curated, mlflow_server, tmp_path_factory):
    """The 2D stage on Ray Train (the driver logs each epoch its worker reports), tracked by the server."""
    from radclip.jobs import pretrain_2d

    workspace = tiny_curated.workspace(tmp_path_factory.mktemp("server-project"))
    params = tiny_params(workspace, train_2d={"engine": "ray", "num_workers": 1},
                         registry={"model_name": MODEL_NAME, "gate_metrics": [GATE]},
                         mlflow={"experiment": "server-test"})
    return params, pretrain_2d.run(params, progress=False)


def test_training_runs_metrics_and_logged_model_live_in_postgresql_and_the_bucket(trained, mlflow_server,
                                                                                  s3_endpoint):
    import sqlalchemy

    params, result = trained
    client = MlflowClient()
    assert client.tracking_uri == mlflow_server.url
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # the server proxies artifacts: no S3 on clients
    epochs = [int(m.step) for m in client.get_metric_history(result.mlflow_run_id, "val_loss")]
    assert epochs == [int(row["epoch"]) for row in result.history]  # every epoch the Ray worker reported
    logged = client.get_logged_model(result.mlflow_model_id)
    assert logged.source_run_id == result.mlflow_run_id

    engine = sqlalchemy.create_engine(mlflow_server.database_uri)
    try:
        with engine.connect() as connection:
            status = connection.execute(sqlalchemy.text("SELECT status FROM runs WHERE run_uuid = :id"),
                                        {"id": result.mlflow_run_id}).scalar_one()
    finally:
        engine.dispose()
    assert status == "FINISHED"  # the server's backend store is the PostgreSQL database
    prefix = mlflow_server.artifacts.removeprefix(f"s3://{s3_endpoint.bucket}/")
    keys = s3_endpoint.keys(prefix)
    assert any(key.endswith("/model.safetensors") for key in keys), keys[:20]  # the weights are bucket objects
    assert any(key.endswith("/MLmodel") for key in keys)


def test_the_champion_is_registered_promoted_and_served_from_the_server(trained, tiny_curated, tmp_path):
    from radclip.io import mlflow_registry as registry
    from radclip.io import mlflow_tracking as tracking
    from radclip.serving import Predictor

    params, result = trained
    decision = registry.register(params, model_dir=Path(result.model_dir),
                                 evaluation={"brain_mri_4class": {"probe_accuracy_mean": 0.6, "kind": "2d"}})
    assert (decision.decision, decision.version) == ("promoted", 1)
    client = MlflowClient()
    version = client.get_model_version(MODEL_NAME, "1")
    assert version.run_id == result.mlflow_run_id and version.source == f"models:/{result.mlflow_model_id}"
    assert client.get_registered_model(MODEL_NAME).aliases == {"champion": "1", "challenger": "1"}

    held = tracking.download_model(params, f"models:/{MODEL_NAME}@champion", tmp_path / "champion")
    assert tracking.model_digest(held) == tracking.model_digest(result.model_dir)  # the bucket's copy, byte for byte

    image = sorted(tiny_curated.raw.rglob("*.jpg"))[0]
    served = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")  # what `radclip serve` serves
    answer = served.predict(pd.DataFrame({"content": [base64.b64encode(image.read_bytes()).decode()]}))
    reference = Predictor.from_directory(result.model_dir).embed([image])
    np.testing.assert_allclose(np.array(answer["embedding"].tolist()), reference, atol=1e-5)
