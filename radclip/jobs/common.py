"""What every job shares: where artifacts live, the metrics writer, the effective params, the stage entry."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from radclip.config import Params, ParamsError, load_params
from radclip.data.shards import MANIFEST_FILE

MODEL_GENERAL = "general-clip"  # pretrain_general: the embedded default's general-domain CLIP checkpoint
MODEL_INIT = "radclip-init"  # the starting weights ("vanilla CLIP"): what 2D pretraining fine-tunes
MODEL_RANDOM = "radclip-random"  # the starting weights' architecture, randomly initialised (ablation baseline)
MODEL_2D = "radclip-2d"  # fine-tuned 2D encoder (+ untrained adapter)
MODEL_FINAL = "radclip"  # fine-tuned 2D encoder + trained slice pooling adapter: the RadCLIP model
# pretrain_lrclr's arms, both fine-tuned further from MODEL_2D with the same epochs, data and seeds
MODEL_LRCLR = "radclip-lrclr"  # L_global + λ·L_local, with the cross-modal transformer
MODEL_LRCLR_CONTROL = "radclip-lrclr-control"  # λ = 0: the global loss alone
CACHE_FINETUNED = "finetuned"
# Per 2D encoder: the model holding it, and the model its trained adapter is saved as.
ENCODER_MODELS = {"finetuned": MODEL_2D, "vanilla": MODEL_INIT, "random": MODEL_RANDOM}
EFFECTIVE_PARAMS_DIR = "params"  # under paths.reports
BEST_PARAMS_FILE = "best_params.yaml"  # under paths.sweeps: the sweep's best adapter params

log = logging.getLogger("radclip")


def model_dir(params: Params, name: str) -> Path:
    return params.resolve(params.paths.models) / name


def check_encoder(encoder: str) -> None:
    if encoder not in ENCODER_MODELS:
        raise ValueError(f"unknown 2D encoder {encoder!r}: expected one of {sorted(ENCODER_MODELS)}")


def slice_cache_dir(params: Params, encoder: str = CACHE_FINETUNED) -> Path:
    check_encoder(encoder)
    return params.resolve(params.paths.slice_cache) / encoder


def report_name(stage: str, encoder: str) -> str:
    """reports/ file stem of a per-encoder stage: the RadCLIP pipeline's keeps the plain name."""
    return stage if encoder == CACHE_FINETUNED else f"{stage}-{encoder}"


def vocabulary(params: Params) -> list[str]:
    """Every caption of the curated manifest: what a freshly built tokenizer must cover (words only)."""
    manifest = pd.read_parquet(params.resolve(params.paths.curated) / MANIFEST_FILE, columns=["caption"])
    return sorted(manifest["caption"].unique())


def best_params_path(params: Params) -> Path:
    return params.resolve(params.paths.sweeps) / BEST_PARAMS_FILE


def write_metrics(params: Params, name: str, data: dict) -> Path:
    """``<reports>/<name>`` as sorted, indented JSON (stable bytes for identical numbers)."""
    path = params.resolve(params.paths.reports) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "lr", "temperature", "pairs_per_second"]


def write_history(path: Path, history: list[dict], columns: Sequence[str] = HISTORY_COLUMNS) -> Path:
    """A training stage's per-epoch metrics as CSV (``dvc plots``): one row per epoch, ``columns`` only."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    return path


def effective_params_path(params: Params, stage: str) -> Path:
    return params.resolve(params.paths.reports) / EFFECTIVE_PARAMS_DIR / f"{stage}.yaml"


def write_effective_params(
    params: Params, stage: str, sections: Sequence[str], options: dict[str, Any] | None = None
) -> Path:
    """``reports/params/<stage>.yaml``: the sections the stage reads, as it ran with them (profile overlay and
    sweep best params applied), the command's options and the digest of those sections."""
    document = {
        "stage": stage,
        "profile": params.profile,
        "options": dict(options or {}),
        "digest": params.digest(*sections) if sections else None,
        "params": params.sections(*sections),
    }
    path = effective_params_path(params, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def configure_logging() -> None:
    # Our own progress at INFO; libraries (GE is chatty at INFO) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("radclip").setLevel(logging.INFO)


def stage_main(run: Callable[..., Any], *, encoder_option: bool = False, argv: Sequence[str] | None = None) -> None:
    """Entry of ``pipelines/<stage>.py``: ``[--params FILE] [--profile NAME] [--quiet] [--encoder NAME]``."""
    parser = argparse.ArgumentParser(prog=Path(sys.argv[0]).name)
    parser.add_argument("--params", type=Path, default=None, help="params file (default: ./params.yaml)")
    parser.add_argument("--profile", default=None, help="overlay params/<profile>.yaml")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (also when stderr is not a terminal)")
    if encoder_option:
        parser.add_argument("--encoder", default=CACHE_FINETUNED, choices=sorted(ENCODER_MODELS))
    args = parser.parse_args(argv)
    configure_logging()
    try:
        params = load_params(args.params, profile=args.profile)
    except ParamsError as error:
        sys.exit(f"params error\n{error}")
    # Bars only where a person watches (`dvc repro` in a terminal); logs and CI get the per-stage lines.
    options = {"progress": not args.quiet and sys.stderr.isatty()}
    if encoder_option:
        options["encoder"] = args.encoder
    run(params, **options)
