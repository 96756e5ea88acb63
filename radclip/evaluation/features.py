"""Frozen features of an evaluation suite: 2D images through the image encoder, volumes through
the slice cache and the slice pooling adapter (the 2D encoder is frozen, so cached slices are exact)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from radclip.core.device import bf16_autocast
from radclip.data.shards import CuratedDataset, validation_query
from radclip.data.slice_cache import IN_PROCESS, BatchEngine


@dataclass
class SuiteFeatures:
    suite: str
    kind: str  # "2d" | "3d"
    features: np.ndarray  # (N, D), L2-normalised
    labels: np.ndarray  # (N,) class names
    patients: np.ndarray  # (N,) patient hashes: folds are split by these
    captions: np.ndarray  # (N,) the record's caption (the correct matching candidate)
    conditions: np.ndarray  # (N,) "|"-joined conditions ("" = normal): multi-label targets
    source_paths: np.ndarray  # (N,) file relative to the collection root (curation's source_path)
    region_modality: tuple[str, str]  # e.g. ("Chest", "CT")
    attention: np.ndarray | None = None  # (N, S) pooling weights over slices (3D only)
    slice_counts: np.ndarray | None = None  # (N,) valid slices per volume (3D only)


def _region_modality(table: pd.DataFrame) -> tuple[str, str]:
    return (str(table["region"].iloc[0]), str(table["modality"].iloc[0])) if len(table) else ("", "")


VALIDATION = "validation"  # SuiteFeatures.suite of the training collections' validation split


def image_features(model, curated_dir: Path, collection: str, *, batch_size: int = 128,
                   engine: BatchEngine = IN_PROCESS) -> SuiteFeatures:
    """A collection's 2D records through the image encoder, run by ``engine`` (in this process, or Ray Data
    actors: :func:`radclip.jobs._inference.batch_engine`); the features are the same either way (within bf16
    round-off where the engine autocasts on CUDA)."""
    data = CuratedDataset(curated_dir, query=f"collection == '{collection}' and kind == '2d'")
    return _image_features(model, data, collection, batch_size, engine)


class ImageBatchEncoder:
    """Encodes batch ``i`` of a curated selection: its images read from the curated shards (memory-mapped, opened
    in whichever process runs it), ``(B, D)`` float32 out. Plain data and a model: it pickles, so a Ray Data actor
    on any node that mounts the curated data can run it."""

    def __init__(self, model, curated_dir: Path, query: str | None, batch_size: int, device: str, bf16: bool):
        self.model, self.curated_dir, self.query, self.batch_size = model, Path(curated_dir), query, batch_size
        self.device, self.bf16 = device, bf16
        self.data: CuratedDataset | None = None

    def __call__(self, batch_number: int) -> np.ndarray:
        if self.data is None:  # first call in this process: open the data, put the model on its device
            self.data = CuratedDataset(self.curated_dir, query=self.query)
            self.model.to(self.device).eval()
        start = batch_number * self.batch_size
        images = np.stack([self.data.array(i) for i in range(start, min(start + self.batch_size, len(self.data)))])
        with torch.no_grad(), bf16_autocast(self.device, self.bf16):
            return self.model.encode_image(images).to("cpu", torch.float32).numpy()


def _image_features(model, data: CuratedDataset, name: str, batch_size: int = 128,
                    engine: BatchEngine = IN_PROCESS) -> SuiteFeatures:
    was_training = model.training
    model.eval()
    device = engine.device or str(model.device)

    def make_encoder() -> ImageBatchEncoder:
        return ImageBatchEncoder(model, data.root, data.query, batch_size, device, engine.bf16)

    try:
        with engine.shipping(model):
            chunks = list(engine.map_batches(make_encoder, -(-len(data) // batch_size)))
    finally:
        model.train(was_training)
    manifest = data.manifest
    return SuiteFeatures(
        suite=name,
        kind="2d",
        features=np.concatenate(chunks) if chunks else np.zeros((0, model.embedding_dim), np.float32),
        labels=manifest["label"].to_numpy(),
        patients=manifest["patient_hash"].to_numpy(),
        captions=manifest["caption"].to_numpy(),
        conditions=manifest["conditions"].to_numpy(),
        source_paths=manifest["source_path"].to_numpy(),
        region_modality=_region_modality(manifest),
    )


def average_pool(slices: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global average pooling over the valid slices (the ablation's baseline): L2-normalised
    ``(B, D)`` and the uniform weights it amounts to ``(B, S)``."""
    from radclip.core.models.adapter import masked_mean

    pooled, weights = masked_mean(slices.float(), mask.bool())
    return torch.nn.functional.normalize(pooled, dim=-1), weights


def volume_features(
    model, slice_cache_dir: Path, collection: str, *, pooling: str = "adapter", batch_size: int = 64
) -> SuiteFeatures:
    """Volume embeddings from cached slice embeddings, pooled by the trained adapter or by averaging.

    The cache must have been built by this model's own 2D encoder (its fingerprint is checked): another
    encoder's embeddings would be scored silently as this model's."""
    return _volume_features(model, slice_cache_dir, f"collection == '{collection}'", collection, pooling, batch_size)


def validation_features(model, curated_dir: Path, slice_cache_dir: Path | None, kind: str, region: str,
                        modality: str, *, engine: BatchEngine = IN_PROCESS) -> SuiteFeatures:
    """The training collections' validation split of one kind, region and modality, encoded like a suite
    (3D: pooled by the adapter from the slice cache, which covers every curated volume)."""
    query = validation_query(region, modality)
    if kind == "2d":
        return _image_features(model, CuratedDataset(curated_dir, query=f"{query} and kind == '2d'"), VALIDATION,
                               engine=engine)
    if slice_cache_dir is None:
        raise ValueError("3D validation features need the model's slice cache")
    return _volume_features(model, slice_cache_dir, query, VALIDATION, "adapter", 64)


@torch.no_grad()
def _volume_features(model, slice_cache_dir: Path, query: str, name: str, pooling: str, batch_size: int
                     ) -> SuiteFeatures:
    from radclip.data.slice_cache import SliceCacheDataset, encoder_fingerprint

    if pooling not in ("adapter", "average"):
        raise ValueError(f"pooling must be 'adapter' or 'average', got {pooling!r}")
    data = SliceCacheDataset(slice_cache_dir, query=query, expect_fingerprint=encoder_fingerprint(model))
    model.eval()
    features, weights = [], []
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        slices = torch.stack([item[0] for item in items]).to(model.device)
        mask = torch.stack([item[1] for item in items]).to(model.device)
        if pooling == "adapter":
            volume, attention = model.pool_slices(slices, mask, return_weights=True)
        else:
            volume, attention = average_pool(slices, mask)
        features.append(volume.float().cpu().numpy())
        weights.append(attention.float().cpu().numpy())
    index: pd.DataFrame = data.index
    return SuiteFeatures(
        suite=name,
        kind="3d",
        features=np.concatenate(features) if features else np.zeros((0, model.embedding_dim), np.float32),
        labels=index["label"].to_numpy(),
        patients=index["patient_hash"].to_numpy(),
        captions=index["caption"].to_numpy(),
        conditions=index["conditions"].to_numpy(),
        source_paths=index["source_path"].to_numpy(),
        region_modality=_region_modality(index),
        attention=np.concatenate(weights) if weights else None,
        slice_counts=index["slices"].to_numpy(),
    )
