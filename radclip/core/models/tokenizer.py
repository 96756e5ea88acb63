"""Tokenizers for RadCLIP's text tower.

Two kinds, recorded by name in a saved model's ``config.json``:

``word_level``
    The embedded default (a small CLIP built from params, no real weights). A
    word-level vocabulary built from the training captions with the ``tokenizers``
    library: NFKC + lowercase, split on whitespace and punctuation, vocabulary
    sorted so the same captions always give the same ids. Special tokens are fixed:
    ``[PAD]`` = 0, ``[EOS]`` = 1, ``[UNK]`` = 2, and every sequence ends with
    ``[EOS]`` (kept when truncating). CLIP pools the text at the EOS position, so the
    text config must say ``eos_token_id=1`` (see :func:`word_level_text_ids`).
    Captions here are short templates ("Brain MRI with Glioma"), so a word-level
    vocabulary is complete for the training set; unseen words map to ``[UNK]``.

``clip``
    Real weights: the CLIP BPE tokenizer stored next to them
    (``CLIPTokenizerFast`` through ``AutoTokenizer.from_pretrained``, local files only).

Both are ``transformers`` fast tokenizers, so ``save_pretrained`` /
``from_pretrained`` round-trip them as JSON (no pickles).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (  # type: ignore[attr-defined]  # CLIPTokenizerFast: a v5 runtime alias the stubs lack
    AutoTokenizer,
    CLIPTokenizerFast,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

TokenizerKind = Literal["word_level", "clip"]

PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "[PAD]", "[EOS]", "[UNK]"
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)  # list order = ids 0, 1, 2


def _normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # Whitespace first, then every punctuation character becomes its own word
    # ("X-ray" -> "x", "-", "ray"), so punctuation never glues unseen words together.
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])


def caption_words(texts: Iterable[str]) -> list[str]:
    """The sorted set of words the word-level tokenizer sees in ``texts``."""
    normalizer, pre_tokenizer = _normalizer(), _pre_tokenizer()
    words: set[str] = set()
    for text in texts:
        words.update(word for word, _span in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    words.difference_update(SPECIAL_TOKENS)
    return sorted(words)


def build_word_level_tokenizer(texts: Iterable[str], *, max_length: int) -> PreTrainedTokenizerFast:
    """A deterministic word-level tokenizer over the words of ``texts``.

    ``max_length`` is the text tower's ``max_position_embeddings``: longer captions
    are truncated, keeping the final ``[EOS]``.
    """
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in caption_words(texts):
        vocab[word] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    backend.normalizer = _normalizer()
    backend.pre_tokenizer = _pre_tokenizer()
    backend.post_processor = processors.TemplateProcessing(single=f"$A {EOS_TOKEN}", special_tokens=[(EOS_TOKEN, EOS_ID)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=max_length,
        padding_side="right",  # CLIP's causal text tower: padding after EOS cannot change the EOS state
    )


def word_level_text_ids() -> dict[str, int | None]:
    """Token ids a ``CLIPTextConfig`` needs with the word-level tokenizer.

    ``eos_token_id`` must be a real id other than 2: CLIP pools the first EOS
    position, except that ``eos_token_id == 2`` selects a legacy argmax-over-ids
    path (which would pool the largest word id instead). Hence ``[EOS]`` = 1.
    """
    return {"pad_token_id": PAD_ID, "eos_token_id": EOS_ID, "bos_token_id": None}  # no BOS token


def tokenizer_kind(tokenizer: PreTrainedTokenizerBase) -> TokenizerKind:
    return "clip" if isinstance(tokenizer, CLIPTokenizerFast) else "word_level"


def load_tokenizer(path: str | Path, *, local_files_only: bool = True) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved with ``save_pretrained`` (or a cached hub name).

    ``AutoTokenizer`` follows the class recorded in ``tokenizer_config.json``: the
    CLIP BPE tokenizer (``CLIPTokenizerFast``) next to real weights, the plain fast
    tokenizer for a saved word-level one.
    """
    return AutoTokenizer.from_pretrained(str(path), local_files_only=local_files_only)
