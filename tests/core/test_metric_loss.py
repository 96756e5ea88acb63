"""CXR-CML's triplet loss against a brute-force computation written from the paper's eq. 3, triplet by triplet."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from radclip.core.metric_loss import triplet_loss

MARGIN = 0.3


def _batch(seed: int = 0, size: int = 12, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 8, generator=generator), torch.randint(0, classes, (size,), generator=generator)


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a / a.norm(), b / b.norm()
    return math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(a, b, strict=True)))


def _brute_force(embeddings: torch.Tensor, labels: torch.Tensor, mining: str) -> float:
    n, label = len(labels), labels.tolist()
    d = [[_distance(embeddings[i], embeddings[j]) for j in range(n)] for i in range(n)]
    triplets = []  # (d_ap, d_an): negatives are always of another label
    for a in range(n):
        positives = [p for p in range(n) if p != a and label[p] == label[a]]
        negatives = [k for k in range(n) if label[k] != label[a]]
        if not positives or not negatives:
            continue
        if mining == "all":
            triplets += [(d[a][p], d[a][k]) for p, k in itertools.product(positives, negatives)]
        elif mining == "hard":
            triplets.append((max(d[a][p] for p in positives), min(d[a][k] for k in negatives)))
        else:  # semi-hard
            for p in positives:
                farther = [d[a][k] for k in negatives if d[a][k] > d[a][p]]
                triplets.append((d[a][p], min(farther) if farther else max(d[a][k] for k in negatives)))
    losses = [max(0.0, ap - an + MARGIN) for ap, an in triplets]
    active = [value for value in losses if value > 0]
    return sum(active) / len(active) if active else 0.0


@pytest.mark.parametrize("mining", ["semi-hard", "hard", "all"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_loss_equals_a_brute_force_computation(mining, seed):
    embeddings, labels = _batch(seed)
    value = triplet_loss(embeddings, labels, margin=MARGIN, mining=mining)
    assert value.item() == pytest.approx(_brute_force(embeddings, labels, mining), abs=1e-5)
    assert value.item() > 0


@pytest.mark.parametrize("mining", ["semi-hard", "hard", "all"])
def test_no_negative_is_taken_from_the_anchors_own_cluster(mining):
    # Two far-apart groups; inside group 0, points 0 and 1 are opposite and point 2 sits next to 0. Were a point of
    # the anchor's own cluster ever used as a negative, point 2 would be point 0's closest "negative".
    embeddings = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.99, 0.1, 0.0],
                               [0.0, 0.0, 1.0], [0.0, 0.1, 0.99]], requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1])
    value = triplet_loss(embeddings, labels, margin=MARGIN, mining=mining)
    assert value.item() == pytest.approx(_brute_force(embeddings.detach(), labels, mining), abs=1e-5)
    one_cluster = triplet_loss(embeddings, torch.zeros(5, dtype=torch.long), margin=MARGIN, mining=mining)
    assert one_cluster.item() == 0.0  # no negatives at all: nothing to push apart
    one_cluster.backward()  # and still a graph to back-propagate through
    assert embeddings.grad is not None and not embeddings.grad.any()


def test_separated_clusters_beyond_the_margin_cost_nothing_and_bad_input_is_refused():
    embeddings = torch.tensor([[1.0, 0.0], [0.99, 0.05], [-1.0, 0.0], [-0.99, -0.05]])
    labels = torch.tensor([0, 0, 1, 1])
    assert triplet_loss(embeddings, labels, margin=MARGIN).item() == 0.0
    with pytest.raises(ValueError, match="mining must be"):
        triplet_loss(embeddings, labels, mining="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="embeddings must be \\(B, D\\) and labels \\(B,\\)"):
        triplet_loss(embeddings, labels[:3])
