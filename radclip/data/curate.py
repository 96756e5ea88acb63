"""Curation (DVC stage ``curate``): raw collections → sharded arrays, Parquet manifest, quarantine table.

Flow. The driver scans every configured collection lazily (paths and labels,
no pixels) and cuts the items into chunks of ``curate.chunk_size``. Each chunk
is one task — a Ray task on the local or configured cluster, or in-process
with ``engine: serial`` — that loads its items, checks them, normalises them
and writes its own shard files. The driver keeps at most ``2 × workers`` tasks
in flight and consumes results in submission order, so memory stays flat
whatever the dataset size and the output is identical whatever the worker
count. It de-duplicates by content hash, assigns patient-level splits and
streams manifest rows to Parquet.

Output (``paths.curated``)::

    manifest.parquet     one row per record (columns: MANIFEST_COLUMNS)
    lesion_boxes.csv     lesion boxes of 2D records in curated pixels (BOX_COLUMNS; header only if none)
    quarantine.parquet   every input not curated, with file and reason (also .csv)
    summary.json         counts (also written to reports/curate.json for dvc metrics, with the timings)
    shards/2d-image-00000.npy         uint8   (n, image_size, image_size)
    shards/3d-axial-00000.npy         float16 (n, slices, size, size), z-scored per volume

PHI. Patient ids (index columns or DICOM PatientID) are salted-hashed inside the
worker; no header value, UID or date is written anywhere: records are named by
a hash of their source path, the manifest carries only the salted patient hash.
The salt comes from the environment (``curate.salt_env``); the committed
``curate.salt`` is used only when every collection is the pipeline's own phantom
data, and curation of any other collection without the variable set stops
(:func:`phi_salt`): a salt in a committed file is no secret.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from radclip.config import CaptionTemplate, CollectionBase, Params, project_root
from radclip.core.preprocessing import Preprocessing
from radclip.core.records import InputError, LoadedImage, SourceItem
from radclip.data.captions import make_caption
from radclip.data.loaders import load
from radclip.data.progress import progress_bar
from radclip.data.shards import BOX_COLUMNS, BOXES_FILE, MANIFEST_FILE

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("collection", pa.string()),
        ("role", pa.string()),
        ("kind", pa.string()),
        ("split", pa.string()),
        ("source_path", pa.string()),
        ("region", pa.string()),
        ("modality", pa.string()),
        ("conditions", pa.string()),
        ("label", pa.string()),
        ("caption", pa.string()),
        ("patient_hash", pa.string()),
        ("plane", pa.string()),
        ("shard", pa.string()),
        ("shard_index", pa.int64()),
        ("slices", pa.int64()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("content_hash", pa.string()),
        ("mean", pa.float64()),
        ("std", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("display_low", pa.float64()),
        ("display_high", pa.float64()),
    ]
)
MANIFEST_COLUMNS = MANIFEST_SCHEMA.names
QUARANTINE_SCHEMA = pa.schema(
    [("collection", pa.string()), ("source_path", pa.string()), ("reason", pa.string()), ("stage", pa.string())]
)
SPLIT_SALT = "radclip-split"


# --------------------------------------------------------------------------- hashing / splits


def salted_hash(salt: str, value: str) -> str:
    return hashlib.blake2b(value.encode(), key=salt.encode()[:64], digest_size=8).hexdigest()


def assign_split(patient_hash: str, role: str, fractions) -> str:
    """Deterministic patient-level split: the same patient always lands in the same split."""
    if role == "eval":
        return "eval"
    bucket = int(hashlib.sha256(f"{SPLIT_SALT}:{patient_hash}".encode()).hexdigest()[:12], 16) / 16**12
    if bucket < fractions.train:
        return "train"
    if bucket < fractions.train + fractions.val:
        return "val"
    return "test"


def content_hash(pixels: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels, dtype=np.float32).tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- the contract


def preprocessing_from_params(params: Params) -> Preprocessing:
    """The preprocessing contract of the configured collections (written next to the curated data)."""
    curate = params.curate
    return Preprocessing.build(
        image_size=curate.image_size,
        volume_shapes={plane: (shape.slices, shape.size) for plane, shape in curate.volume.items()},
        min_pixels=curate.min_pixels,
        collections={c.name: (c.region, c.modality, c.window, dict(c.windows)) for c in params.data.collections},
    )


# --------------------------------------------------------------------------- the task


@dataclass
class ChunkTask:
    task_id: int
    items: list[SourceItem]
    shard_dir: str
    preprocessing: Preprocessing
    captions: dict[str, CaptionTemplate]  # per collection
    roles: dict[str, str]
    roots: dict[str, str]
    salt: str


@dataclass
class ChunkResult:
    task_id: int
    records: list[dict] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    items: int = 0


def _relative_to_collection(path: str, root: str) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).name  # outside the collection: never echo absolute paths


def _check_kind(image: LoadedImage, item: SourceItem) -> None:
    if item.expect_kind and image.kind != item.expect_kind:
        raise InputError(
            item.path,
            f"{image.kind.upper()} data where {item.expect_kind.upper()} expected (shape {image.pixels.shape})",
        )


def curate_chunk(task: ChunkTask) -> ChunkResult:
    """Load, check, normalise and shard one chunk of items (runs in a worker)."""
    import torch

    torch.set_num_threads(1)  # one task per core: no oversubscription
    result = ChunkResult(task.task_id, items=len(task.items))
    buffers: dict[str, list[np.ndarray]] = {}
    pending: list[tuple[str, dict]] = []
    for item in task.items:
        root = task.roots[item.collection]
        try:
            images = load(item.path, item.loader, item.member)
            if not images:
                raise InputError(item.path, "no image data found")
            prepared = []
            for image in images:
                _check_kind(image, item)
                prepared.append(_curate_image(image, item, task))
        except InputError as error:
            result.quarantine.append(
                {"collection": item.collection, "source_path": _relative_to_collection(error.path, root),
                 "reason": error.reason, "stage": "load"}
            )
            continue
        except Exception as error:  # an adapter bug or an unforeseen format problem: quarantine, never drop
            result.quarantine.append(
                {"collection": item.collection, "source_path": item.rel_path,
                 "reason": f"unreadable ({type(error).__name__}: {error})", "stage": "load"}
            )
            continue
        for shard_key, array, row in prepared:
            buffers.setdefault(shard_key, []).append(array)
            pending.append((shard_key, row))
    shard_names = {key: f"shards/{key}-{task.task_id:05d}.npy" for key in buffers}
    counters: Counter = Counter()
    for shard_key, row in pending:
        row["shard"] = shard_names[shard_key]
        row["shard_index"] = counters[shard_key]
        counters[shard_key] += 1
        result.records.append(row)
    for key, arrays in buffers.items():
        np.save(Path(task.shard_dir) / Path(shard_names[key]).name, np.stack(arrays))
    return result


def _curate_image(image: LoadedImage, item: SourceItem, task: ChunkTask) -> tuple[str, np.ndarray, dict]:
    caption = make_caption(task.captions[item.collection], item.region, item.modality, item.conditions)
    if not caption.strip() or not item.region.strip() or not item.modality.strip():
        raise InputError(item.path, f"empty caption field (region={item.region!r}, modality={item.modality!r})")
    prepared = task.preprocessing.prepare(image, item.path, collection=item.collection, region=item.region,
                                          modality=item.modality)
    array, plane, display = prepared.array, prepared.plane, prepared.display_range
    shard_key = f"3d-{plane}" if plane else "2d-image"
    patient_key = image.patient_id or item.patient_id or f"{item.collection}/{item.rel_path}"
    record_key = f"{item.collection}/{item.rel_path}/{item.member or ''}/{image.part}"
    if item.boxes and image.kind != "2d":
        raise InputError(item.path, "lesion boxes were given for a 3D volume (boxes are 2D image pixels)")
    boxes = [(condition, *task.preprocessing.map_box((x, y, w, h), image.pixels.shape))
             for condition, x, y, w, h in item.boxes]
    as_float = array.astype(np.float32)
    row = {
        "record_id": hashlib.sha256(record_key.encode()).hexdigest()[:16],
        "collection": item.collection,
        "role": task.roles[item.collection],
        "kind": image.kind,
        "split": "",  # assigned by the driver
        "source_path": item.rel_path
        + (f"#{item.member}" if item.member else "")
        + (f"#{image.part}" if image.part else ""),
        "region": item.region,
        "modality": item.modality,
        "conditions": "|".join(item.conditions),
        "label": item.label or ("|".join(item.conditions) if item.conditions else "Normal"),
        "caption": caption,
        "patient_hash": salted_hash(task.salt, patient_key),
        "plane": plane,
        "slices": int(array.shape[0]) if image.kind == "3d" else 1,
        "height": int(array.shape[-2]),
        "width": int(array.shape[-1]),
        "content_hash": content_hash(image.pixels),
        "mean": float(as_float.mean()),
        "std": float(as_float.std()),
        "min": float(as_float.min()),
        "max": float(as_float.max()),
        "display_low": display[0],
        "display_high": display[1],
        "boxes": boxes,  # not a manifest column: the driver writes them to BOXES_FILE
    }
    return shard_key, array, row


# --------------------------------------------------------------------------- executors


# Runs ``curate_chunk`` over the tasks, results in task order (the jobs layer passes Ray's).
Executor = Callable[[Callable[[ChunkTask], ChunkResult], Iterable[ChunkTask]], Iterator[ChunkResult]]


def run_serial(function: Callable[[ChunkTask], ChunkResult], tasks: Iterable[ChunkTask]) -> Iterator[ChunkResult]:
    """In this process, one task after another."""
    return map(function, tasks)


# --------------------------------------------------------------------------- the stage


@dataclass
class CurationSummary:
    items: int = 0
    records: int = 0
    records_2d: int = 0
    records_3d: int = 0
    quarantined: int = 0
    duplicates: int = 0
    boxes: int = 0  # lesion boxes written (lesion_boxes.csv)
    quarantine_rate: float = 0.0
    seconds: float = 0.0
    items_per_second: float = 0.0
    by_split: dict = field(default_factory=dict)
    by_collection: dict = field(default_factory=dict)
    quarantine_reasons: dict = field(default_factory=dict)


def _collection_root(collection: CollectionBase, root: Path) -> Path:
    path = Path(collection.path)
    return path if path.is_absolute() else root / path


def _scan_all(params: Params, root: Path, on_scan_error: Callable[[dict], None]) -> Iterator[SourceItem]:
    from radclip.data.sources import scan_collection

    for collection in params.data.collections:
        for item in scan_collection(collection, root):
            if item.error:
                on_scan_error(
                    {"collection": item.collection,
                     "source_path": item.rel_path + (f"#{item.member}" if item.member else ""),
                     "reason": item.error, "stage": "scan"}
                )
            else:
                yield item


def _chunks(items: Iterator[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    chunk: list[SourceItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _TableWriter:
    """Streams rows to Parquet in batches, so memory does not grow with the table."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int = 4096):
        self.path, self.schema, self.batch_rows = path, schema, batch_rows
        self.writer = pq.ParquetWriter(path, schema)
        self.rows: list[dict] = []

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


TIMING_KEYS = ("seconds", "items_per_second")  # in reports/curate.json, never in the curated folder


class SaltMissing(RuntimeError):
    """Real collections to curate and no PHI salt in the environment."""


def _is_phantom_collection(params: Params, collection_path: str) -> bool:
    """A collection the phantoms stage wrote: under ``paths.raw``, which holds the generator's phantoms.json."""
    raw = params.resolve(params.paths.raw).resolve()
    path = params.resolve(collection_path).resolve()
    return params.phantoms.enabled and (raw / "phantoms.json").is_file() and path.is_relative_to(raw)


def phi_salt(params: Params) -> str:
    """The salt patient ids are hashed with: the environment's ``curate.salt_env``; the committed ``curate.salt``
    only when every collection is phantom data (fail closed: a real collection without the variable stops)."""
    settings = params.curate
    value = os.environ.get(settings.salt_env, "")
    if value:
        return value
    real = [c.name for c in params.data.collections if not _is_phantom_collection(params, c.path)]
    if real:
        raise SaltMissing(
            f"{settings.salt_env} is not set, and {', '.join(real)} {'is' if len(real) == 1 else 'are'} not the "
            f"pipeline's phantom data: patient ids would be hashed with the salt committed in params, which is no "
            f"secret. Set it to a secret of your own and keep it (the same salt keeps the same patient splits), "
            f"e.g. export {settings.salt_env}=$(python -c 'import secrets; print(secrets.token_hex(32))')")
    return settings.salt


def curate(
    params: Params, *, executor: Executor = run_serial, out_dir: Path | None = None, progress: bool = True
) -> CurationSummary:
    """Run curation for every collection in params (chunks through ``executor``); returns the summary it also
    writes."""
    started = time.perf_counter()
    salt = phi_salt(params)  # before anything is written
    root = project_root()
    out = out_dir or params.resolve(params.paths.curated)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "shards").mkdir(parents=True)
    settings = params.curate
    collections = {c.name: c for c in params.data.collections}
    contract = preprocessing_from_params(params)

    summary = CurationSummary()
    manifest = _TableWriter(staging / MANIFEST_FILE, MANIFEST_SCHEMA)
    box_file = open(staging / BOXES_FILE, "w", newline="", encoding="utf-8")
    box_writer = csv.writer(box_file, lineterminator="\n")
    box_writer.writerow(BOX_COLUMNS)
    quarantine = _TableWriter(staging / "quarantine.parquet", QUARANTINE_SCHEMA)
    reasons: Counter = Counter()
    per_collection: Counter = Counter()
    per_split: Counter = Counter()

    def add_quarantine(row: dict) -> None:
        quarantine.append(row)
        summary.quarantined += 1
        reasons[row["reason"].split(" (")[0][:80]] += 1

    def scan_error(row: dict) -> None:
        summary.items += 1  # a scan-time reject is an input seen
        add_quarantine(row)

    tasks = (
        ChunkTask(
            task_id=index,
            items=chunk,
            shard_dir=str(staging / "shards"),
            preprocessing=contract,
            captions={name: c.caption or params.data.caption for name, c in collections.items()},
            roles={name: c.role for name, c in collections.items()},
            roots={name: str(_collection_root(c, root)) for name, c in collections.items()},
            salt=salt,
        )
        for index, chunk in enumerate(_chunks(_scan_all(params, root, scan_error), settings.chunk_size))
    )
    seen_content: dict[str, str] = {}  # content hash -> record id (16+16 bytes per record)
    bar = progress_bar(progress)
    with bar:
        # The bar's total: a second scan of paths and labels only (no pixels), made only when a bar is shown.
        total = sum(1 for _ in _scan_all(params, root, lambda row: None)) if progress else None
        task_bar = bar.add_task("curate", total=total)
        for result in executor(curate_chunk, tasks):
            summary.items += result.items
            for row in result.quarantine:
                add_quarantine(row)
            for row in result.records:
                boxes = row.pop("boxes")
                first = seen_content.get(row["content_hash"])
                if first is not None:
                    summary.duplicates += 1
                    add_quarantine({"collection": row["collection"], "source_path": row["source_path"],
                                    "reason": f"duplicate of record {first} (identical pixels)", "stage": "dedupe"})
                    continue
                seen_content[row["content_hash"]] = row["record_id"]
                row["split"] = assign_split(row["patient_hash"], row["role"], settings.split)
                manifest.append(row)
                for condition, x, y, w, h in boxes:
                    box_writer.writerow([row["record_id"], row["collection"], row["source_path"], condition,
                                         *(round(v, 4) for v in (x, y, w, h))])
                summary.boxes += len(boxes)
                summary.records += 1
                summary.records_2d += row["kind"] == "2d"
                summary.records_3d += row["kind"] == "3d"
                per_collection[row["collection"]] += 1
                per_split[row["split"]] += 1
            bar.update(task_bar, advance=result.items, description=f"curate: {summary.records} records")
    manifest.close()
    quarantine.close()
    box_file.close()
    pq.read_table(staging / "quarantine.parquet").to_pandas().to_csv(staging / "quarantine.csv", index=False)

    summary.seconds = round(time.perf_counter() - started, 3)
    summary.items_per_second = round(summary.items / summary.seconds, 2) if summary.seconds else 0.0
    # Duplicates are listed in quarantine too, but they are not bad inputs: the rate counts rejects.
    rejected = summary.quarantined - summary.duplicates
    summary.quarantine_rate = round(rejected / summary.items, 6) if summary.items else 0.0
    summary.by_split = dict(sorted(per_split.items()))
    summary.by_collection = dict(sorted(per_collection.items()))
    summary.quarantine_reasons = dict(reasons.most_common())
    # Timings go to the stage's metrics only: the curated folder is byte-identical run to run (its DVC hash is
    # what every later stage depends on).
    counts = {key: value for key, value in asdict(summary).items() if key not in TIMING_KEYS}
    (staging / "summary.json").write_text(json.dumps(counts, indent=2) + "\n")
    contract.write(staging)  # what every reader of these arrays (and every model trained on them) repeats
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return summary
