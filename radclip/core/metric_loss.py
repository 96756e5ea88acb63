"""CXR-CML's metric loss (``shared/papers/003``, eq. 3): a triplet margin loss on cluster pseudo-labels.

L_m = mean over active triplets of max(0, d(a, p) − d(a, n) + α), with d the Euclidean distance between
L2-normalised embeddings, a and p sharing a pseudo-label and n carrying another. The paper sums over "the triplets"
without saying which; the mining is a param:

* ``semi-hard`` (FaceNet's, the default): for each anchor–positive pair the closest negative that is still farther
  than the positive; where none is, the farthest negative (the triplet is then inactive unless within the margin).
  It avoids the collapse that the hardest negatives cause early in training.
* ``hard``: per anchor, its farthest positive and closest negative (batch-hard).
* ``all``: every (a, p, n) of the batch.

The mean is over *active* triplets (loss > 0), so the loss does not fade as easy triplets accumulate. Triplets are
mined within the local batch: on several workers each mines its own batch (DDP averages the gradients), since mining
over an all-gathered batch would need the distance matrix of the global batch on every worker.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Mining = Literal["semi-hard", "hard", "all"]


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.2,
                 mining: Mining = "semi-hard") -> torch.Tensor:
    """The mean margin violation over the active triplets of a batch ``(B, D)`` with pseudo-labels ``(B,)``;
    zero (with a graph) when the batch has no anchor–positive–negative triplet or none is active."""
    if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
        raise ValueError(f"embeddings must be (B, D) and labels (B,), got {tuple(embeddings.shape)} and "
                         f"{tuple(labels.shape)}")
    if margin < 0:
        raise ValueError(f"margin must be ≥ 0, got {margin}")
    normalised = F.normalize(embeddings.float(), dim=-1)
    # Euclidean distances from the Gram matrix (unit vectors: d² = 2 − 2 cos); clamped before the root, whose
    # gradient is infinite at 0 (an embedding against itself).
    distances = (2 - 2 * normalised @ normalised.T).clamp_min(1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive, negative = same & ~eye, ~same
    if mining == "all":
        violations = distances[:, :, None] - distances[:, None, :] + margin  # [a, p, n]
        valid = positive[:, :, None] & negative[:, None, :]
        losses = violations[valid].clamp_min(0)
    elif mining == "hard":
        has_both = positive.any(dim=1) & negative.any(dim=1)
        hardest_positive = distances.masked_fill(~positive, float("-inf")).amax(dim=1)
        hardest_negative = distances.masked_fill(~negative, float("inf")).amin(dim=1)
        losses = (hardest_positive - hardest_negative + margin)[has_both].clamp_min(0)
    elif mining == "semi-hard":
        anchors, positives = positive.nonzero(as_tuple=True)
        keep = negative[anchors].any(dim=1)
        anchors, positives = anchors[keep], positives[keep]
        d_ap = distances[anchors, positives]  # (T,)
        d_an = distances[anchors]  # (T, B)
        is_negative = negative[anchors]
        farther = is_negative & (d_an > d_ap[:, None])
        closest_farther = d_an.masked_fill(~farther, float("inf")).amin(dim=1)
        farthest = d_an.masked_fill(~is_negative, float("-inf")).amax(dim=1)
        chosen = torch.where(farther.any(dim=1), closest_farther, farthest)
        losses = (d_ap - chosen + margin).clamp_min(0)
    else:
        raise ValueError(f"mining must be 'semi-hard', 'hard' or 'all', got {mining!r}")
    active = losses[losses > 0]
    return active.mean() if len(active) else embeddings.sum() * 0.0
