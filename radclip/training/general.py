"""General-domain CLIP pretraining: both towers learn from scratch, text encoded every batch.

This is how the embedded default gets its "vanilla CLIP" (the model RadCLIP's method
starts from) without downloading one: standard CLIP training (symmetric InfoNCE with a
learnable temperature, AdamW, linear warm-up then cosine decay) on the generated
general-domain corpus, early-stopped on its validation split. In-process on purpose: the
corpus and model are small, and two CPU threads in one process beat two Ray workers
that would each run on one (no start-up, no gradient all-reduce).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import CLIPModel, PreTrainedTokenizerBase

from radclip.config import GeneralParams
from radclip.core.losses import MAX_LOGIT_SCALE, ClipLoss
from radclip.core.preprocessing import PixelNormalisation


@dataclass
class GeneralFit:
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    seconds: float


class CaptionTable:
    """Every distinct caption tokenised once: batches gather rows and trim the padding."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, captions: Sequence[str]):
        self.unique = sorted(set(captions))
        index = {caption: i for i, caption in enumerate(self.unique)}
        self.caption_ids = torch.tensor([index[c] for c in captions], dtype=torch.int64)
        encoded = tokenizer(self.unique, padding=True, truncation=True, return_tensors="pt")
        self.input_ids, self.attention_mask = encoded["input_ids"], encoded["attention_mask"]

    def batch(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        ids = self.caption_ids[rows]
        mask = self.attention_mask[ids]
        length = int(mask.sum(dim=1).max())
        return self.input_ids[ids, :length], mask[:, :length], ids


def pixel_batch(pixels: PixelNormalisation, images: np.ndarray | Tensor) -> Tensor:
    """uint8 ``(B, H, W, 3)`` RGB → the vision tower's normalised ``(B, 3, size, size)``."""
    batch = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return pixels.apply(batch)


def image_embeddings(clip: CLIPModel, pixel_values: Tensor) -> Tensor:
    return F.normalize(clip.visual_projection(clip.vision_model(pixel_values=pixel_values).pooler_output), dim=-1)


def text_embeddings(clip: CLIPModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    pooled = clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    return F.normalize(clip.text_projection(pooled), dim=-1)


@torch.inference_mode()
def encode_images(clip: CLIPModel, pixels: PixelNormalisation, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    clip.eval()
    return torch.cat([image_embeddings(clip, pixel_batch(pixels, images[i:i + batch_size]))
                      for i in range(0, len(images), batch_size)]).numpy()


@torch.inference_mode()
def encode_texts(clip: CLIPModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> np.ndarray:
    clip.eval()
    encoded = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    return text_embeddings(clip, encoded["input_ids"], encoded["attention_mask"]).numpy()


def _optimizer(clip: CLIPModel, general: GeneralParams) -> torch.optim.Optimizer:
    # CLIP's recipe: no weight decay on gains, biases, embeddings' norms or the temperature.
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, parameter in clip.named_parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 and "logit_scale" not in name else no_decay).append(parameter)
    return torch.optim.AdamW([{"params": decay, "weight_decay": general.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=general.lr)


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _step_loss(clip: CLIPModel, loss_fn: ClipLoss, pixels: PixelNormalisation, images: np.ndarray,
               table: CaptionTable, rows: Tensor) -> Tensor:
    input_ids, mask, caption_ids = table.batch(rows)
    image = image_embeddings(clip, pixel_batch(pixels, images[rows.numpy()]))
    text = text_embeddings(clip, input_ids, mask)
    scale = clip.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    return loss_fn(image, text, scale, caption_ids)


@torch.no_grad()
def validation_loss(clip: CLIPModel, pixels: PixelNormalisation, images: np.ndarray, captions: Sequence[str],
                    tokenizer: PreTrainedTokenizerBase, batch_size: int) -> float:
    """InfoNCE over the split in fixed consecutive batches (the same batches every epoch)."""
    clip.eval()
    table = CaptionTable(tokenizer, captions)
    loss_fn = ClipLoss(duplicate_aware=True)
    losses, weights = [], []
    for start in range(0, len(images), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(images)))
        if len(rows) < 2:
            continue
        losses.append(float(_step_loss(clip, loss_fn, pixels, images, table, rows)))
        weights.append(len(rows))
    return float(np.average(losses, weights=weights))


def train_general_clip(
    clip: CLIPModel,
    tokenizer: PreTrainedTokenizerBase,
    pixels: PixelNormalisation,
    train: tuple[np.ndarray, Sequence[str]],
    val: tuple[np.ndarray, Sequence[str]],
    general: GeneralParams,
    *,
    on_epoch: Callable[[dict], None] | None = None,
) -> GeneralFit:
    """Train ``clip`` in place (both towers, its own logit scale) and leave the best-validation weights in it."""
    started = time.perf_counter()
    torch.manual_seed(general.loop_seed)
    order_rng = torch.Generator().manual_seed(general.loop_seed)
    train_images, train_captions = train
    table = CaptionTable(tokenizer, train_captions)
    for parameter in clip.parameters():
        parameter.requires_grad_(True)
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(1.0 / general.temperature))
    steps_per_epoch = len(train_images) // general.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"general.batch_size {general.batch_size} exceeds the {len(train_images)} training images")
    optimizer = _optimizer(clip, general)
    scheduler = _schedule(optimizer, steps_per_epoch * general.epochs, general.warmup_fraction)
    loss_fn = ClipLoss(duplicate_aware=True)
    history: list[dict] = []
    best_state, best_val, best_epoch, since_best = None, math.inf, 0, 0
    for epoch in range(1, general.epochs + 1):
        clip.train()
        epoch_start, total = time.perf_counter(), 0.0
        permutation = torch.randperm(len(train_images), generator=order_rng)
        for step in range(steps_per_epoch):  # drop the last partial batch: every step sees batch_size negatives
            rows = permutation[step * general.batch_size:(step + 1) * general.batch_size]
            loss = _step_loss(clip, loss_fn, pixels, train_images, table, rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
        val_loss = validation_loss(clip, pixels, *val, tokenizer, general.batch_size)
        seconds = time.perf_counter() - epoch_start
        temperature = float(1.0 / clip.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE))
        metrics = {"epoch": epoch, "train_loss": total / steps_per_epoch, "val_loss": val_loss,
                   "lr": scheduler.get_last_lr()[0], "temperature": temperature,
                   "pairs_per_second": steps_per_epoch * general.batch_size / seconds}
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        if val_loss < best_val:
            best_val, best_epoch, since_best = val_loss, epoch, 0
            best_state = copy.deepcopy(clip.state_dict())
        else:
            since_best += 1
            if since_best >= general.patience:
                break
    assert best_state is not None  # at least one epoch ran
    clip.load_state_dict(best_state)
    clip.eval()
    return GeneralFit(history=history, best_epoch=best_epoch, best_val_loss=best_val,
                      stopped_early=len(history) < general.epochs, seconds=time.perf_counter() - started)
