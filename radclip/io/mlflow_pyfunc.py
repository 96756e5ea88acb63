"""The MLflow pyfunc that serves a :class:`~radclip.serving.Predictor` (``mlflow models serve``).

Its input is a DataFrame with a ``path`` and/or a ``text`` column, one item per row,
and optional ``collection``, ``region`` and ``modality`` columns saying where an image
comes from (the CT window rule of the preprocessing contract); ``params={"candidates":
[...]}`` adds zero-shot scores for the image rows. A row that cannot be used raises an
``MlflowException`` (``INVALID_PARAMETER_VALUE``) naming the row, the file and the
problem: the scoring server answers 400 with that message and keeps serving.

:func:`log_model` logs the pyfunc with the saved RadCLIP directory, which carries its
preprocessing contract. The pickled wrapper refers to this module by name, so a
serving environment needs the ``radclip`` package installed: serve with
``--env-manager local`` from the project's environment. The ``pip_requirements``
recorded are documentation, never installed.
"""

from __future__ import annotations

import math
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
from radclip.serving import Predictor, Source

MODEL_ARTIFACT = "radclip"  # context.artifacts key of the saved RadCLIP directory
PATH_COLUMN = "path"
TEXT_COLUMN = "text"
SOURCE_COLUMNS = ("collection", "region", "modality")  # where an image comes from: the CT window rule
CANDIDATES_PARAM = "candidates"
# What is recorded with the model; radclip itself must be installed where it is served.
_REQUIREMENTS = ("mlflow", "torch", "transformers", "safetensors", "numpy", "pandas", "pillow", "pydicom", "nibabel",
                 "pydantic", "pyyaml")

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.string, PATH_COLUMN, required=False),
                   ColSpec(DataType.string, TEXT_COLUMN, required=False),
                   *[ColSpec(DataType.string, column, required=False) for column in SOURCE_COLUMNS]]),
    outputs=Schema([ColSpec(Array(DataType.double), "embedding"),
                    ColSpec(Array(DataType.double), "scores", required=False),
                    ColSpec(Array(DataType.double), "probabilities", required=False),
                    ColSpec(DataType.string, "prediction", required=False)]),
    params=ParamSchema([ParamSpec(CANDIDATES_PARAM, DataType.string, default=[], shape=(-1,))]),
)
# Text only: an image path would not exist where the model is served.
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
    """``path``/``text`` rows → ``embedding`` (+ ``scores``, ``probabilities``, ``prediction`` with candidates)."""

    def load_context(self, context) -> None:
        self.predictor = Predictor.from_directory(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        candidates = list((params or {}).get(CANDIDATES_PARAM) or [])
        paths, texts, origins = self._rows(model_input)
        image_rows = list(paths)
        image_embeddings = self.predictor.embed_prepared(
            [self._prepare(row, paths[row], origins[row]) for row in image_rows])
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

    def _prepare(self, row: int, path: str, origin: Source) -> Prepared:
        try:
            return self.predictor.prepare(path, origin)
        except InputError as error:
            raise _invalid(f"row {row}: {error}") from None
        except Exception as error:  # an unforeseen format problem: still a 400 naming the file (curation quarantines)
            raise _invalid(f"row {row}: {path}: unreadable ({type(error).__name__}: {error})") from None

    @staticmethod
    def _rows(model_input: pd.DataFrame) -> tuple[dict[int, str], dict[int, str], dict[int, Source]]:
        """Row number → path, → text, → where the image comes from; every row has a path or a text."""
        if not isinstance(model_input, pd.DataFrame):
            raise _invalid(f"expected a DataFrame with columns {PATH_COLUMN!r} and/or {TEXT_COLUMN!r}, "
                           f"got {type(model_input).__name__}")
        columns = [str(c) for c in model_input.columns]
        if not set(columns) & {PATH_COLUMN, TEXT_COLUMN} or set(columns) - {PATH_COLUMN, TEXT_COLUMN, *SOURCE_COLUMNS}:
            # Through a loaded pyfunc, columns outside the signature are already dropped: none may be left.
            raise _invalid(f"expected a {PATH_COLUMN!r} and/or {TEXT_COLUMN!r} column (optional: "
                           f"{', '.join(SOURCE_COLUMNS)}), got {columns or 'none of them'}")
        paths, texts, origins = {}, {}, {}
        for row, record in enumerate(model_input.to_dict(orient="records")):
            path, text = _cell(record.get(PATH_COLUMN)), _cell(record.get(TEXT_COLUMN))
            if (path is None) == (text is None):
                problem = "both" if path is not None else "neither"
                raise _invalid(f"row {row}: {problem} {PATH_COLUMN!r} and {TEXT_COLUMN!r} given; give one per row")
            if path is not None:
                paths[row] = path
                collection, region, modality = (_cell(record.get(column)) for column in SOURCE_COLUMNS)
                origins[row] = Source(collection=collection, region=region or "", modality=modality or "")
            else:
                assert text is not None  # exactly one of path and text is given (checked above)
                texts[row] = text
        return paths, texts, origins


def _pip_requirements() -> list[str]:
    return [f"{name}=={installed_version(name)}" for name in _REQUIREMENTS]


def log_model(model_dir: Path, *, name: str = "model", registered_model_name: str | None = None) -> ModelInfo:
    """Log the RadCLIP in ``model_dir`` (with its preprocessing contract) as a pyfunc into the active run
    (and register it when named)."""
    model_dir = Path(model_dir)
    for required, what in ((CONFIG_FILE, "not a RadCLIP model saved with save_pretrained"),
                           (PREPROCESSING_FILE, "no preprocessing contract: serving could not prepare inputs")):
        if not (model_dir / required).is_file():
            raise FileNotFoundError(f"{model_dir}: no {required}; {what}")
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=RadCLIPPyfunc(),
        artifacts={MODEL_ARTIFACT: str(model_dir)},
        signature=SIGNATURE,
        input_example=INPUT_EXAMPLE,
        pip_requirements=_pip_requirements(),
        registered_model_name=registered_model_name,
    )
