"""Serving: the MLflow pyfunc (radclip.io.mlflow_pyfunc around radclip.serving.Predictor) embeds files as the
pipeline embeds their curated records, zero-shot scores, bad rows fail naming the row and file, and
`mlflow models serve` answers a registered model by alias."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import tiny_params
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from PIL import Image

from radclip.core.models import RadCLIP
from radclip.core.preprocessing import ContractError, Preprocessing
from radclip.data.curate import curate
from radclip.data.dicom_write import write_dicom_image, write_dicom_series
from radclip.data.shards import CuratedDataset
from radclip.io import mlflow_pyfunc
from radclip.io import mlflow_tracking as tracking
from radclip.serving import Predictor
from radclip.training.build import build_model

# MLflow's own deprecated calls (SQLAlchemy loader option, a pandas comparison); not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.filterwarnings("ignore:Operation with range is deprecated"),
]

CAPTIONS = ["Normal Chest CT", "Chest CT with COVID-19", "Chest X-ray with Edema", "Brain MRI with Glioma"]
TINY_MODEL = {
    "projection_dim": 16,
    "vision": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
               "patch_size": 8},
    "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    "adapter": {"heads": 2, "max_slices": 8},
}
MODEL_NAME = "radclip-serving-test"
SERVER_START_S = 90  # import of torch/transformers plus model load in a fresh process, on a slow machine
COLLECTION = "serving_inputs"
CT_WINDOW = (-600.0, 1500.0)  # the collection's "Chest CT" window (center, width)
# The input files and where they come from (the CSV collection's index rows).
INPUTS = {
    "chest.png": ("Chest", "X-ray"),
    "ct_series": ("Chest", "CT"),  # a CT series without a window of its own: the collection's applies
    "xray.dcm": ("Chest", "X-ray"),
    "brain.nii.gz": ("Brain", "MRI"),
}


def _write_inputs(files: Path) -> None:
    rng = np.random.default_rng(0)
    files.mkdir()
    Image.fromarray((rng.random((40, 48)) * 255).astype(np.uint8)).save(files / "chest.png")
    ct = rng.normal(-500, 300, size=(10, 24, 24)).round()
    write_dicom_series(files / "ct_series", ct, uid_seed="serving-ct", patient={}, modality="CT", window=None)
    write_dicom_image(files / "xray.dcm", (rng.random((36, 36)) * 3000).round(), uid_seed="serving-dx", patient={},
                      modality="DX")
    nib.save(nib.Nifti1Image(rng.normal(100, 20, size=(20, 20, 12)).astype(np.float32), np.diag([1.0, 1.0, 3.0, 1.0])),
             files / "brain.nii.gz")
    index = ["path,findings,patient_id,region,modality"]
    index += [f"{name},,serving-{n},{region},{modality}" for n, (name, (region, modality)) in enumerate(INPUTS.items())]
    (files / "index.csv").write_text("\n".join(index) + "\n")
    good_dicom = (files / "xray.dcm").read_bytes()
    (files / "corrupt.dcm").write_bytes(good_dicom[: len(good_dicom) // 2])
    np.save(files / "four_d.npy", np.zeros((2, 3, 20, 20), dtype=np.float32))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, mlflow_store):
    """Input files as a CSV collection, curated by the pipeline; a tiny model built on the curated contract
    (saved with save_pretrained); the module's MLflow store."""
    tmp = tmp_path_factory.mktemp("serving")
    files = tmp / "inputs"
    _write_inputs(files)
    collection = {"name": COLLECTION, "format": "csv", "path": str(files), "index": "index.csv",
                  "path_column": "path", "label_column": "findings", "patient_column": "patient_id",
                  "region_column": "region", "modality_column": "modality", "windows": {"Chest CT": list(CT_WINDOW)}}
    params = tiny_params(tmp, model=TINY_MODEL, data={"collections": [collection]},
                         mlflow={"artifact_root": str(mlflow_store.artifacts), "experiment": "serving-test"})
    summary = curate(params, progress=False)
    assert (summary.records, summary.quarantined) == (len(INPUTS), 0), summary.quarantine_reasons
    curated = params.resolve(params.paths.curated)
    dataset = CuratedDataset(curated)
    vocabulary = sorted(set(CAPTIONS) | set(dataset.manifest["caption"]))
    model = build_model(params, vocabulary, preprocessing=Preprocessing.read(curated))
    model_dir = model.save_pretrained(tmp / "model")
    return {"tmp": tmp, "params": params, "model_dir": model_dir, "files": files, "curated": curated,
            "dataset": dataset}


@pytest.fixture(scope="module")
def logged(workspace):
    """The pyfunc logged and registered (version 1), loaded back with mlflow.pyfunc.load_model."""
    with tracking.start_run(workspace["params"], stage="serving-test"):
        info = mlflow_pyfunc.log_model(workspace["model_dir"], registered_model_name=MODEL_NAME)
    return {"info": info, "pyfunc": mlflow.pyfunc.load_model(info.model_uri)}


@torch.no_grad()
def _curated_embeddings(workspace, names: list[str]) -> np.ndarray:
    """The reference: each file's curated record (shard array and manifest display range), encoded by the
    saved RadCLIP itself. No preprocessing rule is repeated here: curation made the arrays."""
    model = RadCLIP.from_pretrained(workspace["model_dir"])
    dataset = workspace["dataset"]
    by_file = {path.split("#")[0]: i for i, path in enumerate(dataset.manifest["source_path"])}
    embeddings = []
    for name in names:
        array, row = dataset[by_file[name]]
        batch = torch.from_numpy(np.array(array)[None])
        if row["kind"] == "2d":
            embeddings.append(model.encode_image(batch).numpy()[0])
        else:
            display = torch.tensor([[row["display_low"], row["display_high"]]], dtype=torch.float32)
            embeddings.append(model.encode_volume(batch, display_range=display).numpy()[0])
    return np.stack(embeddings)


def _rows(files: Path, *, collection: bool = True) -> pd.DataFrame:
    frame = {"path": [str(files / name) for name in INPUTS],
             "region": [region for region, _ in INPUTS.values()],
             "modality": [modality for _, modality in INPUTS.values()]}
    if collection:
        frame["collection"] = [COLLECTION] * len(INPUTS)
    return pd.DataFrame(frame)


def test_the_saved_model_carries_the_curated_contract(workspace):
    predictor = Predictor.from_directory(workspace["model_dir"])
    curated = Preprocessing.read(workspace["curated"])
    assert predictor.preprocessing == curated.with_pixels(predictor.model.pixels)
    assert predictor.preprocessing.collection_region_windows[COLLECTION] == {"Chest CT": CT_WINDOW}
    assert predictor.preprocessing.region_windows == {"Chest CT": CT_WINDOW}


def test_pyfunc_embeds_png_dicom_and_nifti_as_the_pipeline_embeds_their_curated_records(workspace, logged):
    output = logged["pyfunc"].predict(_rows(workspace["files"]))
    expected = _curated_embeddings(workspace, list(INPUTS))
    served = np.array(output["embedding"].tolist())
    assert served.shape == (len(INPUTS), 16)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_pyfunc_rows_with_region_and_modality_only_get_the_window_of_that_pair(workspace, logged):
    """Without a collection, the CT series (no window of its own) is windowed by the contract's
    "Chest CT" entry, as curation windowed it."""
    output = logged["pyfunc"].predict(_rows(workspace["files"], collection=False))
    expected = _curated_embeddings(workspace, list(INPUTS))
    np.testing.assert_allclose(np.array(output["embedding"].tolist()), expected, atol=1e-5)


def test_pyfunc_embeds_text_rows_with_the_text_tower(workspace, logged):
    output = logged["pyfunc"].predict(pd.DataFrame({"text": CAPTIONS[:2]}))
    model = RadCLIP.from_pretrained(workspace["model_dir"])
    with torch.no_grad():
        expected = model.encode_text(CAPTIONS[:2]).numpy()
    np.testing.assert_allclose(np.array(output["embedding"].tolist()), expected, atol=1e-6)


def test_zero_shot_probabilities_sum_to_one_and_the_top_caption_is_their_argmax(workspace, logged):
    files = workspace["files"]
    model_input = pd.DataFrame({"path": [str(files / "chest.png"), str(files / "ct_series"), None],
                                "text": [None, None, "Normal Chest CT"],
                                "collection": [COLLECTION, COLLECTION, None],
                                "region": ["Chest", "Chest", None],
                                "modality": ["X-ray", "CT", None]})
    output = logged["pyfunc"].predict(model_input, params={"candidates": CAPTIONS})
    model = RadCLIP.from_pretrained(workspace["model_dir"])
    with torch.no_grad():
        captions = model.encode_text(CAPTIONS).numpy()
        scale = float(model.logit_scale_exp())
    for _, row in output.iloc[:2].iterrows():
        scores, probabilities = np.array(row["scores"]), np.array(row["probabilities"])
        np.testing.assert_allclose(scores, captions @ np.array(row["embedding"]), atol=1e-5)  # cosine similarity
        np.testing.assert_allclose(probabilities, torch.softmax(torch.tensor(scale * scores), 0).numpy(), atol=1e-5)
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert row["prediction"] == CAPTIONS[int(np.argmax(probabilities))]
    text_row = output.iloc[2]  # a caption row gets an embedding, no zero-shot
    assert text_row["prediction"] is None and text_row["scores"] is None


@pytest.mark.parametrize(
    ("name", "problem"),
    [("missing.png", "file not found"), ("corrupt.dcm", "truncated"), ("four_d.npy", "4D array")],
    ids=["missing-file", "corrupted-dicom", "4d-array"],
)
def test_a_bad_file_raises_invalid_parameter_naming_the_row_file_and_problem(workspace, logged, name, problem):
    files = workspace["files"]
    with pytest.raises(MlflowException) as raised:
        logged["pyfunc"].predict(pd.DataFrame({"path": [str(files / "chest.png"), str(files / name)]}))
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    assert f"row 1: {files / name}: " in raised.value.message
    assert problem in raised.value.message


def test_an_unknown_collection_raises_invalid_parameter_naming_the_row_and_file(workspace, logged):
    path = str(workspace["files"] / "ct_series")
    with pytest.raises(MlflowException) as raised:
        logged["pyfunc"].predict(pd.DataFrame({"path": [path], "collection": ["no_such_collection"]}))
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    assert f"row 0: {path}: " in raised.value.message
    assert "unknown collection 'no_such_collection'" in raised.value.message


def test_a_row_with_both_path_and_text_is_refused(workspace, logged):
    with pytest.raises(MlflowException, match="row 0: both 'path' and 'text' given") as raised:
        logged["pyfunc"].predict(pd.DataFrame({"path": [str(workspace["files"] / "chest.png")],
                                               "text": ["Normal Chest CT"]}))
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


def test_a_table_without_path_or_text_columns_is_refused(logged):
    with pytest.raises(MlflowException, match="expected a 'path' and/or 'text' column") as raised:
        logged["pyfunc"].predict(pd.DataFrame({"file": ["chest.png"]}))
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


def test_the_logged_signature_has_optional_path_text_and_source_columns_and_candidates(logged):
    signature = logged["info"].signature
    assert signature.to_dict() == mlflow_pyfunc.SIGNATURE.to_dict()
    inputs = {spec.name: spec for spec in signature.inputs.inputs}
    assert list(inputs) == [mlflow_pyfunc.PATH_COLUMN, mlflow_pyfunc.TEXT_COLUMN, "collection", "region", "modality"]
    assert not any(spec.required for spec in inputs.values())
    assert [spec.name for spec in signature.outputs.inputs] == ["embedding", "scores", "probabilities", "prediction"]
    [candidates] = signature.params.params
    assert candidates.name == mlflow_pyfunc.CANDIDATES_PARAM and candidates.shape == (-1,)


def test_a_model_without_a_preprocessing_contract_is_neither_served_nor_logged(workspace, tmp_path):
    bare = build_model(workspace["params"], CAPTIONS)
    with pytest.raises(ContractError, match="no preprocessing contract"):
        Predictor(bare)
    bare_dir = bare.save_pretrained(tmp_path / "bare")
    assert not (bare_dir / "preprocessing.json").exists()
    with pytest.raises(FileNotFoundError, match="preprocessing.json"):
        mlflow_pyfunc.log_model(bare_dir)


# --------------------------------------------------------------------------- mlflow models serve


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# No proxy handler: a proxy from the environment must never see loopback requests.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post(url: str, payload: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with _LOCAL.open(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _wait_for_ping(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with _LOCAL.open(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:  # not listening yet
            time.sleep(0.3)
    pytest.fail(f"mlflow models serve did not answer /ping within {SERVER_START_S}s:\n{log.read_text()[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (mlflow starts uvicorn as a child), SIGKILL if it lingers."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)


def test_mlflow_models_serve_answers_the_champion_and_survives_bad_requests(workspace, logged):
    MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", logged["info"].registered_model_version)
    files, tmp = workspace["files"], workspace["tmp"]
    port = _free_port()
    store = os.environ["MLFLOW_TRACKING_URI"]
    venv_bin = Path(sys.executable).parent  # mlflow starts `uvicorn` by name: the venv's must come first on PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "MLFLOW_REGISTRY_URI": store,
           "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp / "server.log"
    command = [str(venv_bin / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@champion",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    with log.open("w") as output:
        # Own session (process group): the finally block stops mlflow and its uvicorn child together.
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    good = {"dataframe_split": {"columns": ["path"], "data": [[str(files / "chest.png")]]},
            "params": {"candidates": CAPTIONS}}
    try:
        _wait_for_ping(url, server, log)
        status, body = _post(f"{url}/invocations", good)
        assert status == 200, body
        [answer] = json.loads(body)["predictions"]
        assert len(answer["embedding"]) == 16
        assert sum(answer["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert answer["prediction"] == CAPTIONS[int(np.argmax(answer["probabilities"]))]

        for bad in (files / "missing.png", files / "corrupt.dcm"):
            status, body = _post(f"{url}/invocations", {"dataframe_split": {"columns": ["path"], "data": [[str(bad)]]}})
            assert 400 <= status < 500, body
            message = json.loads(body)["message"]
            assert str(bad) in message and "INVALID_PARAMETER_VALUE" in body

        status, body = _post(f"{url}/invocations", good)  # still serving after the bad requests
        assert status == 200, body
        assert json.loads(body)["predictions"][0]["embedding"] == answer["embedding"]
    finally:
        _stop(server)
