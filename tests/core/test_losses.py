"""ClipLoss: hand formulas, duplicate-aware targets, and the 2-worker gather.

(The temperature and its clamp belong to the model: RadCLIP.logit_scale_exp, tests/core/test_models.py.)
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from radclip.config import LossParams
from radclip.core.losses import MAX_LOGIT_SCALE, ClipLoss, soft_targets

WORLD_SIZE = 2
LOCAL_BATCH = 4
DIM = 8
# Repeats inside a worker's slice (0 twice on rank 0, 3 twice on rank 1) and across workers (0, 1).
GLOBAL_IDS = [0, 1, 0, 2, 1, 3, 3, 0]


def _features(batch: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(batch, dim, generator=generator), dim=1)
    texts = F.normalize(torch.randn(batch, dim, generator=generator), dim=1)
    return images, texts


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _hand_rows(images, texts, scale: float, ids: list[int] | None) -> np.ndarray:
    """Per-row symmetric InfoNCE in numpy (float64); ``ids=None``: one positive per row."""
    img, txt = images.double().numpy(), texts.double().numpy()
    logits = scale * img @ txt.T
    n = len(img)
    if ids is None:
        targets = np.eye(n)
    else:
        same = np.array([[float(a == b) for b in ids] for a in ids])
        targets = same / same.sum(axis=1, keepdims=True)
    per_image = -(targets * _log_softmax(logits)).sum(axis=1)
    per_text = -(targets.T * _log_softmax(logits.T)).sum(axis=1)
    return (per_image + per_text) / 2


# --------------------------------------------------------------------------- single process


@pytest.mark.parametrize("duplicate_aware", [True, False])
def test_loss_matches_hand_formula(duplicate_aware):
    images, texts = _features(6, 5, seed=1)
    ids = [3, 7, 3, 1, 7, 3]
    scale = torch.tensor(1 / 0.07)
    loss = ClipLoss(duplicate_aware=duplicate_aware)(images, texts, scale, torch.tensor(ids))
    expected = _hand_rows(images, texts, 1 / 0.07, ids if duplicate_aware else None).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_hand_example_two_pairs_same_caption():
    # Two identical-caption pairs, orthogonal features, scale 1: logits [[1, 0], [0, 1]],
    # targets 1/2 each, so every row's loss is log(e + 1) - (1 + 0) / 2.
    eye = torch.eye(2)
    loss = ClipLoss()(eye, eye, torch.tensor(1.0), torch.tensor([5, 5]))
    assert loss.item() == pytest.approx(math.log(math.e + 1) - 0.5, rel=1e-6)
    plain = ClipLoss(duplicate_aware=False)(eye, eye, torch.tensor(1.0), torch.tensor([5, 5]))
    assert plain.item() == pytest.approx(math.log(math.e + 1) - 1.0, rel=1e-6)


def test_unique_captions_give_plain_infonce():
    images, texts = _features(8, 6, seed=2)
    scale = torch.tensor(14.0)
    unique = torch.arange(8) * 10
    aware = ClipLoss(duplicate_aware=True)(images, texts, scale, unique)
    plain = ClipLoss(duplicate_aware=False)(images, texts, scale, unique)
    no_ids = ClipLoss(duplicate_aware=True)(images, texts, scale, None)
    assert aware.item() == pytest.approx(plain.item(), rel=1e-6)
    assert no_ids.item() == pytest.approx(plain.item(), rel=1e-6)


def test_only_rows_of_repeated_captions_change():
    images, texts = _features(8, 6, seed=3)
    scale = torch.tensor(14.0)
    ids = torch.tensor([0, 1, 2, 1, 4, 5, 1, 7])  # caption 1 repeats at rows 1, 3, 6
    aware = ClipLoss(duplicate_aware=True)(images, texts, scale, ids, reduction="none")
    plain = ClipLoss(duplicate_aware=False)(images, texts, scale, ids, reduction="none")
    repeated = torch.tensor([False, True, False, True, False, False, True, False])
    torch.testing.assert_close(aware[~repeated], plain[~repeated])
    assert (aware[repeated] - plain[repeated]).abs().min() > 1e-4
    assert aware.mean().item() == pytest.approx(ClipLoss()(images, texts, scale, ids).item(), rel=1e-6)


def test_soft_targets_rows_sum_to_one_and_are_symmetric():
    ids = torch.tensor([2, 2, 9, 2, 9, 4])
    targets = soft_targets(ids, ids)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(6))
    torch.testing.assert_close(targets, targets.T)
    assert targets[0, 1].item() == pytest.approx(1 / 3)


def test_loss_rejects_mismatched_shapes():
    images, texts = _features(4, 6, seed=4)
    with pytest.raises(ValueError, match="same shape"):
        ClipLoss()(images, texts[:3], torch.tensor(10.0))
    with pytest.raises(ValueError, match="caption_ids"):
        ClipLoss()(images, texts, torch.tensor(10.0), torch.tensor([1, 2]))


def test_construction_from_the_loss_settings():
    assert ClipLoss().duplicate_aware is True and ClipLoss().gather_with_grad is True  # the defaults
    loss = ClipLoss(duplicate_aware=LossParams(duplicate_aware=False).duplicate_aware)
    assert loss.duplicate_aware is False and "duplicate_aware=False" in repr(loss)
    assert list(loss.parameters()) == []  # the temperature is the model's, passed in as a scale
    assert MAX_LOGIT_SCALE == 100.0  # CLIP's clamp, applied by RadCLIP.logit_scale_exp


def test_loss_rejects_an_unknown_reduction():
    images, texts = _features(4, 6, seed=5)
    with pytest.raises(ValueError, match="reduction"):
        ClipLoss()(images, texts, torch.tensor(10.0), reduction="sum")


# --------------------------------------------------------------------------- two workers (gloo)

CASES = [(aware, with_grad) for aware in (True, False) for with_grad in (True, False)]


def _worker(rank: int, store_file: str, out_dir: str) -> None:
    """One gloo worker: loss and gradients of its slice of the global batch, per case."""
    # Gloo pairs listen on the interface of the host name unless told: keep them on loopback.
    # The rendezvous is a FileStore, so no TCP store listens on every interface either.
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        images, texts = _features(WORLD_SIZE * LOCAL_BATCH, DIM, seed=7)
        local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        ids = torch.tensor(GLOBAL_IDS)[local]
        results = {}
        for aware, with_grad in CASES:
            local_images = images[local].clone().requires_grad_(True)
            local_texts = texts[local].clone().requires_grad_(True)
            log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
            loss_fn = ClipLoss(duplicate_aware=aware, gather_with_grad=with_grad)
            loss = loss_fn(local_images, local_texts, log_scale.exp(), ids)
            loss.backward()
            results[(aware, with_grad)] = {
                "loss": loss.detach(),
                "grad_images": local_images.grad,
                "grad_texts": local_texts.grad,
                "grad_log_scale": log_scale.grad,
            }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_worker_results(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(tmp / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


def _single_process(aware: bool, detach_except: int | None = None) -> dict:
    """Loss and gradients on the concatenated batch in one process.

    ``detach_except=r``: only worker r's rows carry gradient (what a gather without grad sees),
    and the loss is worker r's local loss (the mean of its rows).
    """
    images, texts = _features(WORLD_SIZE * LOCAL_BATCH, DIM, seed=7)
    images.requires_grad_(True)
    texts.requires_grad_(True)
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    ids = torch.tensor(GLOBAL_IDS)
    if detach_except is None:
        loss = ClipLoss(duplicate_aware=aware)(images, texts, log_scale.exp(), ids)
        used_images, used_texts = images, texts
    else:
        rows = torch.zeros(len(ids), dtype=torch.bool)
        rows[detach_except * LOCAL_BATCH : (detach_except + 1) * LOCAL_BATCH] = True
        used_images = torch.where(rows[:, None], images, images.detach())
        used_texts = torch.where(rows[:, None], texts, texts.detach())
        per_row = ClipLoss(duplicate_aware=aware)(used_images, used_texts, log_scale.exp(), ids, reduction="none")
        loss = per_row[rows].mean()
    loss.backward()
    return {"loss": loss.detach(), "grad_images": images.grad, "grad_texts": texts.grad, "grad_log_scale": log_scale.grad}


@pytest.mark.parametrize("aware,with_grad", CASES)
def test_two_workers_mean_loss_equals_single_process(two_worker_results, aware, with_grad):
    reference = _single_process(aware)
    per_rank = torch.stack([r[(aware, with_grad)]["loss"] for r in two_worker_results])
    torch.testing.assert_close(per_rank.mean(), reference["loss"], rtol=1e-5, atol=1e-6)
    # Averaged like DDP averages a replicated parameter's gradient: exact for the logit scale.
    scale_grad = torch.stack([r[(aware, with_grad)]["grad_log_scale"] for r in two_worker_results]).mean()
    torch.testing.assert_close(scale_grad, reference["grad_log_scale"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("aware", [True, False])
def test_two_workers_gradients_are_world_size_times_single_process(two_worker_results, aware):
    """gather_with_grad=True: rank r's feature gradient = W x rows of the single-process gradient.

    DDP averages gradients over the W workers, so the parameter update is the single-process one.
    """
    reference = _single_process(aware)
    for rank, result in enumerate(two_worker_results):
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        for name in ("grad_images", "grad_texts"):
            torch.testing.assert_close(
                result[(aware, True)][name], WORLD_SIZE * reference[name][rows], rtol=1e-5, atol=1e-6
            )


@pytest.mark.parametrize("aware", [True, False])
def test_two_workers_without_gathered_grad_see_only_their_own_loss(two_worker_results, aware):
    """gather_with_grad=False (open_clip's default): the gradient of the worker's own loss with the
    other workers' features held constant; it differs from the exact gradient."""
    exact = _single_process(aware)
    for rank, result in enumerate(two_worker_results):
        reference = _single_process(aware, detach_except=rank)
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        torch.testing.assert_close(result[(aware, False)]["loss"], reference["loss"], rtol=1e-5, atol=1e-6)
        for name in ("grad_images", "grad_texts"):
            torch.testing.assert_close(result[(aware, False)][name], reference[name][rows], rtol=1e-5, atol=1e-6)
            assert not torch.allclose(result[(aware, False)][name], WORLD_SIZE * exact[name][rows], atol=1e-4)
