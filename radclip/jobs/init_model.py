"""Stage ``init_model``: the starting weights (the ablation's vanilla CLIP) and the same architecture randomly
initialised (its random-init baseline), each with the data's preprocessing contract."""

from __future__ import annotations

import shutil
from pathlib import Path

from radclip.config import Params
from radclip.core.preprocessing import Preprocessing
from radclip.jobs.common import (
    MODEL_INIT,
    MODEL_RANDOM,
    log,
    model_dir,
    stage_main,
    vocabulary,
    write_effective_params,
)
from radclip.training.build import build_model

STAGE = "init_model"
PARAMS = ("profile", "model", "loss.temperature", "loss.learnable_temperature", "curate.image_size",
          "general.vocab_size")


def run(params: Params, *, progress: bool = True) -> Path:
    """CLIP from ``model.pretrained`` with a fresh adapter (2D pretraining fine-tunes this copy), and the
    random-init baseline beside it. The curated data's contract is saved with both (and every model
    trained from them)."""
    out, random_out = model_dir(params, MODEL_INIT), model_dir(params, MODEL_RANDOM)
    contract = Preprocessing.read(params.resolve(params.paths.curated))
    captions = vocabulary(params)
    for directory, random_init in ((out, False), (random_out, True)):
        shutil.rmtree(directory, ignore_errors=True)
        build_model(params, captions, preprocessing=contract, random_init=random_init).save_pretrained(directory)
    write_effective_params(params, STAGE, PARAMS)
    log.info("init_model: starting weights in %s, random-init baseline in %s", out, random_out)
    return out


def main() -> None:
    stage_main(run)
