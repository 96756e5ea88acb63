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

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from radclip.core.device import bf16_autocast
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


@dataclass(frozen=True)
class BatchPlan:
    """One encoder batch: consecutive volumes of one shape within one cache shard."""

    shard_number: int  # the cache shard it lands in
    first: int  # its first volume's position in that shard
    rows: tuple[int, ...]  # positions in the cached records (the sorted 3D manifest rows)


def _plan_batches(curated: CuratedDataset, rows: pd.DataFrame, batch_volumes: int,
                  shard_volumes: int) -> list[BatchPlan]:
    """Batches of ≤ ``batch_volumes`` consecutive rows of one shape, none crossing a cache shard.

    encode_slices needs one (S, H, W) per batch; planes may differ in slices and size, so a batch ends early where
    the shape changes rather than padding pixels. Shapes come from the memory-mapped curated shards' headers (no
    pixel is read here), and a volume whose shape disagrees with the manifest is refused.
    """
    plans: list[BatchPlan] = []
    shapes = {name: tuple(curated.shard(name).shape[1:]) for name in rows["shard"].unique()}
    described = list(zip(rows["shard"], rows["shard_index"], rows["slices"], rows["record_id"], strict=True))
    for shard_number, start in enumerate(range(0, len(rows), shard_volumes)):
        pending: list[int] = []
        shape: tuple[int, ...] = ()
        for position in range(start, min(start + shard_volumes, len(rows))):
            shard, shard_index, slices, record_id = described[position]
            volume_shape = shapes[shard]
            if len(volume_shape) != 3 or volume_shape[0] != int(slices):
                raise SliceCacheError(
                    f"{curated.root / shard}[{shard_index}]: record {record_id} has shape "
                    f"{volume_shape}, the manifest says {slices} slices"
                )
            if pending and (len(pending) == batch_volumes or volume_shape != shape):
                plans.append(BatchPlan(shard_number, pending[0] - start, tuple(pending)))
                pending = []
            shape = volume_shape
            pending.append(position)
        if pending:
            plans.append(BatchPlan(shard_number, pending[0] - start, tuple(pending)))
    return plans


class SliceBatchEncoder:
    """Encodes planned batches: reads their volumes from the curated shards (memory-mapped, opened in whichever
    process runs it) and returns per-slice embeddings ``(B, S, D)`` in float32. Plain data and a model: it pickles,
    so a Ray Data actor on any node that mounts the curated data can run it."""

    def __init__(self, model: RadCLIP, curated_dir: str | Path, records: pd.DataFrame, plans: list[BatchPlan],
                 device: str = "cpu", bf16: bool = False):
        self.model, self.curated_dir, self.plans, self.device = model, Path(curated_dir), plans, device
        self.bf16 = bf16
        columns = ["shard", "shard_index"] + [c for c in ("display_low", "display_high") if c in records.columns]
        self.records = records[columns].reset_index(drop=True)
        self.curated: CuratedDataset | None = None

    def __call__(self, batch_number: int) -> np.ndarray:
        if self.curated is None:  # first call in this process: open the data, put the model on its device
            self.curated = CuratedDataset(self.curated_dir)
            self.model.to(self.device).eval()
        rows = self.records.iloc[list(self.plans[batch_number].rows)]
        volumes = np.stack([self.curated.shard(shard)[int(index)]
                            for shard, index in zip(rows["shard"], rows["shard_index"], strict=True)])
        # Manifests curated before display ranges were recorded: NaN = the encoder's percentile rule.
        display = np.stack([rows[c].to_numpy(np.float32) if c in rows else np.full(len(rows), np.nan, np.float32)
                            for c in ("display_low", "display_high")], axis=1)
        with torch.no_grad(), bf16_autocast(self.device, self.bf16):
            return self.model.encode_slices(volumes, display_range=display).to("cpu", torch.float32).numpy()


# ``map_batches(make_encoder, count)``: the embeddings of batches 0 … count-1, in that order, computed by encoders
# ``make_encoder()`` builds (radclip.io.ray_data.map_in_order runs them as Ray Data actors).
BatchMapper = Callable[[Callable[[], Callable[[int], np.ndarray]], int], Iterator[np.ndarray]]


def map_in_process(make_encoder: Callable[[], Callable[[int], np.ndarray]], count: int) -> Iterator[np.ndarray]:
    """The default :data:`BatchMapper`: one encoder, in this process."""
    encoder = make_encoder()
    for batch_number in range(count):
        yield encoder(batch_number)


@dataclass(frozen=True)
class BatchEngine:
    """How a frozen encoder runs over numbered batches of curated data: ``map_batches`` (see
    :data:`BatchMapper`) on ``device``, bf16 autocast there when ``bf16`` and CUDA."""

    map_batches: BatchMapper = map_in_process
    device: str | None = None  # None: the model's own
    bf16: bool = False
    on_ray: bool = False

    @contextlib.contextmanager
    def shipping(self, model: RadCLIP) -> Iterator[RadCLIP]:
        """``model`` ready to hand to :attr:`map_batches`. Ray actors get it from the CPU: a CUDA tensor unpickles
        only where a GPU is visible, and the actors' GPUs (if any) are theirs, not this process's. The model goes
        back to its device afterwards."""
        if not self.on_ray:
            yield model
            return
        home = model.device
        model.to("cpu")
        try:
            yield model
        finally:
            model.to(home)


IN_PROCESS = BatchEngine()  # one encoder in this process, on the model's device, fp32


def write_slice_cache(
    model: RadCLIP,
    curated_dir: Path,
    out_dir: Path,
    *,
    batch_volumes: int = 8,
    shard_volumes: int = 512,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    engine: BatchEngine = IN_PROCESS,
) -> dict[str, Any]:
    """Encode every slice of every curated 3D record with the frozen 2D encoder into ``out_dir``.

    ``meta`` (e.g. the model directory and its hash) is stored verbatim in cache.json
    (JSON-serialisable). ``engine`` runs the encoder over the planned batches (in this process, or as Ray
    Data actors) on its device, with bf16 autocast when it says so and runs on CUDA; the result is the same either
    way (within bf16 round-off on CUDA). Memory stays bounded by the batches in flight plus the memory-mapped shard
    being written, whatever the dataset size. Returns the cache.json content.
    """
    if batch_volumes < 1 or shard_volumes < 1:
        raise ValueError(f"batch_volumes and shard_volumes must be ≥ 1, got {batch_volumes}, {shard_volumes}")
    started = time.perf_counter()
    curated_dir, out_dir = Path(curated_dir), Path(out_dir)
    curated = CuratedDataset(curated_dir)
    records = _volume_records(curated_dir)
    embedding_dim = int(model.embedding_dim)
    plans = _plan_batches(curated, records, batch_volumes, shard_volumes)

    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of a crashed run
    staging.mkdir(parents=True)

    shard_names = np.empty(len(records), dtype=object)
    shard_rows = np.zeros(len(records), dtype=np.int64)
    shards: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    bar = progress_bar(progress)
    block: np.memmap | None = None

    def open_shard(shard_number: int) -> np.memmap:
        rows = records.iloc[shard_number * shard_volumes : (shard_number + 1) * shard_volumes]
        name = SHARD_PATTERN.format(shard_number)
        padded_slices = int(rows["slices"].max())
        start = shard_number * shard_volumes
        shard_names[start : start + len(rows)] = name
        shard_rows[start : start + len(rows)] = np.arange(len(rows))
        shards.append({"file": name, "count": len(rows), "slices": padded_slices})
        # Written through a memory map batch by batch: only the batches in flight are in RAM.
        return np.lib.format.open_memmap(staging / name, mode="w+", dtype=EMBEDDING_DTYPE,
                                         shape=(len(rows), padded_slices, embedding_dim))

    try:
        with bar:
            task = bar.add_task("slice cache", total=len(records))

            device = engine.device or str(model.device)

            def make_encoder() -> SliceBatchEncoder:
                return SliceBatchEncoder(model, curated_dir, records, plans, device, engine.bf16)

            with engine.shipping(model):
                batches = zip(plans, engine.map_batches(make_encoder, len(plans)), strict=True)
                for plan, embeddings in batches:
                    if len(shards) <= plan.shard_number:
                        if block is not None:
                            block.flush()
                        block = open_shard(plan.shard_number)
                    assert block is not None  # the first plan opens shard 0
                    count, slices = embeddings.shape[:2]
                    block[plan.first : plan.first + count, :slices] = embeddings.astype(EMBEDDING_DTYPE)
                    # explicit: padding never depends on the filesystem
                    block[plan.first : plan.first + count, slices:] = 0
                    bar.update(task, advance=count)
            if block is not None:
                block.flush()
            del block
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
