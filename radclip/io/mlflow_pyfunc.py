"""The MLflow pyfunc that serves a :class:`~radclip.serving.Predictor` (``mlflow models serve``, ``radclip serve``).

Its input is a DataFrame, one item per row, each with exactly one of

* ``content``: an image's file bytes, base64 (PNG/JPEG/BMP/TIFF, DICOM, NIfTI, ``.npy``; the type is
  read from the bytes) — what a client normally sends;
* ``path``: a file or DICOM series folder on the *server*, accepted only under the root the server
  was started with (``RADCLIP_SERVE_PATH_ROOT``; none: paths are refused, worded alike whether the
  file exists or not);
* ``text``: a caption to embed;

and optional ``collection``, ``region`` and ``modality`` columns saying where an image comes from
(the CT window rule of the preprocessing contract); ``params={"candidates": [...]}`` adds zero-shot
scores for the image rows. A row that cannot be used (unsupported content, corrupted DICOM, wrong
array shape, an upload over ``RADCLIP_SERVE_MAX_UPLOAD_BYTES``, more rows than
``RADCLIP_SERVE_MAX_ROWS``) raises an ``MlflowException`` (``INVALID_PARAMETER_VALUE``) naming the
row and the problem: the scoring server answers 400 with that message and keeps serving.

:func:`log_model` logs it as a **model from code** (:mod:`radclip.io.pyfunc_model` defines it; nothing
is pickled) with the saved RadCLIP directory (which carries its preprocessing contract), the
``radclip`` package's own code (``code_paths``: the served model runs the code it was logged with)
and pinned requirements of every package that code imports, so ``mlflow models serve`` can build its
environment with the default environment manager where the package index is reachable, and
``--env-manager local`` serves from the project's environment offline.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array

from radclip.core.models.radclip import CONFIG_FILE
from radclip.core.preprocessing import PREPROCESSING_FILE, Prepared
from radclip.core.records import InputError
from radclip.serving import UPLOAD, Predictor, ServingPolicy, Source

MODEL_ARTIFACT = "radclip"  # context.artifacts key of the saved RadCLIP directory
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # the model from code MLflow loads
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # radclip/: logged as the model's code
PATH_COLUMN = "path"
CONTENT_COLUMN = "content"
TEXT_COLUMN = "text"
ITEM_COLUMNS = (CONTENT_COLUMN, PATH_COLUMN, TEXT_COLUMN)  # exactly one per row
SOURCE_COLUMNS = ("collection", "region", "modality")  # where an image comes from: the CT window rule
CANDIDATES_PARAM = "candidates"
# Every distribution the serving code path imports (tests/io/test_mlflow_pyfunc.py checks none is
# missing), and pyarrow, which the logged package's manifest readers use. radclip itself travels as code.
REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "pyarrow",
                "pillow", "pydicom", "nibabel")

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.string, PATH_COLUMN, required=False),
                   ColSpec(DataType.string, TEXT_COLUMN, required=False),
                   ColSpec(DataType.string, CONTENT_COLUMN, required=False),
                   *[ColSpec(DataType.string, column, required=False) for column in SOURCE_COLUMNS]]),
    outputs=Schema([ColSpec(Array(DataType.double), "embedding"),
                    ColSpec(Array(DataType.double), "scores", required=False),
                    ColSpec(Array(DataType.double), "probabilities", required=False),
                    ColSpec(DataType.string, "prediction", required=False)]),
    params=ParamSchema([ParamSpec(CANDIDATES_PARAM, DataType.string, default=[], shape=(-1,))]),
)
# Text only: an example image would be stored with every model version.
INPUT_EXAMPLE = pd.DataFrame({TEXT_COLUMN: ["Normal Chest CT"]})


# --------------------------------------------------------------------------- the MLflow pyfunc


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _cell(value: Any) -> str | None:
    """A DataFrame cell as text, or None when empty (missing columns and JSON nulls arrive as None/NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if text.strip() else None


class RadCLIPPyfunc(PythonModel):
    """``content``/``path``/``text`` rows → ``embedding`` (+ ``scores``, ``probabilities``, ``prediction``
    with candidates)."""

    def load_context(self, context) -> None:
        self.policy = ServingPolicy.from_environment()  # the serving process's environment, read once
        self.predictor = Predictor.from_directory(context.artifacts[MODEL_ARTIFACT], device=self.policy.device,
                                                  bf16=self.policy.bf16)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        candidates = list((params or {}).get(CANDIDATES_PARAM) or [])
        items, texts, origins = self._rows(model_input)
        image_rows = list(items)
        image_embeddings = self.predictor.embed_prepared(
            [self._prepare(row, *items[row], origins[row]) for row in image_rows])
        text_embeddings = self.predictor.embed_texts(list(texts.values()))
        embeddings = {**dict(zip(image_rows, image_embeddings)), **dict(zip(texts, text_embeddings))}
        rows = [{"embedding": embeddings[row].tolist()} for row in range(len(model_input))]
        if candidates:
            for row in rows:  # text rows keep nulls: captions are scored against images only
                row.update(scores=None, probabilities=None, prediction=None)
            if image_rows:
                result = self.predictor.zero_shot(image_embeddings, candidates)
                for k, image_row in enumerate(image_rows):
                    rows[image_row].update(scores=result.scores[k].tolist(),
                                           probabilities=result.probabilities[k].tolist(),
                                           prediction=result.predictions[k])
        return pd.DataFrame(rows, dtype=object)  # object: nulls stay None (JSON null), not NaN

    def _prepare(self, row: int, column: str, value: str, origin: Source) -> Prepared:
        name = UPLOAD if column == CONTENT_COLUMN else value
        try:
            if column == CONTENT_COLUMN:
                return self.predictor.prepare_upload(self._decode(value), origin)
            return self.predictor.prepare(self.policy.server_path(value), origin)
        except InputError as error:
            raise _invalid(f"row {row}: {error}") from None
        except Exception as error:  # an unforeseen format problem: still a 400 naming the input (curation quarantines)
            raise _invalid(f"row {row}: {name}: unreadable ({type(error).__name__}: {error})") from None

    def _decode(self, text: str) -> bytes:
        limit = self.policy.max_upload_bytes
        if len(text) // 4 * 3 > limit + 2:  # checked before decoding: an oversized payload is never held twice
            raise InputError(UPLOAD, f"about {len(text) // 4 * 3} bytes, over this server's limit of {limit} bytes "
                                     f"per upload")
        try:
            content = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as error:
            raise InputError(UPLOAD, f"'content' is not base64 ({error})") from None
        if len(content) > limit:
            raise InputError(UPLOAD, f"{len(content)} bytes, over this server's limit of {limit} bytes per upload")
        return content

    def _rows(self, model_input: pd.DataFrame
              ) -> tuple[dict[int, tuple[str, str]], dict[int, str], dict[int, Source]]:
        """Row number → (content or path column, value), → text, → where the image comes from."""
        if not isinstance(model_input, pd.DataFrame):
            raise _invalid(f"expected a DataFrame with a {CONTENT_COLUMN!r}, {PATH_COLUMN!r} or {TEXT_COLUMN!r} "
                           f"column, got {type(model_input).__name__}")
        columns = [str(c) for c in model_input.columns]
        if not set(columns) & set(ITEM_COLUMNS) or set(columns) - {*ITEM_COLUMNS, *SOURCE_COLUMNS}:
            # Through a loaded pyfunc, columns outside the signature are already dropped: none may be left.
            raise _invalid(f"expected a {CONTENT_COLUMN!r}, {PATH_COLUMN!r} and/or {TEXT_COLUMN!r} column "
                           f"(optional: {', '.join(SOURCE_COLUMNS)}), got {columns or 'none of them'}")
        if len(model_input) > self.policy.max_rows:
            raise _invalid(f"{len(model_input)} rows, over this server's limit of {self.policy.max_rows} per request: "
                           "split the batch")
        items, texts, origins = {}, {}, {}
        for row, record in enumerate(model_input.to_dict(orient="records")):
            given = {column: value for column in ITEM_COLUMNS if (value := _cell(record.get(column))) is not None}
            if len(given) != 1:
                choices = ", ".join(map(repr, ITEM_COLUMNS))
                names = " and ".join(map(repr, given)) if given else f"none of {choices}"
                raise _invalid(f"row {row}: {names} given; give one of {choices} per row")
            [(column, value)] = given.items()
            if column == TEXT_COLUMN:
                texts[row] = value
                continue
            items[row] = (column, value)
            collection, region, modality = (_cell(record.get(c)) for c in SOURCE_COLUMNS)
            origins[row] = Source(collection=collection, region=region or "", modality=modality or "")
        return items, texts, origins


def pip_requirements() -> list[str]:
    """:data:`REQUIREMENTS` pinned to the versions installed here (what the model was tested with)."""
    return [f"{name}=={installed_version(name)}" for name in REQUIREMENTS]


def _package_copy(scratch: Path) -> Path:
    """The radclip package's source without byte-code caches: what ``code_paths`` logs."""
    return Path(shutil.copytree(PACKAGE_DIR, scratch / PACKAGE_DIR.name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc")))


def log_model(model_dir: Path, *, name: str = "model", registered_model_name: str | None = None,
              tags: dict[str, Any] | None = None) -> ModelInfo:
    """Log the RadCLIP in ``model_dir`` (with its preprocessing contract) as a pyfunc from code into the active
    run: a LoggedModel tagged with the directory's digest (how evaluation and registration find it again,
    :func:`radclip.io.mlflow_tracking.find_logged_model`) and ``tags``; registered when named."""
    # Here, not at the top: the served model imports this module, and the tracking module's params schema
    # (pydantic, PyYAML) is no part of serving.
    from radclip.io import mlflow_tracking as tracking

    model_dir = Path(model_dir)
    for required, what in ((CONFIG_FILE, "not a RadCLIP model saved with save_pretrained"),
                           (PREPROCESSING_FILE, "no preprocessing contract: serving could not prepare inputs")):
        if not (model_dir / required).is_file():
            raise FileNotFoundError(f"{model_dir}: no {required}; {what}")
    with tempfile.TemporaryDirectory(prefix="radclip-code-") as scratch:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts={MODEL_ARTIFACT: str(model_dir)},
            code_paths=[str(_package_copy(Path(scratch)))],
            signature=SIGNATURE,
            input_example=INPUT_EXAMPLE,
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name,
            tags={**(tags or {}), tracking.TAG_MODEL_DIGEST: tracking.model_digest(model_dir)},
        )


# --------------------------------------------------------------------------- the scoring server


def serve_command(model_uri: str, *, host: str, port: int, workers: int) -> list[str]:
    """``mlflow models serve`` for ``model_uri`` from this environment (``--env-manager local``: it has
    radclip's pinned requirements already, and needs no package index)."""
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
            "-h", host, "-p", str(port), "-w", str(workers)]


def serve(model_uri: str, policy: ServingPolicy, *, host: str, port: int, workers: int) -> int:
    """Run MLflow's scoring server for ``model_uri`` until it stops (Ctrl-C stops it); its exit status.

    The policy reaches the server's workers through their environment (``ServingPolicy.from_environment``
    reads it when the model loads); the tracking and registry URIs are the ones this process uses.
    """
    env = {**os.environ, **policy.environment(),
           "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "MLFLOW_REGISTRY_URI": mlflow.get_registry_uri(),
           # mlflow starts uvicorn by name: this environment's must come first on PATH
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    # Its own session, so stopping its process group stops the uvicorn workers it starts too; Ctrl-C or a
    # SIGTERM to this process stops that group (a terminal's Ctrl-C does not reach another session).
    server = subprocess.Popen(serve_command(model_uri, host=host, port=port, workers=workers), env=env,
                              start_new_session=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return server.wait()
    except KeyboardInterrupt:
        stop_server(server)
        return 130 if server.returncode is None or server.returncode < 0 else server.returncode
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_server(server: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the server's process group, SIGKILL if it lingers."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=timeout)
