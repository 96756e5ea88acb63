"""The CLIP backbone: a small CLIP built from params, or real weights read from disk only.

``model.pretrained`` decides:

* ``None`` (the embedded default) — ``CLIPModel(CLIPConfig(...))`` from the vision
  and text towers in params, vision ``image_size`` equal to the curated image size,
  3 input channels, and a word-level tokenizer over the training captions.
* a local directory saved with ``save_pretrained`` — ``CLIPModel.from_pretrained(path)``
  and the CLIP tokenizer stored there.
* a hub name (``openai/clip-vit-large-patch14``) — the same from the local Hugging
  Face cache only (``local_files_only=True``). Nothing here ever downloads: when the
  weights are not cached it fails at once with :class:`PretrainedWeightsUnavailable`
  explaining how to provide them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerBase

from radclip.config import ModelParams
from radclip.models.tokenizer import build_word_level_tokenizer, load_tokenizer, word_level_text_ids


class PretrainedWeightsUnavailable(FileNotFoundError):
    """``model.pretrained`` names weights that are not on this machine."""


def _how_to_provide(name: str) -> str:
    return (
        f"Pretrained CLIP weights {name!r} are not available on this machine, and radclip never downloads "
        "(the pipeline runs offline). To provide them either:\n"
        f"  1. on a machine with network access run `huggingface-cli download {name}` (or `hf download {name}`), "
        "then copy its Hugging Face cache directory (~/.cache/huggingface, or $HF_HOME) here and set HF_HOME "
        "to it; or\n"
        f"  2. save the model with `CLIPModel.from_pretrained({name!r}).save_pretrained(DIR)` and "
        f"`CLIPTokenizerFast.from_pretrained({name!r}).save_pretrained(DIR)`, copy DIR here and set "
        "`model.pretrained: DIR` in params."
    )


def _looks_like_path(name_or_path: str) -> bool:
    # Hub names are "owner/name" (or a bare name); anything absolute, relative-dotted,
    # home-relative or existing on disk is meant as a directory.
    return (
        Path(name_or_path).exists()
        or name_or_path.startswith(("/", "./", "../", "~"))
        or name_or_path.count("/") > 1
    )


def load_pretrained_clip(name_or_path: str) -> tuple[CLIPModel, PreTrainedTokenizerBase]:
    """Load real CLIP weights and their tokenizer from a local directory or the local HF cache.

    Raises :class:`PretrainedWeightsUnavailable` immediately (no network, no retries)
    when they are not there.
    """
    if _looks_like_path(name_or_path):
        directory = Path(name_or_path).expanduser()
        if not (directory / "config.json").is_file():
            raise PretrainedWeightsUnavailable(
                f"{directory}: not a directory saved with CLIPModel.save_pretrained (no config.json).\n"
                + _how_to_provide("openai/clip-vit-large-patch14")
            )
        source = str(directory)
    else:
        source = name_or_path
    try:
        # local_files_only: even without HF_HUB_OFFLINE, never touch the network (which
        # would otherwise retry for ~20 s before failing on an offline machine).
        clip = CLIPModel.from_pretrained(source, local_files_only=True)
    except OSError as exc:
        raise PretrainedWeightsUnavailable(f"{_how_to_provide(name_or_path)}\n(cause: {exc})") from None
    try:
        tokenizer = load_tokenizer(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise PretrainedWeightsUnavailable(
            f"{name_or_path}: CLIP weights found but no tokenizer files next to them.\n"
            f"{_how_to_provide(name_or_path)}\n(cause: {exc})"
        ) from None
    return clip, tokenizer


def small_clip_config(model: ModelParams, image_size: int, vocab_size: int) -> CLIPConfig:
    """The embedded default's CLIP configuration from the towers in params."""
    vision, text = model.vision, model.text
    if image_size % vision.patch_size:
        raise ValueError(f"curate.image_size {image_size} is not a multiple of model.vision.patch_size {vision.patch_size}")
    for tower_name, tower in (("vision", vision), ("text", text)):
        if tower.hidden_size % tower.num_attention_heads:
            raise ValueError(
                f"model.{tower_name}.hidden_size {tower.hidden_size} is not divisible by "
                f"model.{tower_name}.num_attention_heads {tower.num_attention_heads}"
            )
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        max_position_embeddings=text.max_position_embeddings,
        projection_dim=model.projection_dim,
        **word_level_text_ids(),
    )
    vision_config = dict(
        hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size,
        num_hidden_layers=vision.num_hidden_layers,
        num_attention_heads=vision.num_attention_heads,
        patch_size=vision.patch_size,
        image_size=image_size,
        num_channels=3,  # grey images are repeated to RGB, exactly as for real CLIP weights
        projection_dim=model.projection_dim,
    )
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=model.projection_dim)


def build_clip(
    model: ModelParams, image_size: int, vocabulary_texts: list[str]
) -> tuple[CLIPModel, PreTrainedTokenizerBase]:
    """The CLIP backbone and its tokenizer, with the text tower frozen per params.

    ``vocabulary_texts`` (the training captions) define the word-level vocabulary of
    the embedded default; they are ignored with real weights.
    """
    if model.pretrained is None:
        tokenizer = build_word_level_tokenizer(vocabulary_texts, max_length=model.text.max_position_embeddings)
        clip = CLIPModel(small_clip_config(model, image_size, vocab_size=len(tokenizer)))
    else:
        clip, tokenizer = load_pretrained_clip(model.pretrained)
    freeze_text_tower(clip, model.freeze_text)
    # RadCLIP owns its temperature (radclip.models.radclip); CLIP's own stays unused and frozen.
    clip.logit_scale.requires_grad_(False)
    return clip, tokenizer


def text_modules(clip: CLIPModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    return clip.text_model, clip.text_projection


def vision_modules(clip: CLIPModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    return clip.vision_model, clip.visual_projection


def freeze_text_tower(clip: CLIPModel, freeze: bool = True) -> None:
    """Text tower and text projection: ``requires_grad_(not freeze)``."""
    for module in text_modules(clip):
        module.requires_grad_(not freeze)


def text_tower_frozen(clip: CLIPModel) -> bool:
    return not any(p.requires_grad for module in text_modules(clip) for p in module.parameters())
