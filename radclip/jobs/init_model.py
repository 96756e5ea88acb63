"""Stage ``init_model``: the starting weights (the ablation's vanilla CLIP), with the data's preprocessing contract."""

from __future__ import annotations

import shutil
from pathlib import Path

from radclip.config import Params
from radclip.core.preprocessing import Preprocessing
from radclip.jobs.common import (
    MODEL_INIT,
    log,
    model_dir,
    stage_main,
    vocabulary,
    write_effective_params,
)
from radclip.training.build import build_model

STAGE = "init_model"
PARAMS = ("profile", "model", "loss.temperature", "loss.learnable_temperature", "curate.image_size")


def run(params: Params, *, progress: bool = True) -> Path:
    """CLIP from ``model.pretrained`` (or built small from params) with a fresh adapter; 2D pretraining
    fine-tunes this copy. The curated data's contract is saved with it (and every model trained from it)."""
    out = model_dir(params, MODEL_INIT)
    shutil.rmtree(out, ignore_errors=True)
    contract = Preprocessing.read(params.resolve(params.paths.curated))
    build_model(params, vocabulary(params), preprocessing=contract).save_pretrained(out)
    write_effective_params(params, STAGE, PARAMS)
    log.info("init_model: starting weights in %s", out)
    return out


def main() -> None:
    stage_main(run)
