"""Serving RadCLIP: one :class:`Predictor` for the CLI and an MLflow pyfunc for ``mlflow models serve``.

The :class:`Predictor` turns files (PNG/JPEG, a DICOM file or series folder, NIfTI,
``.npy``) or NumPy arrays into embeddings exactly as curation prepares records (the
same :func:`~radclip.data.curate.check_pixels` and :func:`~radclip.data.curate.normalise_loaded`,
volumes with their display range), and scores them against candidate captions (zero-shot).

:class:`RadCLIPPyfunc` wraps it for MLflow. Its input is a DataFrame with a ``path``
and/or a ``text`` column, one item per row; ``params={"candidates": [...]}`` adds
zero-shot scores for the image rows. A row that cannot be used raises an
``MlflowException`` (``INVALID_PARAMETER_VALUE``) naming the row, the file and the
problem: the scoring server answers 400 with that message and keeps serving.

:func:`log_model` logs the pyfunc with the saved RadCLIP directory and a small
``preprocess.json`` (curated sizes, the CT window for DICOM without one). The
pickled wrapper refers to this module by name, so a serving environment needs the
``radclip`` package installed: serve with ``--env-manager local`` from the project's
environment. The ``pip_requirements`` recorded are documentation, never installed.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array

from radclip.config import Params
from radclip.data.curate import check_pixels, normalise_loaded, volume_shapes
from radclip.data.dicom import load_dicom
from radclip.data.images import IMAGE_FORMATS, load_image
from radclip.data.nifti import load_nifti
from radclip.data.records import InputError, Kind, LoadedImage
from radclip.models.radclip import CONFIG_FILE, RadCLIP

MODEL_ARTIFACT = "radclip"  # context.artifacts key of the saved RadCLIP directory
PREPROCESS_ARTIFACT = "preprocess"
PREPROCESS_FILE = "preprocess.json"
PATH_COLUMN = "path"
TEXT_COLUMN = "text"
CANDIDATES_PARAM = "candidates"
ENCODE_BATCH = 32  # items per forward pass: bounds memory for long input lists
# What is recorded with the model; radclip itself must be installed where it is served.
_REQUIREMENTS = ("mlflow", "torch", "transformers", "safetensors", "numpy", "pandas", "pillow", "pydicom", "nibabel",
                 "pydantic", "pyyaml")

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.string, PATH_COLUMN, required=False),
                   ColSpec(DataType.string, TEXT_COLUMN, required=False)]),
    outputs=Schema([ColSpec(Array(DataType.double), "embedding"),
                    ColSpec(Array(DataType.double), "scores", required=False),
                    ColSpec(Array(DataType.double), "probabilities", required=False),
                    ColSpec(DataType.string, "prediction", required=False)]),
    params=ParamSchema([ParamSpec(CANDIDATES_PARAM, DataType.string, default=[], shape=(-1,))]),
)
# Text only: an image path would not exist where the model is served.
INPUT_EXAMPLE = pd.DataFrame({TEXT_COLUMN: ["Normal Chest CT"]})


# --------------------------------------------------------------------------- preprocessing config


@dataclass(frozen=True)
class Preprocessing:
    """What curation did to records, so inputs at serving time look the same to the model."""

    image_size: int  # curated 2D size
    volume: Mapping[str, tuple[int, int]]  # plane -> (slices, size)
    ct_window: tuple[float, float] | None  # (center, width) for CT DICOM that carries no window
    min_pixels: int

    @classmethod
    def from_params(cls, params: Params) -> "Preprocessing":
        curate = params.curate
        return cls(
            image_size=curate.image_size,
            volume=volume_shapes(curate),
            ct_window=default_ct_window(params),
            min_pixels=curate.min_pixels,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "volume": {plane: {"slices": slices, "size": size} for plane, (slices, size) in self.volume.items()},
            "ct_window": list(self.ct_window) if self.ct_window else None,
            "min_pixels": self.min_pixels,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocessing":
        window = data.get("ct_window")
        return cls(
            image_size=int(data["image_size"]),
            volume={plane: (int(shape["slices"]), int(shape["size"])) for plane, shape in data["volume"].items()},
            ct_window=(float(window[0]), float(window[1])) if window else None,
            min_pixels=int(data["min_pixels"]),
        )

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> "Preprocessing":
        return cls.from_dict(json.loads(Path(path).read_text()))


def default_ct_window(params: Params) -> tuple[float, float] | None:
    """The first CT window the collections configure (a CT collection's ``window``, else a
    ``windows["<Region> CT"]`` entry); None when there is none.

    Curation windows a CT by its collection; a file served alone has no collection, so a
    CT DICOM without a window of its own gets the window the training data was shown with.
    """
    for collection in params.data.collections:
        if collection.window is not None and collection.modality == "CT":
            return collection.window
        for region_modality, window in collection.windows.items():
            if region_modality.endswith(" CT"):
                return window
    return None


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class PreparedInput:
    """One input as curation would store it: uint8 ``(H, W)`` or z-scored float16 ``(S, H, W)``."""

    kind: Kind
    array: np.ndarray
    display_range: tuple[float, float] | None  # volumes: the z-scored range that maps to [0, 1]


@dataclass(frozen=True)
class ZeroShot:
    """Per input: cosine similarity to each candidate, softmax with the model's logit scale, top caption."""

    candidates: list[str]
    scores: np.ndarray  # (N, K)
    probabilities: np.ndarray  # (N, K)
    predictions: list[str]


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def load_input(path: str | Path) -> LoadedImage:
    """Read one file by its kind: image (by extension), NIfTI, ``.npy`` array, else DICOM file or folder."""
    path = Path(path)
    if _is_nifti(path):
        return load_nifti(path)
    if path.suffix.lower() in IMAGE_FORMATS:
        return load_image(path)
    if path.suffix.lower() == ".npy":
        return _load_npy(path)
    images = load_dicom(path)
    if len(images) != 1:
        raise InputError(str(path), f"{len(images)} DICOM series found; give one series (a file or a series folder)")
    return images[0]


def _load_npy(path: Path) -> LoadedImage:
    try:
        array = np.load(path, allow_pickle=False)  # never unpickle a request's file
    except FileNotFoundError:
        raise InputError(str(path), "file not found") from None
    except (OSError, ValueError) as error:
        raise InputError(str(path), f"not a readable .npy array ({type(error).__name__}: {error})") from None
    return array_input(array, str(path))


def array_input(array: np.ndarray, source: str = "<array>") -> LoadedImage:
    """A NumPy array as an input: 2D is an image (uint8 = display values), 3D a volume (axial)."""
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise InputError(source, f"{array.ndim}D array (shape {array.shape}) where a 2D image or 3D volume "
                                 "was expected")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(source, f"array of {array.dtype} where real numbers were expected")
    if array.ndim == 2:
        return LoadedImage(pixels=array.astype(np.float32), kind="2d",
                           extra={"bit_depth": 8} if array.dtype == np.uint8 else {})
    return LoadedImage(pixels=array.astype(np.float32), kind="3d", plane="axial")


# --------------------------------------------------------------------------- the predictor


class Predictor:
    """Embeddings and zero-shot scores for files, arrays and captions (the CLI and the pyfunc)."""

    def __init__(self, model: RadCLIP, preprocessing: Preprocessing):
        self.model = model.eval()
        self.preprocessing = preprocessing

    @classmethod
    def from_directory(cls, model_dir: str | Path, preprocessing: Preprocessing) -> "Predictor":
        return cls(RadCLIP.from_pretrained(model_dir), preprocessing)

    def prepare(self, source: str | Path | np.ndarray) -> PreparedInput:
        """Load (path) or wrap (array), check and normalise one input as curation does."""
        if isinstance(source, np.ndarray):
            name, image = "<array>", array_input(source)
        else:
            name, image = str(source), load_input(source)
        check_pixels(image, name, self.preprocessing.min_pixels)
        array, _, display = normalise_loaded(image, image_size=self.preprocessing.image_size,
                                             volume_shapes=self.preprocessing.volume, window=self._window(image),
                                             source=name)
        if image.kind == "2d":
            return PreparedInput("2d", array, None)
        return PreparedInput("3d", array, (float(display[0]), float(display[1])))

    def _window(self, image: LoadedImage) -> tuple[float, float] | None:
        # As curation: only CT is windowed; the file's own window, else the configured CT window.
        if image.dicom_modality != "CT":
            return None
        return image.window or self.preprocessing.ct_window

    @torch.inference_mode()
    def embed_prepared(self, prepared: Sequence[PreparedInput]) -> np.ndarray:
        """``(N, D)`` float32, in input order: 2D through ``encode_image``, volumes through ``encode_volume``."""
        out = np.zeros((len(prepared), self.model.embedding_dim), dtype=np.float32)
        # Only same-shaped arrays stack: group by kind and shape (volumes differ per plane).
        groups: dict[tuple, list[int]] = {}
        for index, item in enumerate(prepared):
            groups.setdefault((item.kind, item.array.shape), []).append(index)
        for (kind, _), indices in groups.items():
            for start in range(0, len(indices), ENCODE_BATCH):
                batch = indices[start : start + ENCODE_BATCH]
                arrays = torch.from_numpy(np.stack([prepared[i].array for i in batch]))
                if kind == "2d":
                    encoded = self.model.encode_image(arrays)
                else:
                    display = torch.tensor([prepared[i].display_range for i in batch], dtype=torch.float32)
                    encoded = self.model.encode_volume(arrays, display_range=display)
                out[batch] = encoded.float().cpu().numpy()
        return out

    def embed(self, sources: Sequence[str | Path | np.ndarray]) -> np.ndarray:
        """Files or arrays → ``(N, D)`` L2-normalised embeddings."""
        return self.embed_prepared([self.prepare(source) for source in sources])

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Captions → ``(N, D)`` L2-normalised embeddings."""
        if not texts:
            return np.zeros((0, self.model.embedding_dim), dtype=np.float32)
        return self.model.encode_text(list(texts)).float().cpu().numpy()

    @torch.inference_mode()
    def zero_shot(self, embeddings: np.ndarray, candidates: Sequence[str]) -> ZeroShot:
        """Score image embeddings ``(N, D)`` against candidate captions."""
        candidates = [str(c) for c in candidates]
        if not candidates:
            raise ValueError("zero-shot needs at least one candidate caption")
        scores = embeddings @ self.embed_texts(candidates).T
        logits = torch.from_numpy(scores) * self.model.logit_scale_exp().float().cpu()
        probabilities = torch.softmax(logits, dim=-1).numpy()
        predictions = [candidates[i] for i in probabilities.argmax(axis=1)]
        return ZeroShot(candidates, scores, probabilities, predictions)


# --------------------------------------------------------------------------- the MLflow pyfunc


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _cell(value: Any) -> str | None:
    """A DataFrame cell as text, or None when empty (missing columns and JSON nulls arrive as None/NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if text.strip() else None


class RadCLIPPyfunc(mlflow.pyfunc.PythonModel):
    """``path``/``text`` rows → ``embedding`` (+ ``scores``, ``probabilities``, ``prediction`` with candidates)."""

    def load_context(self, context) -> None:
        self.predictor = Predictor.from_directory(
            context.artifacts[MODEL_ARTIFACT], Preprocessing.read(context.artifacts[PREPROCESS_ARTIFACT])
        )

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        candidates = list((params or {}).get(CANDIDATES_PARAM) or [])
        paths, texts = self._rows(model_input)
        image_rows = list(paths)
        image_embeddings = self.predictor.embed_prepared([self._prepare(row, paths[row]) for row in image_rows])
        text_embeddings = self.predictor.embed_texts(list(texts.values()))
        embeddings = {**dict(zip(image_rows, image_embeddings)), **dict(zip(texts, text_embeddings))}
        rows = [{"embedding": embeddings[row].tolist()} for row in range(len(model_input))]
        if candidates:
            for row in rows:  # text rows keep nulls: captions are scored against images only
                row.update(scores=None, probabilities=None, prediction=None)
            if image_rows:
                result = self.predictor.zero_shot(image_embeddings, candidates)
                for k, row in enumerate(image_rows):
                    rows[row].update(scores=result.scores[k].tolist(), probabilities=result.probabilities[k].tolist(),
                                     prediction=result.predictions[k])
        return pd.DataFrame(rows, dtype=object)  # object: nulls stay None (JSON null), not NaN

    def _prepare(self, row: int, path: str) -> PreparedInput:
        try:
            return self.predictor.prepare(path)
        except InputError as error:
            raise _invalid(f"row {row}: {error}") from None
        except Exception as error:  # an unforeseen format problem: still a 400 naming the file (curation quarantines)
            raise _invalid(f"row {row}: {path}: unreadable ({type(error).__name__}: {error})") from None

    @staticmethod
    def _rows(model_input: pd.DataFrame) -> tuple[dict[int, str], dict[int, str]]:
        """Row number → path, row number → text; every row must have exactly one of them."""
        if not isinstance(model_input, pd.DataFrame):
            raise _invalid(f"expected a DataFrame with columns {PATH_COLUMN!r} and/or {TEXT_COLUMN!r}, "
                           f"got {type(model_input).__name__}")
        columns = [str(c) for c in model_input.columns]
        if not columns or set(columns) - {PATH_COLUMN, TEXT_COLUMN}:
            # Through a loaded pyfunc, columns outside the signature are already dropped: none may be left.
            raise _invalid(f"expected a {PATH_COLUMN!r} and/or {TEXT_COLUMN!r} column, got {columns or 'none of them'}")
        paths, texts = {}, {}
        for row, record in enumerate(model_input.to_dict(orient="records")):
            path, text = _cell(record.get(PATH_COLUMN)), _cell(record.get(TEXT_COLUMN))
            if (path is None) == (text is None):
                problem = "both" if path is not None else "neither"
                raise _invalid(f"row {row}: {problem} {PATH_COLUMN!r} and {TEXT_COLUMN!r} given; give one per row")
            if path is not None:
                paths[row] = path
            else:
                texts[row] = text
        return paths, texts


def _pip_requirements() -> list[str]:
    return [f"{name}=={installed_version(name)}" for name in _REQUIREMENTS]


def log_model(
    model_dir: Path, params: Params, *, name: str = "model", registered_model_name: str | None = None
) -> ModelInfo:
    """Log the RadCLIP in ``model_dir`` as a pyfunc into the active run (and register it when named)."""
    model_dir = Path(model_dir)
    if not (model_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{model_dir}: no {CONFIG_FILE}; not a RadCLIP model saved with save_pretrained")
    with tempfile.TemporaryDirectory(prefix="radclip-serving-") as scratch:
        preprocess = Preprocessing.from_params(params).write(Path(scratch) / PREPROCESS_FILE)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=RadCLIPPyfunc(),
            artifacts={MODEL_ARTIFACT: str(model_dir), PREPROCESS_ARTIFACT: str(preprocess)},
            signature=SIGNATURE,
            input_example=INPUT_EXAMPLE,
            pip_requirements=_pip_requirements(),
            registered_model_name=registered_model_name,
        )
