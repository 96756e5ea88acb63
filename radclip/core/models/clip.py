"""The CLIP backbone: a small CLIP built from tower settings, or real weights read from disk only.

``pretrained`` decides:

* ``None`` — a fresh ``CLIPModel(CLIPConfig(...))`` from the vision and text tower
  settings, vision ``image_size`` equal to the curated image size, 3 input channels,
  OpenAI CLIP's pixel mean/std, and a CLIP-format BPE learnt from ``vocabulary_texts``
  (``pretrain_general`` builds the embedded default's general CLIP this way; tests
  build tiny models so).
* a local directory saved with ``save_pretrained`` — ``CLIPModel.from_pretrained(path)``
  and the CLIP tokenizer stored there.
* a hub name (``openai/clip-vit-large-patch14``) — the same from the local Hugging
  Face cache only (``local_files_only=True``). Nothing here ever downloads: when the
  weights are not cached it fails at once with :class:`PretrainedWeightsUnavailable`
  explaining how to provide them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

# The PIL-backed image processor: the default one needs torchvision, which does not import beside this
# CPU torch; both read and write the same preprocessor_config.json, and only its settings are used here.
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerBase
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from radclip.core.models.tokenizer import load_tokenizer, text_config_ids, train_bpe_tokenizer
from radclip.core.preprocessing import RESAMPLE_MODES, ContractError, PixelNormalisation


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


def load_pretrained_clip(name_or_path: str) -> tuple[CLIPModel, PreTrainedTokenizerBase, PixelNormalisation]:
    """Load real CLIP weights, their tokenizer and image-processor settings from a local directory or
    the local HF cache.

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
    try:
        pixels = load_pixel_normalisation(source)
    except ContractError:
        raise  # the config is there but says something this version cannot use: its own message
    except (OSError, ValueError) as exc:
        raise PretrainedWeightsUnavailable(
            f"{name_or_path}: CLIP weights found but no image-processor config (preprocessor_config.json) next to "
            f"them; it says how pixels are normalised.\n{_how_to_provide(name_or_path)}\n(cause: {exc})"
        ) from None
    return clip, tokenizer, pixels


def small_clip_config(
    vision: Mapping[str, int], text: Mapping[str, int], projection_dim: int, image_size: int,
    tokenizer: PreTrainedTokenizerBase,
) -> CLIPConfig:
    """The embedded default's CLIP configuration from the tower settings (``hidden_size``, layers, ...)."""
    if image_size % vision["patch_size"]:
        raise ValueError(
            f"curate.image_size {image_size} is not a multiple of model.vision.patch_size {vision['patch_size']}"
        )
    for tower_name, tower in (("vision", vision), ("text", text)):
        if tower["hidden_size"] % tower["num_attention_heads"]:
            raise ValueError(
                f"model.{tower_name}.hidden_size {tower['hidden_size']} is not divisible by "
                f"model.{tower_name}.num_attention_heads {tower['num_attention_heads']}"
            )
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=text["hidden_size"],
        intermediate_size=text["intermediate_size"],
        num_hidden_layers=text["num_hidden_layers"],
        num_attention_heads=text["num_attention_heads"],
        max_position_embeddings=text["max_position_embeddings"],
        projection_dim=projection_dim,
        **text_config_ids(tokenizer),
    )
    vision_config = dict(
        hidden_size=vision["hidden_size"],
        intermediate_size=vision["intermediate_size"],
        num_hidden_layers=vision["num_hidden_layers"],
        num_attention_heads=vision["num_attention_heads"],
        patch_size=vision["patch_size"],
        image_size=image_size,
        num_channels=3,  # grey images are repeated to RGB, exactly as for real CLIP weights
        projection_dim=projection_dim,
    )
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)


def new_clip(
    *,
    image_size: int,
    vocabulary_texts: list[str],
    vision: Mapping[str, int],
    text: Mapping[str, int],
    projection_dim: int,
    vocab_size: int,
) -> tuple[CLIPModel, PreTrainedTokenizerBase, PixelNormalisation]:
    """A freshly initialised CLIP (both towers trainable), a BPE learnt from ``vocabulary_texts`` and
    OpenAI's pixel normalisation; weights drawn from torch's current RNG."""
    tokenizer = train_bpe_tokenizer(vocabulary_texts, vocab_size=vocab_size, max_length=text["max_position_embeddings"])
    clip = CLIPModel(small_clip_config(vision, text, projection_dim, image_size, tokenizer))
    # Bilinear with antialiasing: how the small default has always resized (curated 64 px = its 64 px).
    pixels = PixelNormalisation(size=image_size, mean=tuple(OPENAI_CLIP_MEAN), std=tuple(OPENAI_CLIP_STD),  # type: ignore[arg-type]
                                resample="bilinear")
    return clip, tokenizer, pixels


def reinitialised(clip: CLIPModel, seed: int) -> CLIPModel:
    """Same architecture and config as ``clip``, every weight drawn afresh (the ablation's random init)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(clip.config)


def save_clip(directory: Path, clip: CLIPModel, tokenizer: PreTrainedTokenizerBase, pixels: PixelNormalisation) -> None:
    """A CLIP checkpoint laid out like a hub one: weights, tokenizer and image-processor config side by
    side, so ``model.pretrained: <directory>`` (and ``CLIPModel.from_pretrained``) read it."""
    clip.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    image_processor(pixels).save_pretrained(directory)


def build_clip(
    pretrained: str | None,
    *,
    image_size: int,
    vocabulary_texts: list[str],
    vision: Mapping[str, int],
    text: Mapping[str, int],
    projection_dim: int,
    vocab_size: int,
) -> tuple[CLIPModel, PreTrainedTokenizerBase, PixelNormalisation]:
    """The CLIP backbone, its tokenizer and pixel normalisation, with the text tower frozen.

    ``vocabulary_texts`` train the BPE of a fresh CLIP (``pretrained=None``); they and
    the tower settings are ignored with pretrained weights.
    """
    if pretrained is None:
        clip, tokenizer, pixels = new_clip(image_size=image_size, vocabulary_texts=vocabulary_texts, vision=vision,
                                           text=text, projection_dim=projection_dim, vocab_size=vocab_size)
    else:
        clip, tokenizer, pixels = load_pretrained_clip(pretrained)
    freeze_for_radclip(clip)
    return clip, tokenizer, pixels


def freeze_for_radclip(clip: CLIPModel) -> None:
    """The text tower frozen (the paper's method), and CLIP's own temperature too: RadCLIP owns its
    temperature (radclip.core.models.radclip), so CLIP's stays unused."""
    freeze_text_tower(clip)
    clip.logit_scale.requires_grad_(False)


def text_modules(clip: CLIPModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    return clip.text_model, clip.text_projection


def vision_modules(clip: CLIPModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    return clip.vision_model, clip.visual_projection


def freeze_text_tower(clip: CLIPModel) -> None:
    """Text tower and text projection: no gradients (the paper trains against the frozen text tower)."""
    for module in text_modules(clip):
        module.requires_grad_(False)


def text_tower_frozen(clip: CLIPModel) -> bool:
    return not any(p.requires_grad for module in text_modules(clip) for p in module.parameters())


def image_processor(pixels: PixelNormalisation) -> CLIPImageProcessorPil:
    """A ``CLIPImageProcessor`` with these settings: what a model built here saves next to its CLIP."""
    codes = {mode: code for code, mode in RESAMPLE_MODES.items()}
    return CLIPImageProcessorPil(
        size={"shortest_edge": pixels.size},
        crop_size={"height": pixels.size, "width": pixels.size},
        resample=codes[pixels.resample],
        image_mean=list(pixels.mean),
        image_std=list(pixels.std),
    )


def load_pixel_normalisation(clip_dir: str | Path) -> PixelNormalisation:
    """The checkpoint's ``CLIPImageProcessor`` settings (``preprocessor_config.json``), read offline."""
    config = Path(clip_dir) / "preprocessor_config.json"
    if Path(clip_dir).is_dir() and not config.is_file():
        raise FileNotFoundError(f"{config}: no image-processor config; a CLIP checkpoint needs one to say how its "
                                "pixels are normalised (save it with CLIPImageProcessor.save_pretrained)")
    processor = CLIPImageProcessorPil.from_pretrained(str(clip_dir), local_files_only=True)
    return PixelNormalisation.from_image_processor(processor, str(config))
