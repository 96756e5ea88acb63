"""Reading the curated dataset: the Parquet manifest plus memory-mapped shards.

Arrays are never loaded whole: each shard is opened with ``np.load(mmap_mode="r")``
on first use (a few stay open), so a reader touches only the records it asks for.
Training data loaders select rows of the manifest (split, kind, collection) and
read them through :class:`CuratedDataset`; sharding across workers is a slice of
those rows.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

MANIFEST_FILE = "manifest.parquet"  # one row per curated record, next to the shards
# Lesion boxes of curated 2D records, in curated pixels: record_id, collection, source_path,
# condition, x, y, w, h (x the left edge's column, y the top edge's row).
BOXES_FILE = "lesion_boxes.csv"
BOX_COLUMNS = ("record_id", "collection", "source_path", "condition", "x", "y", "w", "h")


def validation_query(region: str, modality: str) -> str:
    """Manifest (and slice-cache index) query of the training collections' validation split of one region
    and modality: where evaluation chooses thresholds, never on an evaluation suite."""
    return f"role == 'train' and split == 'val' and region == {region!r} and modality == {modality!r}"


def read_boxes(curated_dir: str | Path) -> pd.DataFrame:
    """The curated lesion boxes (no rows when no collection has any)."""
    path = Path(curated_dir) / BOXES_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: curated lesion boxes not found (run `dvc repro curate`)")
    return pd.read_csv(path, dtype={"record_id": str, "collection": str, "source_path": str, "condition": str})


class CuratedDataset:
    def __init__(self, curated_dir: str | Path, *, query: str | None = None):
        self.root, self.query = Path(curated_dir), query
        manifest_path = self.root / MANIFEST_FILE
        if not manifest_path.exists():
            raise FileNotFoundError(f"{manifest_path}: curated manifest not found (run `dvc repro curate`)")
        manifest = pd.read_parquet(manifest_path)
        self.manifest = manifest.query(query).reset_index(drop=True) if query else manifest

    def __len__(self) -> int:
        return len(self.manifest)

    # The cache holds memory maps of this dataset's shards: the dataset owns them and lives as
    # long as its data, so the cache keeping `self` alive is intended, not a leak.
    @functools.lru_cache(maxsize=16)  # noqa: B019
    def shard(self, name: str) -> np.ndarray:
        path = self.root / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: shard listed in the manifest is missing")
        return np.load(path, mmap_mode="r")

    def array(self, index: int) -> np.ndarray:
        row = self.manifest.iloc[index]
        return np.asarray(self.shard(row["shard"])[int(row["shard_index"])])

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict]:
        return self.array(index), self.manifest.iloc[index].to_dict()
