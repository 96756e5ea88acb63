"""RadCLIP's text tokenizer: CLIP's byte-level BPE, trained here or loaded next to real weights.

Real CLIP weights carry their BPE (``vocab.json`` + ``merges.txt``, or ``tokenizer.json``);
``load_tokenizer`` reads it with ``AutoTokenizer`` (local files only). The embedded default
trains one of the same kind on its general-domain corpus (:func:`train_bpe_tokenizer`):
``transformers.CLIPTokenizer``'s own pipeline (NFC, whitespace folding, lowercase, CLIP's
split pattern, byte-level alphabet, word-final ``</w>`` symbols), ``<|startoftext|>`` /
``<|endoftext|>`` around every sequence and the end token as padding, exactly as OpenAI's.

Every one of the 256 bytes is in the vocabulary both word-inside and word-final, so no
string ever maps to an unknown token: a word the corpus never had (a radiology term for
the general model) falls back to shorter pieces, down to single bytes. The saved
``tokenizer.json`` loads with ``AutoTokenizer.from_pretrained`` as a ``CLIPTokenizer``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, CLIPTokenizer, PreTrainedTokenizerBase

START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
WORD_END = "</w>"


def byte_alphabet() -> list[str]:
    """The 256 byte symbols of byte-level BPE (GPT-2's / CLIP's mapping), in code-point order."""
    return sorted(pre_tokenizers.ByteLevel.alphabet())


def train_bpe_tokenizer(texts: Iterable[str], *, vocab_size: int, max_length: int) -> CLIPTokenizer:
    """A CLIP-format byte-level BPE learnt from ``texts``, deterministic for the same texts.

    The vocabulary is laid out like OpenAI's: the 256 byte symbols, the same 256 word-final, the
    merges in the order they were learnt, then the start and end tokens. ``vocab_size``
    counts all of them; ``max_length`` is the text tower's context (longer texts are
    truncated, keeping the end token CLIP pools at).
    """
    texts = list(texts)
    alphabet = byte_alphabet()
    base = [*alphabet, *(symbol + WORD_END for symbol in alphabet)]
    merge_budget = vocab_size - len(base) - 2
    if merge_budget < 0:
        raise ValueError(f"vocab_size {vocab_size} is below the {len(base) + 2} byte and special tokens")
    # CLIPTokenizer's own pipeline, retrained: the learnt merges are exactly what that pipeline applies.
    seed = CLIPTokenizer(vocab={START_TOKEN: 0, END_TOKEN: 1}, merges=[])
    trained = seed.train_new_from_iterator(texts, vocab_size=len(base) + merge_budget + 2, initial_alphabet=alphabet,
                                           show_progress=False)
    model = json.loads(trained.backend_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    vocab: dict[str, int] = {symbol: index for index, symbol in enumerate(base)}
    kept: list[tuple[str, str]] = []
    for left, right in merges:
        if len(kept) == merge_budget:
            break
        if left not in vocab or right not in vocab:  # pieces of a merge not kept (budget) cannot merge
            continue
        merged = left + right
        if merged not in vocab:
            vocab[merged] = len(vocab)
        kept.append((left, right))
    vocab[START_TOKEN] = len(vocab)
    vocab[END_TOKEN] = len(vocab)
    # The backend takes merges as pairs; the stubs only list the "a b" string form.
    tokenizer = CLIPTokenizer(vocab=vocab, merges=kept, model_max_length=max_length)  # type: ignore[arg-type]
    tokenizer.padding_side = "right"  # CLIP's causal text tower: padding after the end token changes nothing
    return tokenizer


def text_config_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Token ids a ``CLIPTextConfig`` needs: CLIP pools the text at the first end token.

    ``eos_token_id == 2`` would select transformers' legacy argmax-over-ids pooling; the
    layout above puts the end token last, far from 2.
    """
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if any(value is None for value in ids.values()) or ids["eos_token_id"] == 2:
        raise ValueError(f"tokenizer lacks CLIP's start/end/pad tokens or puts the end token at id 2: {ids}")
    return {key: int(value) for key, value in ids.items() if value is not None}


def unknown_pieces(tokenizer: PreTrainedTokenizerBase, text: str) -> list[str]:
    """Tokens of ``text`` that are the unknown token (CLIP's is the end token: a mid-text end = unknown)."""
    ids = tokenizer(text, truncation=False)["input_ids"]
    inner = ids[1:-1] if ids and ids[0] == tokenizer.bos_token_id else ids[:-1]
    unknown = {tokenizer.unk_token_id, tokenizer.eos_token_id} - {None}
    return [str(tokenizer.convert_ids_to_tokens(int(i))) for i in inner if i in unknown]


def load_tokenizer(path: str | Path, *, local_files_only: bool = True) -> PreTrainedTokenizerBase:
    """A tokenizer saved with ``save_pretrained`` (or a cached hub name), read offline."""
    return AutoTokenizer.from_pretrained(str(path), local_files_only=local_files_only)
