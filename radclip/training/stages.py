"""The training stages (``pretrain_2d``, ``embed_slices``, ``pretrain_adapter``): paths from params, metrics for DVC."""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from radclip.config import Params
from radclip.reports import write_metrics
from radclip.training.fit import FitResult, fit

MODEL_2D = "radclip-2d"  # fine-tuned 2D encoder (+ untrained adapter)
MODEL_FINAL = "radclip"  # 2D encoder + trained slice pooling adapter
CACHE_FINETUNED = "finetuned"


def vocabulary(params: Params) -> list[str]:
    """Every caption of the curated manifest: what a freshly built tokenizer must cover (words only)."""
    manifest = pd.read_parquet(params.resolve(params.paths.curated) / "manifest.parquet", columns=["caption"])
    return sorted(manifest["caption"].unique())


def model_dir(params: Params, name: str) -> Path:
    return params.resolve(params.paths.models) / name


def _write_reports(params: Params, stage: str, result: FitResult) -> None:
    summary = {k: v for k, v in asdict(result).items() if k not in ("history", "model_dir")}
    summary["epochs_run"] = len(result.history)
    metrics_file = write_metrics(params, f"{stage}.json", summary)
    columns = ["epoch", "train_loss", "val_loss", "lr", "temperature", "pairs_per_second"]
    with open(metrics_file.with_name(f"{stage}_history.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result.history)


def pretrain_2d(params: Params, *, fail_at: tuple[int, int] | None = None) -> FitResult:
    """Fine-tune the 2D image encoder on curated image–caption pairs (text tower frozen)."""
    result = fit(
        params,
        "2d",
        data_dir=params.resolve(params.paths.curated),
        vocabulary=vocabulary(params),
        out_dir=model_dir(params, MODEL_2D),
        fail_at=fail_at,
    )
    _write_reports(params, "pretrain_2d", result)
    return result


def embed_slices(params: Params, *, progress: bool = True) -> dict:
    """Encode every slice of every curated volume once with the frozen fine-tuned 2D encoder."""
    from radclip.models import RadCLIP
    from radclip.training.slice_cache import write_slice_cache

    source = model_dir(params, MODEL_2D)
    model = RadCLIP.from_pretrained(source)
    return write_slice_cache(
        model,
        params.resolve(params.paths.curated),
        params.resolve(params.paths.slice_cache) / CACHE_FINETUNED,
        progress=progress,
        meta={"model": str(Path(params.paths.models) / MODEL_2D)},
    )


def pretrain_adapter(params: Params) -> FitResult:
    """Train only the slice pooling adapter on the slice-embedding cache (encoders frozen)."""
    result = fit(
        params,
        "adapter",
        data_dir=params.resolve(params.paths.slice_cache) / CACHE_FINETUNED,
        vocabulary=[],
        model_source=model_dir(params, MODEL_2D),
        out_dir=model_dir(params, MODEL_FINAL),
    )
    _write_reports(params, "pretrain_adapter", result)
    return result
