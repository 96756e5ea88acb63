"""RadCLIP models: the CLIP backbone, the tokenizer, the text embedding cache and the slice pooling adapter.

``radclip.training.build.build_model(params, captions)`` is the one constructor stages use;
``RadCLIP.from_pretrained(dir)`` reloads a saved model (safetensors + JSON only).
"""

from radclip.core.models.adapter import AdapterSpec, SlicePoolingAdapter
from radclip.core.models.clip import (
    PretrainedWeightsUnavailable,
    build_clip,
    freeze_text_tower,
    load_pretrained_clip,
    small_clip_config,
)
from radclip.core.models.radclip import RadCLIP
from radclip.core.models.text_cache import TextEmbeddingCache
from radclip.core.models.tokenizer import load_tokenizer, train_bpe_tokenizer

__all__ = [
    "AdapterSpec",
    "PretrainedWeightsUnavailable",
    "RadCLIP",
    "SlicePoolingAdapter",
    "TextEmbeddingCache",
    "build_clip",
    "freeze_text_tower",
    "load_pretrained_clip",
    "load_tokenizer",
    "small_clip_config",
    "train_bpe_tokenizer",
]
