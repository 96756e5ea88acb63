"""Shared builders for tests: tiny params pointing at temporary directories."""

from __future__ import annotations

from pathlib import Path

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
    "suites": {"chest_xray_5class": 3, "brain_mri_4class": 3, "brain_mri_3d_2class": 3, "chest_ct_3d_3class": 2},
}
TINY_MODEL = {
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
    raw["paths"].update(models=f"{base}/models", slice_cache=f"{base}/slice_cache", sweeps=f"{base}/sweeps")
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
