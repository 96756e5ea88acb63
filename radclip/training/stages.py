"""The training stages (``init_model``, ``pretrain_2d``, ``embed_slices``, ``pretrain_adapter``): paths
from params, metrics for DVC.

Slice caches and adapters exist per 2D encoder: ``finetuned`` (the RadCLIP pipeline) and
``vanilla`` (the starting weights, for the ablation grid).
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from radclip.config import Params
from radclip.reports import write_metrics
from radclip.training.fit import FitResult, fit

MODEL_INIT = "radclip-init"  # the starting weights ("vanilla CLIP"): what 2D pretraining fine-tunes
MODEL_2D = "radclip-2d"  # fine-tuned 2D encoder (+ untrained adapter)
MODEL_FINAL = "radclip"  # fine-tuned 2D encoder + trained slice pooling adapter: the RadCLIP model
CACHE_FINETUNED = "finetuned"
# Per 2D encoder: the model holding it, and the model its trained adapter is saved as.
ENCODER_MODELS = {"finetuned": MODEL_2D, "vanilla": MODEL_INIT}
ADAPTED_MODELS = {"finetuned": MODEL_FINAL, "vanilla": "radclip-vanilla"}


def vocabulary(params: Params) -> list[str]:
    """Every caption of the curated manifest: what a freshly built tokenizer must cover (words only)."""
    manifest = pd.read_parquet(params.resolve(params.paths.curated) / "manifest.parquet", columns=["caption"])
    return sorted(manifest["caption"].unique())


def model_dir(params: Params, name: str) -> Path:
    return params.resolve(params.paths.models) / name


def _check_encoder(encoder: str) -> None:
    if encoder not in ENCODER_MODELS:
        raise ValueError(f"unknown 2D encoder {encoder!r}: expected one of {sorted(ENCODER_MODELS)}")


def slice_cache_dir(params: Params, encoder: str = CACHE_FINETUNED) -> Path:
    _check_encoder(encoder)
    return params.resolve(params.paths.slice_cache) / encoder


def init_model(params: Params) -> Path:
    """Save the starting weights: CLIP from ``model.pretrained`` (or built small from params) with a
    fresh adapter. 2D pretraining fine-tunes this copy; the ablation's vanilla encoder is this copy."""
    from radclip.models import build_model

    out = model_dir(params, MODEL_INIT)
    shutil.rmtree(out, ignore_errors=True)
    build_model(params, vocabulary(params)).save_pretrained(out)
    return out


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
    start = model_dir(params, MODEL_INIT)
    if not start.exists():  # outside DVC (e.g. `radclip pretrain-2d` alone): save the starting weights first
        init_model(params)
    result = fit(
        params,
        "2d",
        data_dir=params.resolve(params.paths.curated),
        vocabulary=vocabulary(params),
        model_source=start,
        out_dir=model_dir(params, MODEL_2D),
        fail_at=fail_at,
    )
    _write_reports(params, "pretrain_2d", result)
    return result


def embed_slices(params: Params, *, encoder: str = CACHE_FINETUNED, progress: bool = True) -> dict:
    """Encode every slice of every curated volume once with a frozen 2D encoder (``finetuned`` or ``vanilla``)."""
    from radclip.models import RadCLIP
    from radclip.training.slice_cache import write_slice_cache

    out = slice_cache_dir(params, encoder)
    model = RadCLIP.from_pretrained(model_dir(params, ENCODER_MODELS[encoder]))
    return write_slice_cache(
        model,
        params.resolve(params.paths.curated),
        out,
        progress=progress,
        meta={"model": str(Path(params.paths.models) / ENCODER_MODELS[encoder]), "encoder": encoder},
    )


def report_name(stage: str, encoder: str) -> str:
    """reports/ file stem of a per-encoder stage: the RadCLIP pipeline's keeps the plain name."""
    return stage if encoder == CACHE_FINETUNED else f"{stage}-{encoder}"


def adapter_params(params: Params) -> Params:
    """The adapter's training params: the adapter sweep's best heads / lr / temperature when
    ``sweep.apply_best`` (both encoders get them, so the ablation compares like with like)."""
    if params.sweep.apply_best and params.sweep.stage == "adapter":
        from radclip.tuning import load_best_params

        return load_best_params(params)
    return params


def pretrain_adapter(params: Params, *, encoder: str = CACHE_FINETUNED) -> FitResult:
    """Train only the slice pooling adapter on one encoder's slice-embedding cache (encoders frozen)."""
    params = adapter_params(params)
    result = fit(
        params,
        "adapter",
        data_dir=slice_cache_dir(params, encoder),
        vocabulary=[],
        model_source=model_dir(params, ENCODER_MODELS[encoder]),
        out_dir=model_dir(params, ADAPTED_MODELS[encoder]),
        tags={"encoder": encoder},
    )
    _write_reports(params, report_name("pretrain_adapter", encoder), result)
    return result
