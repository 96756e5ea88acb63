"""Params → the core model: the one constructor the stages use."""

from __future__ import annotations

import torch

from radclip.config import AdapterParams, Params
from radclip.core.models.adapter import AdapterSpec
from radclip.core.models.clip import build_clip
from radclip.core.models.radclip import RadCLIP
from radclip.core.preprocessing import Preprocessing


def adapter_spec(adapter: AdapterParams) -> AdapterSpec:
    return AdapterSpec(heads=adapter.heads, max_slices=adapter.max_slices, dropout=adapter.dropout,
                       reducer=adapter.reducer)


def build_model(params: Params, vocabulary_texts: list[str], preprocessing: Preprocessing | None = None) -> RadCLIP:
    """CLIP backbone per ``params.model``, curated image size, loss temperature, and the data's
    preprocessing contract (saved with the model).

    Weights that are initialised here (the embedded default's CLIP, the adapter) are
    drawn from ``model.init_seed`` in a forked RNG, so the same params give the same
    model without touching the caller's random state.
    """
    model_params = params.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_params.init_seed)
        clip, tokenizer, pixels = build_clip(
            model_params.pretrained,
            image_size=params.curate.image_size,
            vocabulary_texts=vocabulary_texts,
            vision=model_params.vision.model_dump(),
            text=model_params.text.model_dump(),
            projection_dim=model_params.projection_dim,
        )
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
