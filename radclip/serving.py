"""Serving RadCLIP: one :class:`Predictor` for the CLI, evaluation checks and the MLflow pyfunc.

The :class:`Predictor` turns files (PNG/JPEG/BMP/TIFF, a DICOM file or series folder,
NIfTI, ``.npy``) or NumPy arrays into embeddings through the model's own preprocessing
contract (``preprocessing.json`` saved with it, :mod:`radclip.core.preprocessing`):
the same file-type dispatcher, window rule, sizes and intensity mapping curation used
for its training data. Params are never read here.

The CT window depends on where an input comes from, as in curation: give the
``collection`` it belongs to, or its ``region`` and ``modality`` (e.g. ``Chest`` /
``CT``); without either, a CT DICOM is shown with its own window and anything else
(a NIfTI CT included) with its robust intensity range.

The MLflow pyfunc that serves it lives in :mod:`radclip.io.mlflow_pyfunc`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from radclip.core.models.radclip import RadCLIP
from radclip.core.preprocessing import ContractError, Prepared, Preprocessing
from radclip.core.records import InputError
from radclip.data.loaders import array_input, load_file

ENCODE_BATCH = 32  # items per forward pass: bounds memory for long input lists


@dataclass(frozen=True)
class Source:
    """Where an input comes from, for the window rule (all optional)."""

    collection: str | None = None
    region: str = ""
    modality: str = ""


@dataclass(frozen=True)
class ZeroShot:
    """Per input: cosine similarity to each candidate, softmax with the model's logit scale, top caption."""

    candidates: list[str]
    scores: np.ndarray  # (N, K)
    probabilities: np.ndarray  # (N, K)
    predictions: list[str]


class Predictor:
    """Embeddings and zero-shot scores for files, arrays and captions."""

    def __init__(self, model: RadCLIP, model_dir: str | Path = "<model>"):
        if model.preprocessing is None:
            raise ContractError(f"{model_dir}: the model carries no preprocessing contract (preprocessing.json); "
                                "models saved by the pipeline's stages carry the one of their training data")
        self.model = model.eval()
        self.preprocessing: Preprocessing = model.preprocessing

    @classmethod
    def from_directory(cls, model_dir: str | Path) -> Predictor:
        return cls(RadCLIP.from_pretrained(model_dir), model_dir)

    def prepare(self, source: str | Path | np.ndarray, origin: Source = Source()) -> Prepared:
        """Load (path) or wrap (array), check and normalise one input as curation does."""
        if isinstance(source, np.ndarray):
            name, image = "<array>", array_input(source)
        else:
            name, image = str(source), load_file(source)
        try:
            return self.preprocessing.prepare(image, name, collection=origin.collection, region=origin.region,
                                              modality=origin.modality)
        except ContractError as error:
            raise InputError(name, str(error)) from None

    @torch.inference_mode()
    def embed_prepared(self, prepared: Sequence[Prepared]) -> np.ndarray:
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

    def embed(self, sources: Sequence[str | Path | np.ndarray], origin: Source = Source()) -> np.ndarray:
        """Files or arrays (all from ``origin``) → ``(N, D)`` L2-normalised embeddings."""
        return self.embed_prepared([self.prepare(source, origin) for source in sources])

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
