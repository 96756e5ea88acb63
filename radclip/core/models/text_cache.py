"""Run the frozen text tower once per unique caption.

Captions are short templates ("Brain MRI with Glioma", "Normal Chest CT") that
repeat massively, and the text tower plus its projection are frozen: every
caption's embedding is a constant. :class:`TextEmbeddingCache` keys the
L2-normalised embedding by the tokenised caption (the tuple of token ids, so
spelling variants that tokenise alike share an entry) and runs only the misses
through the tower, in one batch, under ``torch.no_grad()``.

The cache is only valid while the text weights stay what they were when an entry
was computed. It is cleared when

* the text tower is not frozen (any parameter requires grad) — then ``encode``
  runs the tower with gradients on every call and caches nothing;
* any text parameter was modified in place or replaced (``load_state_dict``,
  ``.to(device/dtype)``): detected through each parameter's storage pointer, dtype,
  device and a checksum of its values (sum and sum of squares; one pass over the
  weights, a fraction of a forward pass, and public API, unlike a tensor's private
  version counter).

Counters: ``misses`` counts captions run through the tower (unique within a call);
``hits`` counts every other caption served (including repeats within one call).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import CLIPModel, CLIPTextConfig, PreTrainedTokenizerBase


class TextEmbeddingCache:
    def __init__(self, clip: CLIPModel, tokenizer: PreTrainedTokenizerBase):
        self.clip = clip
        self.tokenizer = tokenizer
        # CLIPConfig always holds a CLIPTextConfig here (its stubs also allow dict | None).
        self.max_length = int(cast(CLIPTextConfig, clip.config.text_config).max_position_embeddings)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._embeddings: dict[tuple[int, ...], Tensor] = {}
        self._fingerprint: tuple | None = None
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------------ state

    def __len__(self) -> int:
        return len(self._embeddings)

    def clear(self) -> None:
        self._embeddings.clear()
        self._fingerprint = None

    def reset_counters(self) -> None:
        self.hits = self.misses = 0

    def _text_parameters(self) -> list[Tensor]:
        return [*self.clip.text_model.parameters(), *self.clip.text_projection.parameters()]

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self._text_parameters())

    @torch.no_grad()
    def weights_fingerprint(self) -> tuple:
        """Storage, dtype, device and checksums of the text weights: equal while the weights are unchanged."""
        parameters = self._text_parameters()
        sums = torch.stack([torch.stack((p.double().sum(), p.double().square().sum())) for p in parameters])
        checksums = tuple(sums.cpu().flatten().tolist())
        return tuple((p.data_ptr(), p.dtype, p.device) for p in parameters) + checksums

    # ------------------------------------------------------------------ encoding

    def tokenize(self, captions: Sequence[str]) -> list[tuple[int, ...]]:
        """Token ids per caption, unpadded (truncated to the tower's length, EOS kept)."""
        encoded = self.tokenizer(list(captions), truncation=True, max_length=self.max_length)
        return [tuple(ids) for ids in encoded["input_ids"]]

    def pad(self, token_ids: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Right-padded ``(input_ids, attention_mask)`` ``(N, longest)``: the tower is causal, so tokens
        after EOS cannot change the pooled EOS state."""
        length = max(len(ids) for ids in token_ids)
        input_ids = torch.full((len(token_ids), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(token_ids), length), dtype=torch.long)
        for row, ids in enumerate(token_ids):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask

    def run_tower(self, token_ids: Sequence[Sequence[int]]) -> Tensor:
        """Text tower + projection + L2 normalisation over a batch of token-id sequences."""
        device = self.clip.text_projection.weight.device
        input_ids, attention_mask = self.pad(token_ids)
        outputs = self.clip.text_model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        return F.normalize(self.clip.text_projection(outputs.pooler_output), dim=-1)

    def encode(self, captions: Sequence[str]) -> Tensor:
        """``(N, D)`` L2-normalised text embeddings, one row per caption, in order."""
        if len(captions) == 0:
            raise ValueError("no captions to encode")
        keys = self.tokenize(captions)
        if not self.frozen:
            self.clear()  # the weights move every step: nothing cached is valid
            self.misses += len(keys)
            return self.run_tower(keys)

        fingerprint = self.weights_fingerprint()
        if fingerprint != self._fingerprint:
            self.clear()
            self._fingerprint = fingerprint
        missing = list(dict.fromkeys(key for key in keys if key not in self._embeddings))
        if missing:
            with torch.no_grad():
                computed = self.run_tower(missing).detach()
            self._embeddings.update(zip(missing, computed))
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([self._embeddings[key] for key in keys])
