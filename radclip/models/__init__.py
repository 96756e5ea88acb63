"""RadCLIP models: the CLIP backbone, tokenizers, the text embedding cache and the slice pooling adapter.

``build_model(params, captions)`` is the one constructor stages use;
``RadCLIP.from_pretrained(dir)`` reloads a saved model (safetensors + JSON only).
"""

from radclip.models.adapter import SlicePoolingAdapter
from radclip.models.clip import (
    PretrainedWeightsUnavailable,
    build_clip,
    freeze_text_tower,
    load_pretrained_clip,
    small_clip_config,
)
from radclip.models.radclip import RadCLIP, build_model
from radclip.models.text_cache import TextEmbeddingCache
from radclip.models.tokenizer import build_word_level_tokenizer, load_tokenizer, tokenizer_kind

__all__ = [
    "PretrainedWeightsUnavailable",
    "RadCLIP",
    "SlicePoolingAdapter",
    "TextEmbeddingCache",
    "build_clip",
    "build_model",
    "build_word_level_tokenizer",
    "freeze_text_tower",
    "load_pretrained_clip",
    "load_tokenizer",
    "small_clip_config",
    "tokenizer_kind",
]
