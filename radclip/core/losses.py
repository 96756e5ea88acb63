"""Contrastive loss for RadCLIP: symmetric InfoNCE over a (global) batch of image–text pairs.

Captions are template sentences built from about a hundred conditions, so the same
caption appears many times in one batch. Plain InfoNCE would treat those identical
captions as negatives of each other and push apart embeddings that should agree;
the duplicate-aware variant (the default) counts every pair with the same caption
id as a positive and spreads the target probability evenly over them.

Distributed training (``torch.distributed`` initialised, world size > 1): every
worker gathers the features and caption ids of all workers, so its negatives are
the global batch, and computes the loss of its *local rows* against *all columns*
(open_clip's ``local_loss``). Conventions, checked by tests/core/test_losses.py:

* every worker must hold the same local batch size ``B`` (``all_gather`` needs equal
  shapes: use a sampler with ``drop_last=True``);
* the mean over workers of the per-worker losses equals the single-process loss on the
  concatenated batch;
* with ``gather_with_grad=True`` (the default) the gather is differentiable: the gradient
  a worker receives for its local features equals ``world_size`` times the matching rows
  of the single-process gradient. DDP *averages* gradients across workers, so the
  parameter update is exactly the single-process one. With ``gather_with_grad=False``
  (open_clip's default, cheaper backward) the gathered copies of other workers' features
  carry no gradient and the local slice is replaced by the local tensors; the loss value
  is unchanged, but the gradient lacks the terms in which this worker's features act as
  negatives for other workers' rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: temperature never drops below 0.01


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every worker's gradient for this worker's slice.

    Backward is an all_reduce followed by taking the own slice (a reduce-scatter), written
    with all_reduce because gloo has no reduce_scatter. Every worker must run backward.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world_size, rank = dist.get_world_size(), dist.get_rank()
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(parts, local)
        ctx.rank, ctx.batch = rank, local.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad_gathered: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad_gathered = grad_gathered.contiguous().clone()
        dist.all_reduce(grad_gathered, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.batch
        return grad_gathered[start : start + ctx.batch]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather(local: torch.Tensor, *, with_grad: bool) -> torch.Tensor:
    """Concatenate ``local`` from every worker in rank order; gradient per ``with_grad``.

    Without grad, this worker's slice is replaced by ``local`` itself so the local rows
    and columns still carry a gradient (``dist.all_gather`` returns detached tensors).
    """
    if with_grad and local.requires_grad:
        return _GatherWithGrad.apply(local)
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local.contiguous())
    parts[dist.get_rank()] = local
    return torch.cat(parts)


def soft_targets(row_ids: torch.Tensor, column_ids: torch.Tensor) -> torch.Tensor:
    """T[i, j] = [row_i == col_j] / Σ_j [row_i == col_j]: uniform over same-caption pairs.

    Every row id must occur among the column ids (true when rows are a slice of columns).
    """
    same_caption = (row_ids[:, None] == column_ids[None, :]).to(torch.float32)
    return same_caption / same_caption.sum(dim=1, keepdim=True)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE on cosine similarities scaled by 1/τ.

    ``forward(image_features, text_features, logit_scale, caption_ids=None)`` takes
    L2-normalised ``(B, D)`` features, the scale as a scalar tensor (``RadCLIP.logit_scale_exp()``) and
    optional int64 caption ids ``(B,)``. Duplicate-aware mode without ids (or with
    all-distinct ids) is plain InfoNCE with targets ``arange(B)``.
    """

    def __init__(self, duplicate_aware: bool = True, gather_with_grad: bool = True) -> None:
        super().__init__()
        self.duplicate_aware = duplicate_aware
        self.gather_with_grad = gather_with_grad

    def extra_repr(self) -> str:
        return f"duplicate_aware={self.duplicate_aware}, gather_with_grad={self.gather_with_grad}"

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        caption_ids: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """The mean loss, or with ``reduction="none"`` the per-row losses ``(B,)`` of the local rows
        (image row i and text row i averaged), whose mean is the loss."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        if image_features.shape != text_features.shape or image_features.ndim != 2:
            raise ValueError(
                f"expected image and text features of the same shape (B, D), got "
                f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
            )
        batch = image_features.shape[0]
        use_ids = self.duplicate_aware and caption_ids is not None
        if use_ids:
            assert caption_ids is not None  # use_ids implies it
            caption_ids = caption_ids.to(device=image_features.device, dtype=torch.int64).reshape(-1)
            if caption_ids.shape[0] != batch:
                raise ValueError(f"caption_ids has {caption_ids.shape[0]} entries for a batch of {batch}")

        if _distributed():
            rank = dist.get_rank()
            all_images = _gather(image_features, with_grad=self.gather_with_grad)
            all_texts = _gather(text_features, with_grad=self.gather_with_grad)
            all_ids = _gather(caption_ids, with_grad=False) if use_ids and caption_ids is not None else None
        else:
            rank, all_images, all_texts, all_ids = 0, image_features, text_features, caption_ids

        # Local rows against the global columns, in both directions.
        logits_per_image = logit_scale * image_features @ all_texts.T
        logits_per_text = logit_scale * text_features @ all_images.T

        if use_ids:
            # The positive mask is symmetric and a row's normaliser is its caption's count,
            # so the same soft-target rows serve both directions.
            assert caption_ids is not None and all_ids is not None  # use_ids implies both
            targets = soft_targets(caption_ids, all_ids).to(logits_per_image.dtype)
        else:
            targets = torch.arange(batch, device=image_features.device) + rank * batch
        per_image = F.cross_entropy(logits_per_image, targets, reduction=reduction)
        per_text = F.cross_entropy(logits_per_text, targets, reduction=reduction)
        return (per_image + per_text) / 2


class GlobalLocalLoss(nn.Module):
    """LRCLR's objective (paper 002, eq. 6): ``L = L_global + λ · L_local``.

    Both terms are :class:`ClipLoss` (duplicate-aware, all-gathered across workers) with one shared
    logit scale: the global term on the towers' embeddings, the local term on the cross-modal
    transformer's ``(v_l, t_l)``. ``forward`` returns ``(total, global, local)``; with λ = 0 the
    local term is not computed, so the total and its gradients are exactly the global loss's.
    """

    def __init__(self, local_weight: float, duplicate_aware: bool = True, gather_with_grad: bool = True) -> None:
        super().__init__()
        if local_weight < 0:
            raise ValueError(f"the local loss weight must be >= 0, got {local_weight}")
        self.local_weight = float(local_weight)
        self.clip_loss = ClipLoss(duplicate_aware=duplicate_aware, gather_with_grad=gather_with_grad)

    def extra_repr(self) -> str:
        return f"local_weight={self.local_weight}"

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        local_image: torch.Tensor | None,
        local_text: torch.Tensor | None,
        logit_scale: torch.Tensor,
        caption_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        global_loss = self.clip_loss(image_features, text_features, logit_scale, caption_ids)
        if self.local_weight == 0:
            return global_loss, global_loss, None
        if local_image is None or local_text is None:
            raise ValueError("a local loss weight > 0 needs the cross-modal (v_l, t_l) features")
        local_loss = self.clip_loss(local_image, local_text, logit_scale, caption_ids)
        return global_loss + self.local_weight * local_loss, global_loss, local_loss
