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

A served model takes an image as its **bytes** (:meth:`Predictor.prepare_upload`): the type is
read from the content itself (PNG, JPEG, BMP, TIFF, DICOM, NIfTI-1/2 plain or gzipped, ``.npy``),
the bytes go to a private temporary file with that type's suffix and through the same
dispatcher as a path, so an upload is prepared exactly as the same file on disk. Server-side
paths are a server's choice (:class:`ServingPolicy`): only under a configured root, and a path
outside it is refused with one message whether or not it exists, so a caller cannot probe the
server's files.

The MLflow pyfunc that serves it lives in :mod:`radclip.io.mlflow_pyfunc`.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from radclip.core.device import DEVICE_NAMES, bf16_autocast, resolve_device
from radclip.core.models.radclip import RadCLIP
from radclip.core.preprocessing import ContractError, Prepared, Preprocessing
from radclip.core.records import InputError, LoadedImage
from radclip.data.loaders import array_input, load_file

ENCODE_BATCH = 32  # items per forward pass: bounds memory for long input lists
UPLOAD = "<uploaded content>"  # an upload's name in error messages
UPLOAD_TYPES = "PNG, JPEG, BMP, TIFF, DICOM (Part 10), NIfTI (.nii/.nii.gz) or .npy"
# Environment of a serving process (read once when the model loads): see ServingPolicy.
ENV_PATH_ROOT = "RADCLIP_SERVE_PATH_ROOT"
ENV_MAX_UPLOAD_BYTES = "RADCLIP_SERVE_MAX_UPLOAD_BYTES"
ENV_MAX_ROWS = "RADCLIP_SERVE_MAX_ROWS"
ENV_DEVICE = "RADCLIP_SERVE_DEVICE"  # auto | cpu | cuda
ENV_BF16 = "RADCLIP_SERVE_BF16"  # 1 | 0: bf16 autocast on CUDA
DEFAULT_MAX_UPLOAD_BYTES = 64 * 2**20  # a 512 x 512 x 120 int16 CT is 60 MiB
DEFAULT_MAX_ROWS = 256
_NIFTI_HEADER = 544  # bytes that hold the magic of NIfTI-1 (348 + 4) and NIfTI-2 (540 + ...)


def _is_nifti(head: bytes) -> bool:
    for order in ("little", "big"):
        size = int.from_bytes(head[:4], order) if len(head) >= 4 else 0
        if size == 348 and head[344:348] in (b"n+1\0", b"ni1\0"):
            return True
        if size == 540 and head[4:8] in (b"n+2\0", b"ni2\0"):
            return True
    return False


def upload_suffix(content: bytes) -> str | None:
    """The file suffix the dispatcher reads ``content`` by, from its leading bytes; None if unknown."""
    if content.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if content.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if content.startswith(b"BM"):
        return ".bmp"
    if content[:4] in (b"II*\0", b"MM\0*"):
        return ".tif"
    if content[128:132] == b"DICM":
        return ".dcm"
    if content.startswith(b"\x93NUMPY"):
        return ".npy"
    if content.startswith(b"\x1f\x8b"):
        try:  # only as much as the header: a gzip bomb is never inflated here
            head = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(content, _NIFTI_HEADER)
        except zlib.error:
            return None
        return ".nii.gz" if _is_nifti(head) else None
    return ".nii" if _is_nifti(content[:_NIFTI_HEADER]) else None


def load_upload(content: bytes, name: str = UPLOAD) -> LoadedImage:
    """An uploaded file's bytes → the image the dispatcher reads from the same file on disk."""
    suffix = upload_suffix(content)
    if suffix is None:
        raise InputError(name, f"unsupported content: not {UPLOAD_TYPES} (send a DICOM series as one "
                               "multi-frame file)")
    with tempfile.TemporaryDirectory(prefix="radclip-upload-") as scratch:
        path = Path(scratch) / f"upload{suffix}"
        path.write_bytes(content)
        try:
            return load_file(path)  # arrays are read into memory before the folder goes
        except InputError as error:
            raise InputError(name, error.reason) from None
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise InputError(name, f"truncated or corrupted {suffix} content ({type(error).__name__})") from None


@dataclass(frozen=True)
class ServingPolicy:
    """What a serving process accepts: server-side paths only under ``path_root`` (none: uploads only),
    uploads up to ``max_upload_bytes``, requests up to ``max_rows`` rows; and where its model runs (``device``,
    see :func:`radclip.core.device.resolve_device`; ``bf16`` autocast on CUDA)."""

    path_root: Path | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_rows: int = DEFAULT_MAX_ROWS
    device: str = "auto"
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.max_rows < 1:
            raise ValueError(f"max_upload_bytes and max_rows must be positive, got {self.max_upload_bytes} "
                             f"and {self.max_rows}")
        if self.device not in DEVICE_NAMES:
            raise ValueError(f"serving device must be one of {', '.join(DEVICE_NAMES)}, got {self.device!r}")
        if self.path_root is not None and not Path(self.path_root).is_dir():
            raise ValueError(f"serving path root {self.path_root} is not a directory")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> ServingPolicy:
        """From ``RADCLIP_SERVE_PATH_ROOT``, ``RADCLIP_SERVE_MAX_UPLOAD_BYTES``, ``RADCLIP_SERVE_MAX_ROWS``,
        ``RADCLIP_SERVE_DEVICE`` and ``RADCLIP_SERVE_BF16``."""
        def number(name: str, default: int) -> int:
            text = environ.get(name, "").strip()
            try:
                return int(text) if text else default
            except ValueError:
                raise ValueError(f"{name}={text!r} is not a whole number") from None

        root = environ.get(ENV_PATH_ROOT, "").strip()
        bf16 = environ.get(ENV_BF16, "1").strip()
        if bf16 not in ("0", "1"):
            raise ValueError(f"{ENV_BF16}={bf16!r}: expected 1 or 0")
        return cls(path_root=Path(root).resolve() if root else None,
                   max_upload_bytes=number(ENV_MAX_UPLOAD_BYTES, DEFAULT_MAX_UPLOAD_BYTES),
                   max_rows=number(ENV_MAX_ROWS, DEFAULT_MAX_ROWS),
                   device=environ.get(ENV_DEVICE, "").strip() or "auto", bf16=bf16 == "1")

    def environment(self) -> dict[str, str]:
        """The environment variables :meth:`from_environment` reads this policy back from."""
        values = {ENV_MAX_UPLOAD_BYTES: str(self.max_upload_bytes), ENV_MAX_ROWS: str(self.max_rows),
                  ENV_DEVICE: self.device, ENV_BF16: "1" if self.bf16 else "0"}
        return {**values, ENV_PATH_ROOT: str(self.path_root) if self.path_root is not None else ""}

    def server_path(self, text: str) -> Path:
        """The path a request names, if this server reads it: under the root after resolving ``..`` and
        symlinks. Refusals are worded the same for files that exist and files that do not."""
        if self.path_root is None:
            raise InputError(text, "server-side paths are not accepted here; send the file's bytes as 'content'")
        root = self.path_root.resolve()
        path = (root / text).resolve()  # an absolute `text` replaces root here; the check below decides
        if not path.is_relative_to(root):
            raise InputError(text, "server-side paths must lie under the serving root; send the file's bytes "
                                   "as 'content'")
        return path


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

    def __init__(self, model: RadCLIP, model_dir: str | Path = "<model>", *, bf16: bool = True):
        if model.preprocessing is None:
            raise ContractError(f"{model_dir}: the model carries no preprocessing contract (preprocessing.json); "
                                "models saved by the pipeline's stages carry the one of their training data")
        self.model = model.eval()
        self.preprocessing: Preprocessing = model.preprocessing
        self.bf16 = bf16  # autocast on CUDA; outputs are float32 either way

    @classmethod
    def from_directory(cls, model_dir: str | Path, *, device: str = "auto", bf16: bool = True) -> Predictor:
        """The model in ``model_dir`` on ``device`` (``auto`` | ``cpu`` | ``cuda``)."""
        return cls(RadCLIP.from_pretrained(model_dir, device=resolve_device(device)), model_dir, bf16=bf16)

    def _precision(self) -> contextlib.AbstractContextManager:
        return bf16_autocast(self.model.device, self.bf16)

    def prepare(self, source: str | Path | np.ndarray, origin: Source = Source()) -> Prepared:
        """Load (path) or wrap (array), check and normalise one input as curation does."""
        if isinstance(source, np.ndarray):
            name, image = "<array>", array_input(source)
        else:
            name, image = str(source), load_file(source)
        return self._by_contract(image, name, origin)

    def prepare_upload(self, content: bytes, origin: Source = Source(), name: str = UPLOAD) -> Prepared:
        """Prepare an uploaded file's bytes (type read from the content) exactly as the file on disk."""
        return self._by_contract(load_upload(content, name), name, origin)

    def _by_contract(self, image: LoadedImage, name: str, origin: Source) -> Prepared:
        """A loaded input checked and normalised by the model's preprocessing contract, as curation does."""
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
                with self._precision():
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
        with self._precision():
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
