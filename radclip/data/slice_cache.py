"""Slice-embedding cache: every slice of every curated volume, encoded once by the frozen 2D encoder.

The adapter stage freezes the 2D encoder and trains only the slice-pooling adapter,
so the encoder's output for a volume never changes during that stage. Encoding each
slice once into this cache makes adapter epochs (and a hyper-parameter sweep over
adapter heads / learning rate / τ) cost a read of ``(S, D)`` floats per volume
instead of ``S`` vision-tower forwards.

Layout (a DVC output; never loaded whole — 50k volumes × 64 slices × 768 dims is
~5 GB in float16)::

    embeddings-00000.npy   float16 (n, S_shard, D): n ≤ shard_volumes volumes, slices zero-padded
                           to the longest volume of the shard, each slice L2-normalised
    index.parquet          one row per cached volume: the manifest's identifying columns
                           (INDEX_COLUMNS) plus ``shard`` / ``shard_index`` into the files above;
                           ``slices`` is the true slice count (positions ≥ slices are padding)
    cache.json             format, embedding_dim, count, max_slices, shard list, the encoder
                           fingerprint, the caller's ``meta`` (model dir, hashes), timings

Every 3D record of the curated manifest is cached — all roles and splits, the
evaluation suites included, since 3D evaluation reads the same cache. Records are
ordered by their curated shard and position (sequential reads; one plane's volumes
share a shape, so batches stay full and padding stays small).

Determinism: the same encoder and curated data give byte-identical shards and
index (batches are a pure function of the manifest and ``batch_volumes``);
cache.json differs only in its timing fields. The cache is written in
``<out>.partial`` and renamed at the end, so a crash never leaves a directory that
looks complete; readers also require cache.json, which is written last.

Reading: :class:`SliceCacheDataset` selects rows with a pandas query and opens
shards lazily with ``np.load(mmap_mode="r")`` in whichever process reads them
(DataLoader or Ray workers: the dataset pickles without open maps).
:func:`encoder_fingerprint` identifies the encoder a cache was built from, so a
trainer whose frozen encoder differs fails loudly instead of training on stale
embeddings.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from radclip.core.models.clip import vision_modules
from radclip.core.models.radclip import RadCLIP
from radclip.core.preprocessing import DISPLAY_PERCENTILES
from radclip.data.progress import progress_bar
from radclip.data.shards import CuratedDataset

CACHE_FORMAT = "radclip-slice-cache"
CACHE_FORMAT_VERSION = 1
INDEX_FILE = "index.parquet"
INFO_FILE = "cache.json"
SHARD_PATTERN = "embeddings-{:05d}.npy"
EMBEDDING_DTYPE = np.float16  # normalised embeddings in [-1, 1]: float16 keeps ~3 decimal digits, half the bytes
TIMING_KEYS = ("seconds", "volumes_per_second")  # returned by write_slice_cache, kept out of cache.json (they vary)

# Identifying manifest columns carried into the cache index (what the adapter stage
# and evaluation select and label by), then where each embedding lives.
INDEX_COLUMNS = [
    "record_id", "collection", "role", "split", "caption", "label", "region", "modality",
    "conditions", "plane", "patient_hash", "source_path", "slices",
]
INDEX_SCHEMA = pa.schema(
    [(name, pa.int64() if name == "slices" else pa.string()) for name in INDEX_COLUMNS]
    + [("shard", pa.string()), ("shard_index", pa.int64())]
)


class SliceCacheError(ValueError):
    """A slice cache that is missing, incomplete, or built from another encoder."""


# --------------------------------------------------------------------------- fingerprint


def encoder_fingerprint(model: RadCLIP) -> str:
    """sha256 over what decides a slice embedding: vision tower + visual projection weights and the pixel
    normalisation (the checkpoint's image processor) and volume display rule.

    Names, dtypes and shapes are hashed with the raw bytes, so a cast (fp32 → bf16)
    or a different architecture changes it too; the adapter, text tower and
    ``logit_scale`` do not enter (training the adapter keeps the cache valid).
    """
    digest = hashlib.sha256()
    preprocessing = {"pixels": model.pixels.to_dict(), "display_percentiles": list(DISPLAY_PERCENTILES)}
    digest.update(json.dumps(preprocessing, sort_keys=True).encode())
    vision_model, visual_projection = vision_modules(model.clip)
    for prefix, module in (("vision_model", vision_model), ("visual_projection", visual_projection)):
        for name, tensor in module.state_dict().items():
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{prefix}.{name}:{flat.dtype}:{tuple(tensor.shape)}\n".encode())
            digest.update(flat.view(torch.uint8).numpy().data)  # bytes of any dtype, bf16 included
    return digest.hexdigest()


# --------------------------------------------------------------------------- writing


def _volume_records(curated_dir: Path) -> pd.DataFrame:
    """The 3D rows of the manifest (every role and split), in curated storage order."""
    manifest = CuratedDataset(curated_dir).manifest
    volumes = manifest[manifest["kind"] == "3d"]
    # Stable sort on the curated shard file then position: sequential memory-map reads,
    # and same-plane (same-shape) volumes next to each other so batches stay full.
    return volumes.sort_values(["shard", "shard_index"], kind="stable").reset_index(drop=True)


def _shape_batches(
    curated: CuratedDataset, rows: pd.DataFrame, batch_volumes: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(first row, volumes (B, S, H, W), display ranges (B, 2))`` for consecutive rows of
    one shape, B ≤ batch_volumes.

    encode_slices needs one (S, H, W) per batch; planes may differ in slices and size,
    so a batch ends early where the shape changes rather than padding pixels.
    """
    pending: list[np.ndarray] = []
    ranges: list[tuple[float, float]] = []
    first = 0
    for position, row in enumerate(rows.itertuples(index=False)):
        volume = curated.shard(row.shard)[int(row.shard_index)]
        if volume.ndim != 3 or volume.shape[0] != int(row.slices):
            raise SliceCacheError(
                f"{curated.root / row.shard}[{row.shard_index}]: record {row.record_id} has shape "
                f"{tuple(volume.shape)}, the manifest says {row.slices} slices"
            )
        if pending and (len(pending) == batch_volumes or volume.shape != pending[0].shape):
            yield first, np.stack(pending), np.array(ranges, dtype=np.float32)
            pending, ranges = [], []
        if not pending:
            first = position
        pending.append(volume)
        # Manifests curated before display ranges were recorded: NaN = the encoder's percentile rule.
        ranges.append((getattr(row, "display_low", np.nan), getattr(row, "display_high", np.nan)))
    if pending:
        yield first, np.stack(pending), np.array(ranges, dtype=np.float32)


def write_slice_cache(
    model: RadCLIP,
    curated_dir: Path,
    out_dir: Path,
    *,
    batch_volumes: int = 8,
    shard_volumes: int = 512,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every slice of every curated 3D record with the frozen 2D encoder into ``out_dir``.

    ``meta`` (e.g. the model directory and its hash) is stored verbatim in cache.json
    (JSON-serialisable). Memory stays bounded by one batch of volumes plus the
    memory-mapped shard being written, whatever the dataset size. Returns the
    cache.json content.
    """
    if batch_volumes < 1 or shard_volumes < 1:
        raise ValueError(f"batch_volumes and shard_volumes must be ≥ 1, got {batch_volumes}, {shard_volumes}")
    started = time.perf_counter()
    curated_dir, out_dir = Path(curated_dir), Path(out_dir)
    curated = CuratedDataset(curated_dir)
    records = _volume_records(curated_dir)
    embedding_dim = int(model.embedding_dim)

    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of a crashed run
    staging.mkdir(parents=True)

    shard_names = np.empty(len(records), dtype=object)
    shard_rows = np.zeros(len(records), dtype=np.int64)
    shards: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    bar = progress_bar(progress)
    try:
        with bar, torch.no_grad():
            task = bar.add_task("slice cache", total=len(records))
            for shard_number, start in enumerate(range(0, len(records), shard_volumes)):
                rows = records.iloc[start : start + shard_volumes]
                name = SHARD_PATTERN.format(shard_number)
                padded_slices = int(rows["slices"].max())
                # Written through a memory map batch by batch: only one batch of embeddings is in RAM.
                block = np.lib.format.open_memmap(
                    staging / name, mode="w+", dtype=EMBEDDING_DTYPE, shape=(len(rows), padded_slices, embedding_dim)
                )
                for first, volumes, display in _shape_batches(curated, rows, batch_volumes):
                    embeddings = model.encode_slices(volumes, display_range=display).to("cpu", torch.float32).numpy()
                    count, slices = volumes.shape[:2]
                    block[first : first + count, :slices] = embeddings.astype(EMBEDDING_DTYPE)
                    block[first : first + count, slices:] = 0  # explicit: padding never depends on the filesystem
                    bar.update(task, advance=count)
                block.flush()
                del block
                shard_names[start : start + len(rows)] = name
                shard_rows[start : start + len(rows)] = np.arange(len(rows))
                shards.append({"file": name, "count": len(rows), "slices": padded_slices})
    finally:
        model.train(was_training)

    index = records[INDEX_COLUMNS].copy()
    index["shard"] = shard_names.tolist()
    index["shard_index"] = shard_rows
    pq.write_table(pa.Table.from_pandas(index, schema=INDEX_SCHEMA, preserve_index=False), staging / INDEX_FILE)

    seconds = time.perf_counter() - started
    info = {
        "format": CACHE_FORMAT,
        "format_version": CACHE_FORMAT_VERSION,
        "dtype": np.dtype(EMBEDDING_DTYPE).name,
        "embedding_dim": embedding_dim,
        "count": len(records),
        "max_slices": int(records["slices"].max()) if len(records) else 0,
        "shard_volumes": shard_volumes,
        "batch_volumes": batch_volumes,
        "shards": shards,
        "encoder_fingerprint": encoder_fingerprint(model),
        "meta": meta or {},
    }
    # cache.json last: its presence marks a complete cache even inside the staging dir.
    # Timings stay out of it (returned instead), so identical builds give identical bytes for DVC.
    (staging / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    info["seconds"] = round(seconds, 3)
    info["volumes_per_second"] = round(len(records) / seconds, 2) if seconds > 0 else 0.0
    return info


# --------------------------------------------------------------------------- reading


def read_cache_info(cache_dir: str | Path) -> dict[str, Any]:
    """cache.json of a complete cache; raises :class:`SliceCacheError` naming the directory otherwise."""
    root = Path(cache_dir)
    info_path = root / INFO_FILE
    if not info_path.is_file():
        raise SliceCacheError(f"{root}: no {INFO_FILE}; not a slice cache, or its build did not finish")
    info = json.loads(info_path.read_text())
    if info.get("format") != CACHE_FORMAT or int(info.get("format_version", -1)) > CACHE_FORMAT_VERSION:
        found = f"{info.get('format')!r} v{info.get('format_version')}"
        raise SliceCacheError(f"{info_path}: not a slice cache this version can read ({found})")
    return info


class SliceCacheDataset(Dataset):
    """Cached slice embeddings of the rows a pandas ``query`` selects from the cache index.

    ``dataset[i]`` → ``(embeddings float32 (max_slices, D), mask bool (max_slices,), caption_id)``
    where ``max_slices`` is the longest volume of the whole cache (so every query of one
    cache yields the same shape and the default collate stacks them) and the mask is
    True on real slices. ``captions`` are the sorted unique captions of the selected
    rows and ``caption_ids[i]`` indexes them: encode ``captions`` once with the text
    tower and look embeddings up by id.

    With ``expect_fingerprint`` (from :func:`encoder_fingerprint` of the frozen encoder
    in use) a cache built from another encoder raises :class:`SliceCacheError`.
    """

    def __init__(self, cache_dir: str | Path, *, query: str | None = None, expect_fingerprint: str | None = None):
        self.root = Path(cache_dir)
        self.info = read_cache_info(self.root)
        found = self.info.get("encoder_fingerprint")
        if expect_fingerprint is not None and found != expect_fingerprint:
            raise SliceCacheError(
                f"{self.root}: slice cache was built from encoder {str(found)[:12]}…, but the encoder in use is "
                f"{expect_fingerprint[:12]}…; its embeddings are stale — rebuild the cache with this encoder"
            )
        index = pd.read_parquet(self.root / INDEX_FILE)
        self.index = index.query(query).reset_index(drop=True) if query else index
        self.captions: list[str] = sorted(self.index["caption"].unique().tolist())
        position = {caption: i for i, caption in enumerate(self.captions)}
        self.caption_ids = self.index["caption"].map(position).to_numpy(dtype=np.int64)
        self.max_slices = int(self.info["max_slices"])
        self.embedding_dim = int(self.info["embedding_dim"])
        # Plain arrays: DataFrame.iloc per item costs more than the read itself.
        self._shard_files = self.index["shard"].to_numpy(dtype=object)
        self._shard_rows = self.index["shard_index"].to_numpy(dtype=np.int64)
        self._slices = self.index["slices"].to_numpy(dtype=np.int64)
        self._open_shards: dict[str, np.ndarray] = {}  # filled lazily in the reading process

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are per process: a pickled copy (DataLoader spawn, Ray) reopens its own.
        state = self.__dict__.copy()
        state["_open_shards"] = {}
        return state

    def shard(self, name: str) -> np.ndarray:
        opened = self._open_shards.get(name)
        if opened is None:
            path = self.root / name
            if not path.is_file():
                raise SliceCacheError(f"{path}: shard listed in {self.root / INDEX_FILE} is missing")
            opened = self._open_shards[name] = np.load(path, mmap_mode="r")
        return opened

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        slices = int(self._slices[index])
        stored = self.shard(self._shard_files[index])[self._shard_rows[index], :slices]
        embeddings = torch.zeros(self.max_slices, self.embedding_dim, dtype=torch.float32)
        embeddings[:slices] = torch.from_numpy(np.asarray(stored, dtype=np.float32))
        mask = torch.arange(self.max_slices) < slices
        return embeddings, mask, int(self.caption_ids[index])
