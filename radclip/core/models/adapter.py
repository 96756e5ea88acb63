"""Slice pooling adapter: many slice embeddings of a volume → one volume embedding.

Each slice of a 3D volume goes through the 2D image encoder; this module turns the
resulting ``(B, S, D)`` slice embeddings into ``(B, D)``. In stage two only this
module trains. Which reducer the pipeline uses, the sweep chooses on the validation
InfoNCE (``sweep.space.reducers``); the ablation scores the others beside it.

``reducer="attention"`` (a learnable query)::

    x = I + PE[:S]                               PE: learnable, random normal, one vector per slice index
    h = x + g · Dropout(MHSA(x, x, x))           self-attention across slices (padding masked), gate g from 0
    w = softmax(q · K(h)) per head               a learnable query token scores every slice
    V = mean over heads of Σ_s w_s I_s           the slices' own embeddings, weighted

The reduction to one vector is a learnable query token rather than a mean over
``h``: it lets the adapter weigh the few slices that show a finding (a lesion
spans 2–4 of 32 slices), and its weights (averaged over heads) are returned for
inspection. The weighted values are the slice embeddings themselves, so ``V``
stays in the joint image–text space the frozen text tower was trained against,
and with the small initial query the weights start uniform: training starts at
global average pooling and learns where to look. (Pooling the projected ``h``
instead put ``V`` in a freshly initialised space that ~160 training volumes could
not map back to the captions: the adapter overfit within one epoch and the 3D
probes stayed at chance.) The self-attention branch enters through a gate that
starts at 0 (ReZero): scoring first sees each slice itself, and cross-slice context
is mixed in as far as it helps. Scoring LayerNorm-ed, MHSA-mixed slices from the
start left the weights near uniform (about 0.10 of the mass on lesion slices that
hold 0.09 of the slices); scoring the slices themselves put 0.21-0.23 there. The
pooling has no dropout, so the returned weights sum exactly to 1 over valid slices
(dropout 0.5 regularises the self-attention branch).

``reducer="mhsa_mean"`` is the paper's formula taken literally: ``V = mean over valid
slices of MHSA(I + PE)`` (same positional encoding and self-attention, no gate, no
query). The mean is linear in the attention: per head it weighs the slices' values by their
attention averaged over the valid queries. The weights it returns are those, averaged over
heads (with one head, ``V`` is exactly the output projection of that weighted sum of values).
Its output lives in the self-attention's freshly initialised output space, which is what the
note above is about.

``reducer="residual_mean"`` is that formula inside a transformer block's residual, gated from 0
(ReZero): ``V = mean over valid slices of (I + g · Dropout(MHSA(I + PE)))``. It starts exactly at
global average pooling and adds cross-slice context only as far as training finds it useful, so
whatever the average carries (a whole-volume property such as head size) stays in ``V``; the
output stays in the joint space the text tower was trained against. Its weights are reported
uniform: the slices enter the mean equally, the context term mixes them.

``reducer="mean"`` is the ablation baseline: global average pooling over valid
slices, no parameters.

Masks are ``True`` for a valid slice (PyTorch's ``key_padding_mask`` uses the
opposite convention; converted inside). Padded slices never influence the
output: their values are zeroed first and every attention ignores them, so
their weights are exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

Reducer = Literal["attention", "mhsa_mean", "residual_mean", "mean"]
REDUCERS: tuple[str, ...] = ("attention", "mhsa_mean", "residual_mean", "mean")

# Std of the random positional encoding: the ViT/CLIP convention for learned position
# embeddings, small next to the unit-norm slice embeddings so training starts close
# to "attention over the embeddings themselves".
POSITION_INIT_STD = 0.02


def masked_mean(slices: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Global average pooling over the valid slices: ``(B, D)`` and its uniform weights ``(B, S)``.
    Padded slices get weight 0, so their values must be finite (the adapter zeroes them first)."""
    weights = valid.to(slices.dtype) / valid.sum(dim=1, keepdim=True).to(slices.dtype)
    return torch.einsum("bs,bsd->bd", weights, slices), weights


@dataclass(frozen=True)
class AdapterSpec:
    """The adapter's shape: what a saved model records and a sweep varies."""

    heads: int = 4
    max_slices: int = 64
    dropout: float = 0.5
    reducer: Reducer = "attention"


class SlicePoolingAdapter(nn.Module):
    @classmethod
    def from_spec(cls, dim: int, spec: AdapterSpec) -> SlicePoolingAdapter:
        return cls(dim, spec.heads, spec.max_slices, dropout=spec.dropout, reducer=spec.reducer)

    def __init__(self, dim: int, heads: int, max_slices: int, dropout: float = 0.5, reducer: Reducer = "attention"):
        super().__init__()
        if reducer not in REDUCERS:
            raise ValueError(f"reducer must be one of {', '.join(REDUCERS)}, got {reducer!r}")
        if heads < 1 or dim % heads:
            raise ValueError(f"adapter heads ({heads}) must divide the embedding dimension ({dim})")
        if max_slices < 1:
            raise ValueError(f"max_slices must be at least 1, got {max_slices}")
        self.dim, self.heads, self.max_slices, self.reducer = dim, heads, max_slices, reducer
        if reducer != "mean":
            self.position = nn.Parameter(torch.randn(max_slices, dim) * POSITION_INIT_STD)
            self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.dropout = nn.Dropout(dropout)
        if reducer in ("attention", "residual_mean"):
            self.context_gate = nn.Parameter(torch.zeros(()))
        if reducer == "attention":
            self.query = nn.Parameter(torch.randn(1, 1, dim) * POSITION_INIT_STD)
            self.pool_attention = nn.MultiheadAttention(dim, heads, batch_first=True)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, max_slices={self.max_slices}, reducer={self.reducer!r}"

    def _check(self, slices: Tensor, mask: Tensor | None) -> Tensor:
        if slices.dim() != 3 or slices.shape[-1] != self.dim:
            raise ValueError(f"slices must be (batch, slices, {self.dim}), got {tuple(slices.shape)}")
        batch, count, _ = slices.shape
        if count > self.max_slices:
            raise ValueError(f"{count} slices exceed the adapter's max_slices={self.max_slices}")
        if mask is None:
            return torch.ones(batch, count, dtype=torch.bool, device=slices.device)
        if mask.shape != (batch, count):
            raise ValueError(f"mask must be (batch, slices) = {(batch, count)}, got {tuple(mask.shape)}")
        mask = mask.to(device=slices.device, dtype=torch.bool)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every volume needs at least one valid slice (a mask row is all False)")
        return mask

    def forward(self, slices: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``slices`` (B, S, D), ``mask`` (B, S) bool, True = valid → (volume (B, D), weights (B, S))."""
        valid = self._check(slices, mask)
        # Zero padded slices so that even NaN/inf padding cannot leak through 0 * x.
        slices = slices.masked_fill(~valid.unsqueeze(-1), 0.0)
        if self.reducer == "mean":
            return masked_mean(slices, valid)

        padding = ~valid  # PyTorch: True = ignore
        x = slices + self.position[: slices.shape[1]].to(slices.dtype)
        if self.reducer == "mhsa_mean":
            attended, attention = self.self_attention(x, x, x, key_padding_mask=padding, need_weights=True)
            volume, query_share = masked_mean(self.dropout(attended), valid)
            # (B, S_query, S_key), head-averaged: each key's attention over the valid queries
            return volume, torch.einsum("bq,bqk->bk", query_share, attention.to(slices.dtype))
        attended, _ = self.self_attention(x, x, x, key_padding_mask=padding, need_weights=False)
        if self.reducer == "residual_mean":
            return masked_mean(slices + self.context_gate * self.dropout(attended), valid)
        hidden = x + self.context_gate * self.dropout(attended)
        query = self.query.expand(slices.shape[0], -1, -1).to(hidden.dtype)
        _, head_weights = self.pool_attention(
            query, hidden, hidden, key_padding_mask=padding, need_weights=True, average_attn_weights=False
        )  # (B, heads, 1, S); only the scores are used, values are the slice embeddings
        weights = head_weights.squeeze(2).mean(dim=1)
        return torch.einsum("bs,bsd->bd", weights.to(slices.dtype), slices), weights
