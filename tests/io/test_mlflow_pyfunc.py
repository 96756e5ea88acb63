"""Serving: the MLflow pyfunc (radclip.io.mlflow_pyfunc around radclip.serving.Predictor) embeds uploaded bytes
and server-side files as the pipeline embeds their curated records, zero-shot scores, bad rows fail naming the
row and the problem, server-side paths are read only under the serving root, the model is logged from code
with its package and complete requirements, and `radclip serve` answers the registered model by alias."""

from __future__ import annotations

import base64
import json
import os
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
import yaml
from helpers import tiny_params
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from PIL import Image
from tracking_server import free_port

from radclip.core.models import RadCLIP
from radclip.core.preprocessing import ContractError, Preprocessing
from radclip.data.curate import curate
from radclip.data.dicom_write import write_dicom_image, write_dicom_series
from radclip.data.shards import CuratedDataset
from radclip.io import mlflow_pyfunc
from radclip.io import mlflow_tracking as tracking
from radclip.serving import ENV_DEVICE, ENV_PATH_ROOT, Predictor, ServingPolicy
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
    """The pyfunc logged and registered (version 1), loaded back with mlflow.pyfunc.load_model in a process
    whose serving root is the input folder (server-side paths under it are read)."""
    with tracking.start_run(workspace["params"], stage="serving-test"):
        info = mlflow_pyfunc.log_model(workspace["model_dir"], registered_model_name=MODEL_NAME)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_PATH_ROOT, str(workspace["files"]))
        pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    return {"info": info, "pyfunc": pyfunc}


def _with_policy(logged, policy: ServingPolicy):
    """The loaded pyfunc as a server started with ``policy`` would serve it (the policy is read at load)."""
    served = logged["pyfunc"].unwrap_python_model()
    previous, served.policy = served.policy, policy
    return served, previous


def yaml_load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


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
    with pytest.raises(MlflowException, match="row 0: 'path' and 'text' given; give one of") as raised:
        logged["pyfunc"].predict(pd.DataFrame({"path": [str(workspace["files"] / "chest.png")],
                                               "text": ["Normal Chest CT"]}))
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


def test_a_table_without_path_or_text_columns_is_refused(logged):
    with pytest.raises(MlflowException, match="expected a 'content', 'path' and/or 'text' column") as raised:
        logged["pyfunc"].predict(pd.DataFrame({"file": ["chest.png"]}))
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


def test_the_logged_signature_has_optional_path_text_and_source_columns_and_candidates(logged):
    signature = logged["info"].signature
    assert signature.to_dict() == mlflow_pyfunc.SIGNATURE.to_dict()
    inputs = {spec.name: spec for spec in signature.inputs.inputs}
    assert list(inputs) == [mlflow_pyfunc.PATH_COLUMN, mlflow_pyfunc.TEXT_COLUMN, mlflow_pyfunc.CONTENT_COLUMN,
                            "collection", "region", "modality"]
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


# --------------------------------------------------------------------------- uploads and server-side paths

# Uploadable files (a DICOM series folder is not one file): each is embedded from its bytes as from its path.
UPLOADS = ["chest.png", "xray.dcm", "brain.nii.gz"]


def _extra_uploads(files: Path) -> dict[str, Path]:
    """The same chest image as JPEG and as a 2D .npy, and the brain volume as uncompressed .nii."""
    out = files.parent / "extra"
    out.mkdir(exist_ok=True)
    image = np.asarray(Image.open(files / "chest.png"))
    Image.fromarray(image).save(out / "chest.jpg", quality=95)
    np.save(out / "chest.npy", image.astype(np.float32))
    nib.save(nib.load(files / "brain.nii.gz"), out / "brain.nii")
    return {name: out / name for name in ("chest.jpg", "chest.npy", "brain.nii")}


def test_uploaded_bytes_are_embedded_as_the_same_files_on_disk(workspace, logged):
    files = workspace["files"]
    paths = [files / name for name in UPLOADS]
    expected = _curated_embeddings(workspace, UPLOADS)  # their curated records
    regions = [INPUTS[name] for name in UPLOADS]
    uploads = pd.DataFrame({"content": [_b64(path.read_bytes()) for path in paths],
                            "region": [r for r, _ in regions], "modality": [m for _, m in regions]})
    np.testing.assert_allclose(np.array(logged["pyfunc"].predict(uploads)["embedding"].tolist()), expected, atol=1e-5)

    extra = _extra_uploads(files)  # not curated: the reference is the Predictor on the file's path
    predictor = Predictor.from_directory(workspace["model_dir"])
    reference = predictor.embed(list(extra.values()))
    served = logged["pyfunc"].predict(pd.DataFrame({"content": [_b64(p.read_bytes()) for p in extra.values()]}))
    np.testing.assert_allclose(np.array(served["embedding"].tolist()), reference, atol=1e-5)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"GIF89a" + bytes(64), "unsupported content: not PNG, JPEG"),
     ("corrupt.dcm", "truncated"),
     ("four_d.npy", "4D array"),
     (b"\x1f\x8b" + bytes(40), "unsupported content")],
    ids=["gif", "corrupted-dicom", "4d-array", "not-gzip"],
)
def test_bad_uploads_raise_invalid_parameter_naming_the_row_and_problem(workspace, logged, content, problem):
    data = content if isinstance(content, bytes) else (workspace["files"] / content).read_bytes()
    with pytest.raises(MlflowException) as raised:
        logged["pyfunc"].predict(pd.DataFrame({"content": [_b64((workspace["files"] / "chest.png").read_bytes()),
                                                           _b64(data)]}))
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    assert raised.value.message.startswith("row 1: <uploaded content>: ")
    assert problem in raised.value.message
    assert str(workspace["files"]) not in raised.value.message and "radclip-upload-" not in raised.value.message


def test_content_that_is_not_base64_is_refused(logged):
    with pytest.raises(MlflowException, match="row 0: <uploaded content>: 'content' is not base64"):
        logged["pyfunc"].predict(pd.DataFrame({"content": ["not base64!"]}))


def test_uploads_over_the_limit_and_requests_over_the_row_limit_are_refused(workspace, logged):
    png = _b64((workspace["files"] / "chest.png").read_bytes())
    served, previous = _with_policy(logged, ServingPolicy(path_root=workspace["files"], max_upload_bytes=200,
                                                          max_rows=3))
    try:
        with pytest.raises(MlflowException, match=r"row 0: <uploaded content>: about \d+ bytes, over this server's "
                                                  "limit of 200 bytes per upload"):
            logged["pyfunc"].predict(pd.DataFrame({"content": [png]}))
        with pytest.raises(MlflowException, match="4 rows, over this server's limit of 3 per request"):
            logged["pyfunc"].predict(pd.DataFrame({"text": ["a", "b", "c", "d"]}))
        assert len(logged["pyfunc"].predict(pd.DataFrame({"text": ["a", "b", "c"]}))) == 3
    finally:
        served.policy = previous


def test_server_side_paths_outside_the_root_are_refused_alike_whether_they_exist_or_not(workspace, logged, tmp_path):
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes((workspace["files"] / "chest.png").read_bytes())
    escape = workspace["files"] / "link.png"  # a symlink under the root to a file outside it
    escape.symlink_to(outside)
    try:
        messages = {}
        for name, path in {"existing": outside, "missing": tmp_path / "missing.png", "symlink": escape,
                           "dotdot": workspace["files"] / ".." / "model" / "config.json"}.items():
            with pytest.raises(MlflowException) as raised:
                logged["pyfunc"].predict(pd.DataFrame({"path": [str(path)]}))
            assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
            messages[name] = raised.value.message.replace(str(path), "<path>")
        assert set(messages.values()) == {"row 0: <path>: server-side paths must lie under the serving root; "
                                          "send the file's bytes as 'content'"}
        # relative paths are read under the root
        relative = logged["pyfunc"].predict(pd.DataFrame({"path": ["chest.png"]}))
        absolute = logged["pyfunc"].predict(pd.DataFrame({"path": [str(workspace["files"] / "chest.png")]}))
        assert relative["embedding"][0] == absolute["embedding"][0]
    finally:
        escape.unlink()


def test_without_a_root_no_server_side_path_is_read(workspace, logged):
    served, previous = _with_policy(logged, ServingPolicy(path_root=None))
    try:
        for path in (workspace["files"] / "chest.png", workspace["files"] / "missing.png"):
            with pytest.raises(MlflowException, match="server-side paths are not accepted here; send the file's "
                                                      "bytes as 'content'"):
                logged["pyfunc"].predict(pd.DataFrame({"path": [str(path)]}))
    finally:
        served.policy = previous


def test_the_policy_round_trips_through_the_environment_and_refuses_bad_values(tmp_path):
    policy = ServingPolicy(path_root=tmp_path, max_upload_bytes=1234, max_rows=7, device="cpu", bf16=False)
    assert ServingPolicy.from_environment(policy.environment()) == policy
    assert ServingPolicy.from_environment({}) == ServingPolicy()
    assert (ServingPolicy().device, ServingPolicy().bf16) == ("auto", True)
    with pytest.raises(ValueError, match="RADCLIP_SERVE_MAX_ROWS='many' is not a whole number"):
        ServingPolicy.from_environment({"RADCLIP_SERVE_MAX_ROWS": "many"})
    with pytest.raises(ValueError, match="RADCLIP_SERVE_BF16='yes': expected 1 or 0"):
        ServingPolicy.from_environment({"RADCLIP_SERVE_BF16": "yes"})
    with pytest.raises(ValueError, match="serving device must be one of auto, cpu, cuda, got 'gpu'"):
        ServingPolicy.from_environment({"RADCLIP_SERVE_DEVICE": "gpu"})
    with pytest.raises(ValueError, match="is not a directory"):
        ServingPolicy(path_root=tmp_path / "absent")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal needs a machine without a GPU")
def test_a_server_told_to_run_on_cuda_without_a_gpu_refuses_when_it_loads_the_model(logged):
    from radclip.core.device import DeviceUnavailable

    assert logged["pyfunc"].unwrap_python_model().predictor.model.device == torch.device("cpu")  # auto, no GPU
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_DEVICE, "cuda")
        with pytest.raises(DeviceUnavailable, match="device 'cuda' was asked for, but torch sees no CUDA device"):
            mlflow.pyfunc.load_model(logged["info"].model_uri)


# --------------------------------------------------------------------------- the logged model


def test_the_model_is_logged_from_code_with_the_package_and_pinned_requirements(logged, tmp_path):
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged["info"].model_uri, dst_path=str(tmp_path)))
    flavor = yaml_load(local / "MLmodel")["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # a model from code, not a pickle
    assert (local / mlflow_pyfunc.MODEL_CODE.name).read_text() == mlflow_pyfunc.MODEL_CODE.read_text()
    assert "python_model" not in flavor and not list(local.rglob("*.pkl"))
    code = local / flavor["code"] / "radclip"
    assert (code / "io" / "pyfunc_model.py").is_file() and (code / "serving.py").is_file()
    assert not list(code.rglob("__pycache__"))
    requirements = (local / "requirements.txt").read_text().split()
    for name in mlflow_pyfunc.REQUIREMENTS:
        assert any(line.lower().startswith(f"{name.lower()}==") for line in requirements), name


_IMPORTED_BY_SERVING = """
import ast, base64, json, sys
from importlib.metadata import packages_distributions
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
uploads = [base64.b64encode(open(path, "rb").read()).decode() for path in sys.argv[2:]]
print(model.predict(pd.DataFrame({"content": uploads})).shape, file=sys.stderr)
names = set()
for module in list(sys.modules.values()):
    if module.__name__.startswith("radclip") and getattr(module, "__file__", None):
        for node in ast.walk(ast.parse(open(module.__file__).read())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
distributions = packages_distributions()
print(json.dumps(sorted({d for name in names for d in distributions.get(name, [])})))
"""


def test_every_package_the_served_code_imports_is_a_requirement(workspace, logged):
    """In a fresh process: load the logged model, serve an upload of each type, read the imports of every radclip
    module that ran (its source, not a list kept by hand), and map them to their distributions."""
    uploads = [str(workspace["files"] / name) for name in UPLOADS]
    result = subprocess.run([sys.executable, "-c", _IMPORTED_BY_SERVING, logged["info"].model_uri, *uploads],
                            capture_output=True, text=True, timeout=300, cwd=workspace["tmp"])
    assert result.returncode == 0, result.stderr[-3000:]
    imported = set(json.loads(result.stdout.strip().splitlines()[-1])) - {"radclip"}
    assert {"torch", "pydicom", "nibabel", "pillow"} <= imported  # the check saw the loaders run
    declared = {name.lower() for name in mlflow_pyfunc.REQUIREMENTS}
    # mlflow-skinny and mlflow-tracing are what the mlflow distribution itself installs
    missing = {d for d in imported if d.lower() not in declared and not d.lower().startswith("mlflow")}
    assert not missing, f"imported when serving but not in REQUIREMENTS: {sorted(missing)}"


# --------------------------------------------------------------------------- radclip serve


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
            pytest.fail(f"radclip serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with _LOCAL.open(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:  # not listening yet
            time.sleep(0.3)
    pytest.fail(f"radclip serve did not answer /ping within {SERVER_START_S}s:\n{log.read_text()[-3000:]}")


def _serve_command(workspace, *args: str) -> list[str]:
    params_file = workspace["tmp"] / "serve-params.yaml"
    raw = workspace["params"].with_values({"registry.model_name": MODEL_NAME}).model_dump(mode="json", by_alias=True)
    params_file.write_text(yaml.safe_dump(raw))
    return [str(Path(sys.executable).parent / "radclip"), "--params", str(params_file), "serve", *args]


def test_radclip_serve_refuses_an_alias_that_names_no_version(workspace, logged):
    result = subprocess.run(_serve_command(workspace, "--alias", "no-such-alias", "--port", str(free_port())),
                            capture_output=True, text=True, timeout=120, env={**os.environ})
    assert result.returncode == 1
    assert f"registered model '{MODEL_NAME}' has no alias 'no-such-alias'" in result.stderr


def test_radclip_serve_answers_the_champion_and_survives_bad_requests(workspace, logged):
    MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", logged["info"].registered_model_version)
    files, tmp = workspace["files"], workspace["tmp"]
    port = free_port()
    log = tmp / "server.log"
    command = _serve_command(workspace, "--port", str(port), "--path-root", str(files), "--max-upload-mb", "1")
    with log.open("w") as output:
        # Own session (process group): the finally block stops radclip, mlflow and uvicorn together.
        server = subprocess.Popen(command, env={**os.environ}, stdout=output, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    png = _b64((files / "chest.png").read_bytes())
    good = {"dataframe_split": {"columns": ["content"], "data": [[png], [png]]}, "params": {"candidates": CAPTIONS}}
    try:
        _wait_for_ping(url, server, log)
        status, body = _post(f"{url}/invocations", good)
        assert status == 200, body
        answers = json.loads(body)["predictions"]
        assert len(answers) == 2 and answers[0]["embedding"] == answers[1]["embedding"]
        assert len(answers[0]["embedding"]) == 16
        assert sum(answers[0]["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert answers[0]["prediction"] == CAPTIONS[int(np.argmax(answers[0]["probabilities"]))]
        status, body = _post(f"{url}/invocations", {"dataframe_split": {"columns": ["path"], "data": [["chest.png"]]}})
        assert status == 200, body  # a path under the root
        np.testing.assert_allclose(json.loads(body)["predictions"][0]["embedding"], answers[0]["embedding"], atol=1e-6)

        corrupt = _b64((files / "corrupt.dcm").read_bytes())
        bad = {"corrupted DICOM": (["content"], [[corrupt]], "truncated"),
               "unsupported content": (["content"], [[_b64(b"GIF89a" + bytes(64))]], "unsupported content"),
               "wrong shape": (["content"], [[_b64((files / "four_d.npy").read_bytes())]], "4D array"),
               "oversized": (["content"], [[_b64(bytes(2 * 2**20))]], "over this server's limit"),
               "outside the root": (["path"], [[str(tmp / "model" / "config.json")]], "under the serving root")}
        for what, (columns, data, problem) in bad.items():
            status, body = _post(f"{url}/invocations", {"dataframe_split": {"columns": columns, "data": data}})
            assert status == 400, (what, body)
            assert problem in json.loads(body)["message"] and "INVALID_PARAMETER_VALUE" in body, (what, body)

        status, body = _post(f"{url}/invocations", good)  # still serving after the bad requests
        assert status == 200, body
        assert json.loads(body)["predictions"][0]["embedding"] == answers[0]["embedding"]
    finally:
        mlflow_pyfunc.stop_server(server)
