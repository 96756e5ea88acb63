"""LRCLR's add-ons to a CLIP (paper 002): local region selection by attention rollout, and a
cross-modal transformer over the selected regions and the caption's tokens.

Region selection (after TransFG): for every head k of the vision tower, the product of that
head's attention matrices over all L layers, ``a_k = A_k^L ··· A_k^1`` (the paper's eq. 4),
says how much the CLS token at the top draws from each input token through the layers. Head k's
region is the most-attended patch of its CLS row, so there are K = heads regions per image (two
heads may pick the same patch). The region tokens are the vision tower's last hidden states at
those patches, through its post-LayerNorm and the visual projection: the same map that turns the
CLS state into the global image embedding, so regions and image live in the joint space.

Only the eager attention path returns attention weights (SDPA returns none), so
:func:`use_eager_vision_attention` switches the vision tower to it; the weights are the same
softmax either way, up to float rounding.

The cross-modal transformer (:class:`CrossModalTransformer`) reads ``[image CLS; K regions]`` and
the frozen text tower's token states projected into the joint space, tells the two apart with a
modality-type embedding, masks text padding, and returns ``v_l`` (its output at the image CLS),
``t_l`` (at the caption's pooled token, where CLIP's text tower pools) and the attention of
``t_l`` over the regions in the last layer (averaged over heads), the map LRCLR colours regions
by. :class:`TextTokenCache` keeps the token states per caption: the text tower is frozen and
captions repeat, as for the pooled embeddings. The local loss then contrasts ``v_l`` with ``t_l``
(``radclip.core.losses.GlobalLocalLoss``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPModel, PreTrainedTokenizerBase

from radclip.core.models.text_cache import TextEmbeddingCache

EAGER = "eager"


def use_eager_vision_attention(clip: CLIPModel) -> None:
    """Run the vision tower on the eager attention path, the one that returns attention weights."""
    clip.vision_model.set_attn_implementation(EAGER)


def attention_rollout(attentions: Sequence[Tensor]) -> Tensor:
    """Per-head product of the layers' attention matrices, first layer first in ``attentions``:
    each ``(B, H, T, T)`` (rows: queries) → ``(B, H, T, T)`` = ``A^L @ ... @ A^1`` per head."""
    if not attentions:
        raise ValueError("attention_rollout needs the attention weights of at least one layer")
    rollout = attentions[0]
    for layer in attentions[1:]:
        if layer.shape != rollout.shape:
            raise ValueError(f"attention shapes differ between layers: {tuple(layer.shape)} vs {tuple(rollout.shape)}")
        rollout = layer @ rollout
    return rollout


def select_regions(rollout: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, H, T, T)`` rollout (token 0 = CLS) → per head the most-attended patch of the CLS row:
    patch indices ``(B, H)`` in ``[0, T - 1)`` (token index minus one) and their rollout scores."""
    scores, indices = rollout[:, :, 0, 1:].max(dim=-1)
    return indices, scores


def rollout_heatmap(rollout: Tensor) -> Tensor:
    """The CLS row's rollout over the patches, averaged over heads and summed to 1: ``(B, T - 1)``
    (the baseline heatmap: where the unmodified tower looks)."""
    cls_row = rollout[:, :, 0, 1:].mean(dim=1)
    return cls_row / cls_row.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(cls_row.dtype).tiny)


@dataclass
class RegionOutput:
    image: Tensor  # (B, D) L2-normalised global image embedding (as encode_pixels)
    cls_token: Tensor  # (B, D) the CLS state in the joint space, not normalised
    regions: Tensor  # (B, K, D) selected patch states in the joint space, not normalised
    indices: Tensor  # (B, K) selected patch indices, row-major over the patch grid
    rollout: Tensor  # (B, K, T, T) per-head attention rollout (K = heads)


def encode_regions(clip: CLIPModel, pixel_values: Tensor) -> RegionOutput:
    """The vision tower once, with its attention: global embedding, rollout, K selected regions."""
    vision = clip.vision_model
    # transformers has no public getter for the attention path: it dispatches on config._attn_implementation
    if vision.config._attn_implementation != EAGER:  # noqa: SLF001
        raise ValueError("region selection needs the vision tower's attention weights: call "
                         "use_eager_vision_attention(clip) first (SDPA returns none)")
    out = vision(pixel_values=pixel_values, output_attentions=True)
    if not out.attentions:
        raise ValueError("the vision tower returned no attention weights")
    rollout = attention_rollout(out.attentions)
    indices, _ = select_regions(rollout)
    states = vision.post_layernorm(out.last_hidden_state)  # (B, T, W): the pooler's LayerNorm on every token
    patches = states[:, 1:]
    picked = torch.gather(patches, 1, indices.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    cls_token = clip.visual_projection(states[:, 0])
    return RegionOutput(image=F.normalize(cls_token.float(), dim=-1), cls_token=cls_token,
                        regions=clip.visual_projection(picked), indices=indices, rollout=rollout)


def text_token_states(clip: CLIPModel, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """The text tower's final token states in the joint space ``(B, L, D)`` (final LayerNorm, then the
    text projection on every token) and the index of each caption's pooled token ``(B,)``."""
    out = clip.text_model(input_ids=input_ids, attention_mask=attention_mask)
    pooled = out.pooler_output  # (B, W): the state at the pooled token, which we locate to point t_l at it
    matches = (out.last_hidden_state == pooled.unsqueeze(1)).all(dim=-1)
    if not bool(matches.any(dim=1).all()):
        raise ValueError("could not locate the text tower's pooled token in its last hidden states")
    return clip.text_projection(out.last_hidden_state), matches.int().argmax(dim=1)


class TextTokenCache:
    """Per caption, the frozen text tower's token states in the joint space and its pooled token's index
    (what :class:`CrossModalTransformer` reads), computed once while the text weights stay the same.
    Tokenisation and the weight fingerprint are :class:`TextEmbeddingCache`'s, so both caches key a
    caption alike and drop their entries on the same weight changes."""

    def __init__(self, clip: CLIPModel, tokenizer: PreTrainedTokenizerBase):
        self.clip = clip
        self.embeddings = TextEmbeddingCache(clip, tokenizer)
        self._states: dict[tuple[int, ...], tuple[Tensor, int]] = {}
        self._fingerprint: tuple | None = None
        self.misses = 0

    def __len__(self) -> int:
        return len(self._states)

    def encode(self, captions: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """``(states (N, L, D)`` zero beyond each caption, ``mask (N, L)`` bool, ``pooled (N,))`` in order."""
        if len(captions) == 0:
            raise ValueError("no captions to encode")
        if not self.embeddings.frozen:
            raise ValueError("the text token cache needs a frozen text tower (LRCLR fine-tunes the image side only)")
        keys = self.embeddings.tokenize(captions)
        fingerprint = self.embeddings.weights_fingerprint()
        if fingerprint != self._fingerprint:
            self._states.clear()
            self._fingerprint = fingerprint
        missing = list(dict.fromkeys(key for key in keys if key not in self._states))
        if missing:
            device = self.clip.text_projection.weight.device
            input_ids, attention_mask = self.embeddings.pad(missing)
            with torch.no_grad():
                states, pooled = text_token_states(self.clip, input_ids.to(device), attention_mask.to(device))
            for row, key in enumerate(missing):
                self._states[key] = (states[row, : len(key)].detach(), int(pooled[row]))
            self.misses += len(missing)
        length = max(len(key) for key in keys)
        first = self._states[keys[0]][0]
        out = first.new_zeros((len(keys), length, first.shape[-1]))
        mask = torch.zeros((len(keys), length), dtype=torch.bool, device=first.device)
        pooled_index = torch.empty(len(keys), dtype=torch.long, device=first.device)
        for row, key in enumerate(keys):
            cached, index = self._states[key]
            out[row, : len(key)] = cached
            mask[row, : len(key)] = True
            pooled_index[row] = index
        return out, mask, pooled_index


@dataclass(frozen=True)
class CrossModalSpec:
    """The cross-modal transformer's size (saved in a RadCLIP config)."""

    width: int = 128
    layers: int = 1
    heads: int = 4
    dropout: float = 0.0


@dataclass
class CrossModalOutput:
    image: Tensor  # (B, D) v_l, L2-normalised
    text: Tensor  # (B, D) t_l, L2-normalised
    text_to_regions: Tensor  # (B, K) last layer's attention of t_l over the regions (heads averaged, sums ≤ 1)


class _Block(nn.Module):
    """Pre-norm transformer block that can return its attention weights."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm_attention = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width)
        )

    def forward(self, x: Tensor, padding: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        normed = self.norm_attention(x)
        attended, weights = self.attention(normed, normed, normed, key_padding_mask=padding,
                                           need_weights=need_weights, average_attn_weights=True)
        x = x + attended
        return x + self.mlp(self.norm_mlp(x)), weights


class CrossModalTransformer(nn.Module):
    """One transformer over ``[image CLS; regions; text tokens]`` (LRCLR's cross-modality layer)."""

    @classmethod
    def from_spec(cls, dim: int, spec: CrossModalSpec) -> CrossModalTransformer:
        return cls(dim, spec.width, spec.layers, spec.heads, spec.dropout)

    def __init__(self, dim: int, width: int, layers: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if layers < 1:
            raise ValueError(f"the cross-modal transformer needs at least one layer, got {layers}")
        if width % heads:
            raise ValueError(f"cross-modal heads ({heads}) must divide its width ({width})")
        self.dim, self.width = dim, width
        self.image_in = nn.Linear(dim, width)
        self.text_in = nn.Linear(dim, width)
        self.modality = nn.Embedding(2, width)  # 0: image tokens, 1: text tokens
        self.blocks = nn.ModuleList(_Block(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.image_out = nn.Linear(width, dim)
        self.text_out = nn.Linear(width, dim)

    def forward(self, cls_token: Tensor, regions: Tensor, text_states: Tensor, text_mask: Tensor,
                text_pooled: Tensor) -> CrossModalOutput:
        """``cls_token`` (B, D), ``regions`` (B, K, D), ``text_states`` (B, L, D), ``text_mask`` (B, L)
        (True/1 = a real token), ``text_pooled`` (B,) the index of t_l's token in the caption."""
        batch, k = regions.shape[0], regions.shape[1]
        image = self.image_in(torch.cat([cls_token.unsqueeze(1), regions], dim=1)) + self.modality.weight[0]
        text = self.text_in(text_states) + self.modality.weight[1]
        x = torch.cat([image, text], dim=1)
        valid = torch.cat([torch.ones(batch, k + 1, dtype=torch.bool, device=x.device), text_mask.bool()], dim=1)
        weights = None
        for i, block in enumerate(self.blocks):
            x, weights = block(x, ~valid, need_weights=i == len(self.blocks) - 1)
        assert weights is not None  # the last block returns its weights
        x = self.norm(x)
        rows = torch.arange(batch, device=x.device)
        text_position = k + 1 + text_pooled
        v_local = self.image_out(x[:, 0])
        t_local = self.text_out(x[rows, text_position])
        to_regions = weights[rows, text_position, 1 : k + 1]
        return CrossModalOutput(image=F.normalize(v_local.float(), dim=-1), text=F.normalize(t_local.float(), dim=-1),
                                text_to_regions=to_regions)
