"""Shared builders for tests: tiny params pointing at temporary directories, the tiny curated
phantom dataset (built once per session by the ``tiny_curated`` fixture of conftest.py), a
committed git project, and DICOM fixture values."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from radclip.config import Params

PROJECT_ROOT = Path(__file__).resolve().parent.parent

TINY_PHANTOMS = {
    "train_2d": 48,
    "train_3d": 12,
    "image_size": 48,
    "volume_shape": [16, 32, 32],
    "lesion_slices": [2, 3],
    "dicom_fraction": 0.25,
    "workers": 1,
    "suites": {"chest_xray_5class": 3, "brain_mri_4class": 3, "brain_mri_3d_2class": 3, "chest_ct_3d_3class": 2,
               "brain_mri_3d_sex": 3, "chest_xray_boxes": 2},
    "cxr_lt": {"train": 60, "test_per_class": 3},
}
TINY_MODEL = {
    "pretrained": None,  # a fresh tiny CLIP (params.yaml names pretrain_general's output)
    "projection_dim": 64,
    "vision": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "patch_size": 8},
    "text": {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 128},
}
TINY_TRAIN = {"epochs": 3, "batch_size": 16, "patience": 3, "num_workers": 2, "max_failures": 2}
TINY_CURATE = {
    "engine": "serial",
    "workers": 1,
    "chunk_size": 16,
    "image_size": 32,
    "volume": {plane: {"slices": 8, "size": 16} for plane in ("axial", "coronal", "sagittal")},
}


def tiny_params_dict(base: str, **overrides) -> dict:
    """params.yaml with tiny sizes and every path under ``base`` (absolute, or relative to the project)."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["paths"] = {"raw": f"{base}/raw", "curated": f"{base}/curated", "reports": f"{base}/reports", "tmp": f"{base}/scratch"}
    raw["phantoms"].update(TINY_PHANTOMS)
    raw["curate"].update(TINY_CURATE)
    raw["validate"]["min_class_count"] = 1
    raw["model"].update(TINY_MODEL)
    raw["train_2d"].update(TINY_TRAIN)
    raw["train_adapter"].update({"epochs": 4, "batch_size": 8, "lr": 1e-3})
    raw["sweep"]["apply_best"] = False  # tests train adapters without running a sweep first
    raw["inference"]["device"] = "cpu"  # the same numbers on a machine with a GPU (auto would take it)
    raw["mlflow"]["artifact_root"] = f"{base}/mlruns"  # run artifacts stay in tmp, not in the project's mlruns/
    raw["paths"].update(models=f"{base}/models", slice_cache=f"{base}/slice_cache", sweeps=f"{base}/sweeps",
                        general=f"{base}/general")
    for collection in raw["data"]["collections"]:
        collection["path"] = collection["path"].replace("data/raw", f"{base}/raw", 1)
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section].update(values)
        else:
            raw[section] = values
    return raw


def tiny_params(tmp: Path, **overrides) -> Params:
    """Validated tiny params with every path under the directory ``tmp``."""
    return Params.model_validate(tiny_params_dict(str(tmp), **overrides))


# --------------------------------------------------------------------------- curated phantoms


@dataclass(frozen=True)
class CuratedPhantoms:
    """Phantoms generated and curated (serially) under ``base``: ``raw/`` and ``curated/``."""

    base: Path
    params: Params  # tiny_params(base, **overrides): every path under base
    generated: dict[str, Any]  # generate()'s summary (also raw/phantoms.json)
    curated: Any  # curate()'s summary

    @property
    def raw(self) -> Path:
        return self.params.resolve(self.params.paths.raw)

    @property
    def curated_dir(self) -> Path:
        return self.params.resolve(self.params.paths.curated)

    def workspace(self, directory: Path) -> Path:
        """``directory`` with ``raw`` and ``curated`` linked to this dataset: ``tiny_params(directory)``
        reads this data (never write into it: other tests share it) and writes models, reports, caches
        and scratch under ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, target in (("raw", self.raw), ("curated", self.curated_dir)):
            (directory / name).symlink_to(target, target_is_directory=True)
        return directory


def curate_phantoms(base: Path, **overrides) -> CuratedPhantoms:
    """Generate the phantoms of ``tiny_params(base, **overrides)`` and curate them in-process."""
    from radclip.data.curate import curate
    from radclip.data.phantoms import generate

    params = tiny_params(base, **overrides)
    generated = generate(params)
    summary = curate(params, progress=False)
    return CuratedPhantoms(base=base, params=params, generated=generated, curated=summary)


# --------------------------------------------------------------------------- a committed git project

GIT = ["git", "-c", "user.name=radclip-test", "-c", "user.email=test@radclip.invalid", "-c", "commit.gpgsign=false"]


def git_commit(root: Path, *files: str) -> str:
    """``git init`` ``root``, commit ``files`` (relative to it), return the commit id."""
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*GIT, "-C", str(root), "add", *files], check=True)
    subprocess.run([*GIT, "-C", str(root), "commit", "-q", "-m", "init"], check=True)
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    return head.stdout.strip()


# --------------------------------------------------------------------------- DICOM fixture values

PATIENT = {  # fake identifying values written into DICOM headers
    "PatientName": "DOE^JANE",
    "PatientID": "PID-123",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC9",
    "InstitutionName": "General Hospital",
    "StudyDate": "20200101",
}


def ct_volume(shape=(6, 10, 12), seed=0) -> np.ndarray:
    """Integer HU values (exactly representable with slope 1, intercept -1024)."""
    return np.random.default_rng(seed).integers(-1000, 2000, shape).astype(np.float64)


# --------------------------------------------------------------------------- slice caches


def assert_same_cache(built: Path, reference: Path) -> None:
    """Same index rows, same shard files byte for byte, same cache.json."""
    import pyarrow.parquet as pq

    from radclip.data.slice_cache import INDEX_FILE, INFO_FILE

    assert (built / INFO_FILE).read_text() == (reference / INFO_FILE).read_text()
    assert pq.read_table(built / INDEX_FILE).equals(pq.read_table(reference / INDEX_FILE))
    shards = sorted(path.name for path in reference.glob("embeddings-*.npy"))
    assert shards and shards == sorted(path.name for path in built.glob("embeddings-*.npy"))
    for name in shards:
        assert np.array_equal(np.load(built / name), np.load(reference / name)), name


# --------------------------------------------------------------------------- fits


def assert_resumed_like_uninterrupted(resumed: Any, uninterrupted: Any) -> None:
    """A fit resumed after a killed worker (FitResult) matches the uninterrupted one: every epoch's losses and
    the saved 2D weights."""
    import pytest
    from safetensors.torch import load_file

    for before, after in zip(uninterrupted.history, resumed.history, strict=True):
        assert after["val_loss"] == pytest.approx(before["val_loss"], rel=1e-5)
        assert after["train_loss"] == pytest.approx(before["train_loss"], rel=1e-5)
    original = load_file(str(Path(uninterrupted.model_dir) / "clip" / "model.safetensors"))
    again = load_file(str(Path(resumed.model_dir) / "clip" / "model.safetensors"))
    for name, tensor in original.items():
        assert np.allclose(tensor.numpy(), again[name].numpy(), atol=1e-5), name
