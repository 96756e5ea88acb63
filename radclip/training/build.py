"""Params → the core model: the one constructor the stages use."""

from __future__ import annotations

from pathlib import Path

import torch

from radclip.config import AdapterParams, Params
from radclip.core.models.adapter import AdapterSpec
from radclip.core.models.clip import PretrainedWeightsUnavailable, build_clip, reinitialised
from radclip.core.models.radclip import RadCLIP
from radclip.core.preprocessing import Preprocessing


def adapter_spec(adapter: AdapterParams) -> AdapterSpec:
    return AdapterSpec(heads=adapter.heads, max_slices=adapter.max_slices, dropout=adapter.dropout,
                       reducer=adapter.reducer)


def pretrained_source(params: Params) -> str | None:
    """``model.pretrained`` as ``build_clip`` takes it: a directory of this project (the pipeline's
    ``pretrain_general`` output) resolved against the project root, else the name as given (a hub
    name from the local HF cache, or an absolute directory)."""
    name = params.model.pretrained
    if name is None:
        return None
    local = params.resolve(name)
    if local.exists():
        return str(local)
    if not Path(name).is_absolute() and local.parent.is_dir() and local.parent != params.resolve("."):
        # A missing directory of this project (e.g. models/general-clip before pretrain_general ran), not a
        # hub name: say which file is missing and what writes it, rather than "not in the HF cache".
        raise PretrainedWeightsUnavailable(
            f"{local}: no CLIP checkpoint there (model.pretrained: {name}). The embedded default's starting CLIP "
            "is written by the pretrain_general stage: run `dvc repro` or `radclip pretrain-general` first.")
    return name


def build_model(params: Params, vocabulary_texts: list[str], preprocessing: Preprocessing | None = None,
                *, random_init: bool = False) -> RadCLIP:
    """CLIP backbone per ``params.model``, curated image size, loss temperature, and the data's
    preprocessing contract (saved with the model).

    Weights that are initialised here (a fresh CLIP, the adapter) are drawn from
    ``model.init_seed`` in a forked RNG, so the same params give the same model without
    touching the caller's random state. ``random_init`` keeps the pretrained CLIP's
    architecture and tokenizer but draws all its weights afresh (the ablation's random-init
    encoder, text tower included).
    """
    model_params = params.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_params.init_seed)
        clip, tokenizer, pixels = build_clip(
            pretrained_source(params),
            image_size=params.curate.image_size,
            vocabulary_texts=vocabulary_texts,
            vision=model_params.vision.model_dump(),
            text=model_params.text.model_dump(),
            projection_dim=model_params.projection_dim,
            vocab_size=params.general.vocab_size,
        )
        if random_init:
            clip = reinitialised(clip, model_params.init_seed)  # RadCLIP (below) freezes its text tower
        model = RadCLIP(
            clip,
            tokenizer,
            adapter=adapter_spec(model_params.adapter),
            image_size=params.curate.image_size,
            pixels=pixels,
            temperature=params.loss.temperature,
            learnable_temperature=params.loss.learnable_temperature,
            preprocessing=preprocessing,
        )
    return model.train()
