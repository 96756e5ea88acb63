"""radclip.serving: the pyfunc embeds files exactly as RadCLIP does on curated inputs, zero-shot scores,
bad rows fail naming the file, and `mlflow models serve` answers a registered model by alias."""

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
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from PIL import Image

from helpers import tiny_params
from radclip import serving, tracking
from radclip.data.curate import normalise_image, normalise_volume
from radclip.data.dicom import load_dicom
from radclip.data.dicom_write import write_dicom_image, write_dicom_series
from radclip.data.images import load_image
from radclip.data.nifti import load_nifti
from radclip.models import RadCLIP, build_model

# MLflow's own deprecated calls (SQLAlchemy loader option, a pandas comparison); not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.filterwarnings("ignore:Operation with range is deprecated"),
]

CAPTIONS = ["Normal Chest CT", "Chest CT with COVID-19", "Chest X-ray with Edema", "Brain MRI with Glioma"]
TINY_MODEL = {
    "projection_dim": 16,
    "vision": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 8},
    "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    "adapter": {"heads": 2, "max_slices": 8},
}
MODEL_NAME = "radclip-serving-test"
SERVER_START_S = 90  # import of torch/transformers plus model load in a fresh process, on a slow machine


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny saved model, its params (CT window from the collections), input files, and an MLflow store."""
    tmp = tmp_path_factory.mktemp("serving")
    params = tiny_params(tmp, model=TINY_MODEL, mlflow={"artifact_root": str(tmp / "artifacts"), "experiment": "serving-test"})
    model_dir = build_model(params, CAPTIONS).save_pretrained(tmp / "model")
    rng = np.random.default_rng(0)
    files = tmp / "inputs"
    files.mkdir()
    Image.fromarray((rng.random((40, 48)) * 255).astype(np.uint8)).save(files / "chest.png")
    # CT without a window of its own: the served model must use the configured CT window.
    ct = rng.normal(-500, 300, size=(10, 24, 24)).round()
    write_dicom_series(files / "ct_series", ct, uid_seed="serving-ct", patient={}, modality="CT", window=None)
    write_dicom_image(files / "xray.dcm", (rng.random((36, 36)) * 3000).round(), uid_seed="serving-dx", patient={},
                      modality="DX")
    nib.save(nib.Nifti1Image(rng.normal(100, 20, size=(20, 20, 12)).astype(np.float32), np.diag([1.0, 1.0, 3.0, 1.0])),
             files / "brain.nii.gz")
    good_dicom = (files / "xray.dcm").read_bytes()
    (files / "corrupt.dcm").write_bytes(good_dicom[: len(good_dicom) // 2])
    np.save(files / "four_d.npy", np.zeros((2, 3, 20, 20), dtype=np.float32))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        yield {"tmp": tmp, "params": params, "model_dir": model_dir, "files": files}
        mlflow.set_tracking_uri(None)  # forget the tmp store (also clears the exported variables)
        mlflow.set_registry_uri(None)


@pytest.fixture(scope="module")
def logged(workspace):
    """The pyfunc logged and registered (version 1), loaded back with mlflow.pyfunc.load_model."""
    with tracking.start_run(workspace["params"], stage="serving-test"):
        info = serving.log_model(workspace["model_dir"], workspace["params"], registered_model_name=MODEL_NAME)
    return {"info": info, "pyfunc": mlflow.pyfunc.load_model(info.model_uri)}


def _direct_embedding(model: RadCLIP, path: Path, ct_window) -> np.ndarray:
    """What curation stores for the file, encoded by RadCLIP itself (the reference)."""
    if path.suffix == ".png":
        array = normalise_image(load_image(path).pixels, 32, None, eight_bit=True)
        return model.encode_image(torch.from_numpy(array[None])).numpy()[0]
    if path.name.endswith(".nii.gz"):
        image, window = load_nifti(path), None  # no modality in NIfTI: robust range, as curation without a window
    else:
        [image] = load_dicom(path)
        window = ct_window if image.dicom_modality == "CT" else None
    if image.kind == "2d":
        array = normalise_image(image.pixels, 32, window, eight_bit=False)
        return model.encode_image(torch.from_numpy(array[None])).numpy()[0]
    volume, display = normalise_volume(image.pixels, 8, 16, window, str(path))
    return model.encode_volume(torch.from_numpy(volume[None]), display_range=torch.tensor([display])).numpy()[0]


def test_pyfunc_embeds_png_dicom_and_nifti_like_radclip_on_curated_inputs(workspace, logged):
    files = workspace["files"]
    paths = [files / "chest.png", files / "ct_series", files / "xray.dcm", files / "brain.nii.gz"]
    output = logged["pyfunc"].predict(pd.DataFrame({"path": [str(p) for p in paths]}))
    model = RadCLIP.from_pretrained(workspace["model_dir"])
    ct_window = serving.default_ct_window(workspace["params"])
    assert ct_window == (-600.0, 1500.0)  # from params.yaml's collections
    with torch.no_grad():
        expected = np.stack([_direct_embedding(model, path, ct_window) for path in paths])
    served = np.array(output["embedding"].tolist())
    assert served.shape == (4, 16)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_pyfunc_embeds_text_rows_with_the_text_tower(workspace, logged):
    output = logged["pyfunc"].predict(pd.DataFrame({"text": CAPTIONS[:2]}))
    model = RadCLIP.from_pretrained(workspace["model_dir"])
    with torch.no_grad():
        expected = model.encode_text(CAPTIONS[:2]).numpy()
    np.testing.assert_allclose(np.array(output["embedding"].tolist()), expected, atol=1e-6)


def test_zero_shot_probabilities_sum_to_one_and_the_top_caption_is_their_argmax(workspace, logged):
    files = workspace["files"]
    model_input = pd.DataFrame({"path": [str(files / "chest.png"), str(files / "ct_series"), None],
                                "text": [None, None, "Normal Chest CT"]})
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


def test_a_row_with_both_path_and_text_is_refused(workspace, logged):
    with pytest.raises(MlflowException, match="row 0: both 'path' and 'text' given") as raised:
        logged["pyfunc"].predict(pd.DataFrame({"path": [str(workspace["files"] / "chest.png")], "text": ["Normal Chest CT"]}))
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


def test_a_table_without_path_or_text_columns_is_refused(logged):
    with pytest.raises(MlflowException, match="expected a 'path' and/or 'text' column") as raised:
        logged["pyfunc"].predict(pd.DataFrame({"file": ["chest.png"]}))
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


# --------------------------------------------------------------------------- mlflow models serve


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# No proxy handler: a proxy from the environment must never see loopback requests.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post(url: str, payload: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
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
