"""The contrastive training loop, one function per worker, for both RadCLIP stages.

``train_worker(config)`` runs inside a Ray Train worker (``TorchTrainer``, DDP over
gloo or nccl, per-worker data shards) or in-process (``engine: local``, world size 1).
Stage ``2d`` fine-tunes the vision tower on curated image–caption pairs; stage
``adapter`` trains only the slice pooling adapter on the slice-embedding cache; stage
``lrclr`` fine-tunes the vision tower further with LRCLR's L_global + λ·L_local (the
cross-modal transformer trains too; λ = 0 is the plain global loss, the control arm); stage
``cml`` fine-tunes it on the long-tail collection with CXR-CML's InfoNCE + w·triplet loss on
mixture pseudo-labels refitted every ``cml.refit_every`` epochs (:mod:`radclip.training.cml`).
In all, the frozen text tower runs once per unique caption (tables of caption
embeddings and, for LRCLR, token states, looked up by caption id every step).

Every epoch: AdamW (weight decay on matrices only), cosine-annealed lr per step,
validation InfoNCE all-reduced over workers, a checkpoint (safetensors weights,
optimizer state and a JSON state: epoch, early-stopping counters, scheduler, the
best weights so far), early stopping on validation loss. Each epoch reseeds from
(seed, epoch, rank) and the sampler from (seed, epoch), so a run resumed from a
checkpoint after a worker died replays exactly what the uninterrupted run did.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from radclip.config import Params, TrainParams
from radclip.core.losses import MAX_LOGIT_SCALE
from radclip.io import ray_train

if TYPE_CHECKING:
    from radclip.data.slice_cache import SliceCacheDataset
    from radclip.training.cml import LongTailDataset

Stage = Literal["2d", "adapter", "lrclr", "cml"]
TRAINABLE_FILE = "trainable.safetensors"
BEST_FILE = "best.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
FAULT_MARKER = "fault-injected"
MAX_LOG_LOGIT_SCALE = math.log(MAX_LOGIT_SCALE)


@dataclass
class FitConfig:
    """Everything a worker needs (plain data: it is shipped to Ray workers)."""

    params: dict
    stage: Stage
    data_dir: str  # curated dataset (2d) or slice-embedding cache (adapter)
    vocabulary: list[str]  # texts the tokenizer of a freshly built model is made from
    run_dir: str  # local scratch of this run (fault-injection marker)
    model_source: str | None = None  # RadCLIP directory to start from; None: build from params
    fail_at: tuple[int, int] | None = None  # (epoch, step): kill one worker once (tests)
    fail_node: str | None = None  # the worker killed is the one on this node; None: the last rank
    relay: str | None = None  # Ray Train: the driver's relay actor (radclip.io.ray_train)
    driver_decides: bool = False  # after each epoch the driver says whether to stop (sweep pruning)
    arm: str | None = None  # stage cml: which arm (radclip.training.cml.ARMS)
    seed_offset: int = 0  # stage cml: seed k of the arm (added to the mixture seed; loop_seed comes in params)


# --------------------------------------------------------------------------- data


class ImageCaptionDataset(Dataset):
    """Curated 2D records of one split: (uint8 image (H, W), caption id)."""

    def __init__(self, curated_dir: str, split: str):
        from radclip.data.shards import CuratedDataset

        self.data = CuratedDataset(curated_dir, query=f"kind == '2d' and role == 'train' and split == '{split}'")
        self.captions = sorted(self.data.manifest["caption"].unique())
        lookup = {caption: index for index, caption in enumerate(self.captions)}
        self.caption_ids = self.data.manifest["caption"].map(lookup).to_numpy()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.data.array(index))), int(self.caption_ids[index])


def _datasets(
    config: FitConfig, params: Params,
) -> tuple[ImageCaptionDataset | SliceCacheDataset | LongTailDataset,
           ImageCaptionDataset | SliceCacheDataset | LongTailDataset, list[str], list[str]]:
    train: ImageCaptionDataset | SliceCacheDataset | LongTailDataset
    val: ImageCaptionDataset | SliceCacheDataset | LongTailDataset
    if config.stage == "cml":
        from radclip.training.cml import LongTailDataset

        assert config.arm is not None  # fit() always passes the arm of a cml run
        train = LongTailDataset(params, config.data_dir, "train", config.arm)
        val = LongTailDataset(params, config.data_dir, "val", config.arm)
    elif config.stage in ("2d", "lrclr"):
        train, val = ImageCaptionDataset(config.data_dir, "train"), ImageCaptionDataset(config.data_dir, "val")
    else:
        from radclip.data.slice_cache import SliceCacheDataset

        train = SliceCacheDataset(config.data_dir, query="role == 'train' and split == 'train'")
        val = SliceCacheDataset(config.data_dir, query="role == 'train' and split == 'val'")
    return train, val, list(train.captions), list(val.captions)


# --------------------------------------------------------------------------- what DDP wraps


class ImageStep(nn.Module):
    """Stage 2d forward: images → normalised image embeddings (+ the logit scale, so DDP sees it used)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_image(images), self.model.logit_scale_exp()


class LrclrStep(nn.Module):
    """Stage lrclr forward with λ > 0: images and their captions' cached token states → global image
    embeddings, LRCLR's (v_l, t_l) and the logit scale (every trainable parameter takes part)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, states: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        regions = self.model.encode_regions(images)
        local = self.model.cross_modal(regions.cls_token, regions.regions, states, mask, pooled)
        return regions.image, local.image, local.text, self.model.logit_scale_exp()


class AdapterStep(nn.Module):
    """Stage adapter forward: cached slice embeddings (+ mask) → normalised volume embeddings."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, slices: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.pool_slices(slices, mask), self.model.logit_scale_exp()


# --------------------------------------------------------------------------- worker context


@dataclass
class WorkerContext:
    rank: int = 0
    world_size: int = 1
    in_ray: bool = False
    checkpoint_dir: str | None = None  # the checkpoint to resume from
    node_ip: str | None = None  # Ray Train: the worker's node
    local_reports: list = field(default_factory=list)  # engine local: (metrics, checkpoint dir) per epoch
    local_root: str | None = None

    @classmethod
    def current(cls, local_root: str | None = None) -> WorkerContext:
        worker = ray_train.current_worker()
        if worker is None:
            return cls(local_root=local_root)
        return cls(rank=worker.rank, world_size=worker.world_size, in_ray=True, checkpoint_dir=worker.checkpoint_dir,
                   node_ip=worker.node_ip)

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        if self.in_ray:
            ray_train.report(metrics, checkpoint_dir)
            if checkpoint_dir:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
        else:
            kept = None
            if checkpoint_dir:
                assert self.local_root is not None  # engine local: current() is always given the run dir
                kept = Path(self.local_root) / "checkpoints" / f"epoch-{metrics['epoch']:04d}"
                shutil.rmtree(kept, ignore_errors=True)
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(checkpoint_dir, kept)
            self.local_reports.append((metrics, str(kept) if kept else None))


# --------------------------------------------------------------------------- optimisation


def build_optimizer(model: nn.Module, train: TrainParams) -> torch.optim.Optimizer:
    """AdamW; weight decay (L2) on weight matrices only — not on biases, norms, embeddings or τ."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        exempt = parameter.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("pos")
        (no_decay if exempt else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train.lr)


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(directory: Path, model, optimizer, scheduler, state: dict, best: dict[str, torch.Tensor]) -> None:
    save_file(_trainable_state(model), str(directory / TRAINABLE_FILE))
    save_file(best, str(directory / BEST_FILE))
    tensors, meta = {}, {}
    for index, values in optimizer.state_dict()["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                meta[f"{index}.{key}"] = value
    save_file(tensors, str(directory / OPTIMIZER_FILE))
    payload = {
        "state": state,
        "scheduler": scheduler.state_dict(),
        "param_groups": optimizer.state_dict()["param_groups"],
        "optimizer_scalars": meta,
    }
    (directory / STATE_FILE).write_text(json.dumps(payload, indent=1))


def _load_checkpoint(directory: Path, model, optimizer, scheduler) -> tuple[dict, dict[str, torch.Tensor]]:
    payload = json.loads((directory / STATE_FILE).read_text())
    weights = load_file(str(directory / TRAINABLE_FILE))
    missing = set(weights) - {name for name, _ in model.named_parameters()}
    if missing:
        raise ValueError(f"{directory}: checkpoint has parameters this model lacks: {sorted(missing)[:5]}")
    model.load_state_dict(weights, strict=False)
    tensors = load_file(str(directory / OPTIMIZER_FILE))
    state: dict[int, dict[str, Any]] = {}
    for key, value in {**tensors, **payload["optimizer_scalars"]}.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": payload["param_groups"]})
    scheduler.load_state_dict(payload["scheduler"])
    return payload["state"], load_file(str(directory / BEST_FILE))


# --------------------------------------------------------------------------- the loop


def train_params_for(params: Params, stage: Stage) -> TrainParams:
    return {"2d": params.train_2d, "adapter": params.train_adapter, "lrclr": params.lrclr.train,
            "cml": params.cml.train}[stage]


def prepare_lrclr(model, params: Params) -> None:
    """Stage lrclr with λ > 0 adds a fresh cross-modal transformer, from ``lrclr.init_seed``."""
    from radclip.core.models.regions import CrossModalSpec

    if params.lrclr.local_weight > 0:
        torch.manual_seed(params.lrclr.init_seed)
        model.attach_cross_modal(CrossModalSpec(**params.lrclr.cross_modal.model_dump()))


def fresh_adapter(model, params: Params, seed: int) -> None:
    """Stage adapter starts from the 2D model but with the adapter and τ these params ask for
    (head count, dropout, reducer and temperature are what a sweep tunes)."""
    from radclip.training.build import adapter_spec

    torch.manual_seed(seed)
    model.replace_adapter(
        adapter_spec(params.model.adapter), params.loss.temperature, params.loss.learnable_temperature
    )


def update_early_stopping(state: dict, epoch: int, val_loss: float, patience: int) -> bool:
    """Record an epoch's validation loss; True when it is the best so far (keep those weights).

    Stops (``stopped_early``) after ``patience`` epochs in a row without improvement.
    """
    improved = state["best_val"] is None or val_loss < state["best_val"]
    if improved:
        state.update(best_val=val_loss, best_epoch=epoch, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch + 1
    state["stopped_early"] = state["bad_epochs"] >= patience
    return improved


def _seed(train: TrainParams, epoch: int, rank: int) -> None:
    seed = train.loop_seed * 1_000_003 + epoch * 1_009 + rank
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _all_reduce_sum(values: list[float], world_size: int) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if world_size > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def _device(train: TrainParams, ctx: WorkerContext) -> torch.device:
    if not train.use_gpu:
        return torch.device("cpu")
    if ctx.in_ray:
        return ray_train.worker_device()
    if not torch.cuda.is_available():
        raise RuntimeError("train.use_gpu is true but no CUDA device is visible to this process")
    return torch.device("cuda")


@dataclass
class TokenTable:
    """The frozen text tower's token states of every caption of a split (LRCLR's text side)."""

    states: torch.Tensor  # (N, L, D)
    mask: torch.Tensor  # (N, L) bool
    pooled: torch.Tensor  # (N,)

    def rows(self, caption_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.states[caption_ids], self.mask[caption_ids], self.pooled[caption_ids]


@dataclass
class StepOutput:
    features: torch.Tensor
    scale: torch.Tensor
    caption_ids: torch.Tensor
    local_image: torch.Tensor | None = None
    local_text: torch.Tensor | None = None
    indices: torch.Tensor | None = None  # stage cml: the records' dataset indices (their pseudo-labels)


def _batch_forward(step_module, batch, stage: Stage, device: torch.device, bf16: bool,
                   tokens: TokenTable | None = None) -> StepOutput:
    batch = [part.to(device, non_blocking=True) for part in batch]
    # bf16 autocast only where it pays (GPU); on these CPUs fp32 matmuls are faster than bf16.
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
        if stage == "adapter":
            slices, mask, caption_ids = batch
            features, scale = step_module(slices, mask)
        elif stage == "cml":
            images, caption_ids, indices = batch
            features, scale = step_module(images)
            return StepOutput(features.float(), scale.float(), caption_ids, indices=indices)
        elif tokens is None:  # 2d, and lrclr's control arm (λ = 0)
            images, caption_ids = batch
            features, scale = step_module(images)
        else:
            images, caption_ids = batch
            features, local_image, local_text, scale = step_module(images, *tokens.rows(caption_ids))
            return StepOutput(features.float(), scale.float(), caption_ids, local_image.float(), local_text.float())
    return StepOutput(features.float(), scale.float(), caption_ids)


def _loader(dataset: Dataset, per_worker: int, ctx: WorkerContext, seed: int, shuffle: bool) -> tuple[DataLoader, Any]:
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed, drop_last=True
    )
    # drop_last: the all-gather in the loss needs the same batch size on every worker
    return DataLoader(dataset, batch_size=per_worker, sampler=sampler, drop_last=True, num_workers=0), sampler


def _stop_requested(config: FitConfig, ctx: WorkerContext, epoch: int) -> bool:
    """On Ray, rank 0 waits for the driver's decision on ``epoch``; the answer is shared so that all workers stop
    at the same epoch."""
    says_stop = ctx.rank == 0 and config.relay is not None and ray_train.driver_says_stop(config.relay, epoch)
    return _all_reduce_sum([float(says_stop)], ctx.world_size)[0] > 0


def _kill_here(config: FitConfig, ctx: WorkerContext, epoch: int, step: int) -> bool:
    if config.fail_at != (epoch, step):
        return False
    return ctx.node_ip == config.fail_node if config.fail_node else ctx.rank == ctx.world_size - 1


@dataclass
class _MetricTerm:
    """Stage cml's metric loss: the arm's mixture pseudo-labels of every training record, refitted every
    ``cml.refit_every`` epochs by each worker on all training images (so every rank holds the same labels
    without exchanging them), and the triplet loss over them. Inactive in the other stages and arms."""

    active: bool = False
    arm: str = ""
    weight: float = 0.0
    params: Params | None = None
    seed: int = 0
    components: int = 0
    labels: torch.Tensor | None = None

    @classmethod
    def build(cls, config: FitConfig, params: Params, train_set: Dataset) -> _MetricTerm:
        if config.stage != "cml":
            return cls()
        from radclip.training.cml import arm_spec, mixture_components

        assert config.arm is not None
        if arm_spec(config.arm).mixture is None:
            return cls()
        return cls(True, config.arm, params.cml.metric_weight, params, params.cml.mixture_seed + config.seed_offset,
                   mixture_components(params, train_set))  # type: ignore[arg-type]

    def refit(self, model, train_set: Dataset, device: torch.device, epoch: int) -> dict[str, float]:
        """Refit at this epoch if due (or if no labels yet: a resumed run); the fit's diagnostics."""
        if not self.active:
            return {}
        assert self.params is not None
        if self.labels is not None and epoch % self.params.cml.refit_every:
            return {}
        from radclip.training.cml import embed_all, pseudo_labels

        started = time.perf_counter()
        embeddings = embed_all(model, train_set, device)  # type: ignore[arg-type]
        fitted = pseudo_labels(embeddings, train_set.label_sets, self.params, self.arm,  # type: ignore[attr-defined]
                               self.seed + 1_009 * epoch, self.components)
        self.labels = torch.as_tensor(fitted.labels, dtype=torch.long)
        return {"nmi": fitted.nmi, "pca_explained_variance": fitted.explained_variance,
                "clusters_used": float(len(np.unique(fitted.labels))),
                "refit_seconds": time.perf_counter() - started}  # embedding every image + the mixture fit

    def loss(self, features: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        from radclip.core.metric_loss import triplet_loss

        assert self.params is not None and self.labels is not None and indices is not None
        labels = self.labels[indices.cpu()].to(features.device)
        return triplet_loss(features, labels, margin=self.params.cml.margin, mining=self.params.cml.mining)


def train_worker(raw_config: dict, on_epoch: Callable[[dict], bool] | None = None) -> list:
    """One worker of a fit (Ray Train calls it with the config dict; engine local calls it directly,
    with ``on_epoch`` called after every epoch's report: the driver's logging and the sweep's pruner, which
    returns True to stop)."""
    from radclip.core.losses import GlobalLocalLoss
    from radclip.core.models import RadCLIP
    from radclip.training.build import build_model

    config = FitConfig(**raw_config)
    params = Params.model_validate(config.params)
    train = train_params_for(params, config.stage)
    ctx = WorkerContext.current(local_root=config.run_dir)
    if ctx.in_ray:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.world_size))

    model = (
        RadCLIP.from_pretrained(config.model_source) if config.model_source
        else build_model(params, config.vocabulary)
    )
    if config.stage == "adapter":
        fresh_adapter(model, params, train.loop_seed)
    if config.stage == "lrclr":
        prepare_lrclr(model, params)
    local = config.stage == "lrclr" and model.cross_modal is not None
    model.trainable_parameters("2d" if config.stage == "cml" else config.stage)  # cml: the image tower, as 2d
    if train.gradient_checkpointing and config.stage in ("2d", "cml"):
        model.clip.gradient_checkpointing_enable()  # recompute activations in backward: ViT-L batches fit
    device = _device(train, ctx)
    model.to(device)
    model.train()
    step_module: nn.Module = (AdapterStep(model) if config.stage == "adapter"
                              else LrclrStep(model) if local else ImageStep(model))
    if ctx.world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        # The attention reducer reads only its pooling attention's scores, so that module's output projection
        # never gets a gradient; DDP must be told, or its second step fails waiting for those gradients.
        step_module = nn.parallel.DistributedDataParallel(step_module, device_ids=device_ids,
                                                          find_unused_parameters=config.stage == "adapter")

    train_set, val_set, train_captions, val_captions = _datasets(config, params)
    metric = _MetricTerm.build(config, params, train_set)
    per_worker = max(1, train.batch_size // ctx.world_size)
    if len(train_set) < per_worker * ctx.world_size or len(val_set) < per_worker * ctx.world_size:
        per_worker = max(1, min(len(train_set), len(val_set)) // ctx.world_size)
    train_loader, train_sampler = _loader(train_set, per_worker, ctx, train.loop_seed, shuffle=True)
    val_loader, _ = _loader(val_set, per_worker, ctx, train.loop_seed, shuffle=False)
    with torch.no_grad():  # the frozen text tower: once per unique caption, for the whole run
        train_text = model.encode_text(train_captions).detach().float()
        val_text = model.encode_text(val_captions).detach().float()
    train_tokens = val_tokens = None
    if local:
        from radclip.core.models.regions import TextTokenCache

        token_cache = TextTokenCache(model.clip, model.tokenizer)
        train_tokens = TokenTable(*token_cache.encode(train_captions))
        val_tokens = TokenTable(*token_cache.encode(val_captions))

    # λ = 0 outside LRCLR: exactly the global InfoNCE (GlobalLocalLoss computes no local term then)
    loss_fn = GlobalLocalLoss(params.lrclr.local_weight if local else 0.0, duplicate_aware=params.loss.duplicate_aware)
    optimizer = build_optimizer(model, train)
    total_steps = max(1, train.epochs * len(train_loader))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    state: dict[str, Any] = {"epoch": 0, "best_val": None, "best_epoch": -1, "bad_epochs": 0, "stopped_early": False}
    best = _trainable_state(model)
    if ctx.checkpoint_dir:
        state, best = _load_checkpoint(Path(ctx.checkpoint_dir), model, optimizer, scheduler)

    while state["epoch"] < train.epochs and not state["stopped_early"]:
        epoch = state["epoch"]
        _seed(train, epoch, ctx.rank)
        train_sampler.set_epoch(epoch)
        model.train()
        batches: float  # counts, summed across workers as floats below
        samples: float
        val_batches: float
        epoch_metrics = metric.refit(model, train_set, device, epoch)
        started, loss_sum, local_sum, batches, samples = time.perf_counter(), 0.0, 0.0, 0, 0
        for step, batch in enumerate(train_loader):
            if _kill_here(config, ctx, epoch, step):
                marker = Path(config.run_dir) / FAULT_MARKER
                if not marker.exists():  # once: the restarted worker must get past this point
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.write_text(f"worker {ctx.rank} on node {ctx.node_ip} killed at epoch {epoch} step {step}\n")
                    os._exit(1)
            out = _batch_forward(step_module, batch, config.stage, device, train.bf16, train_tokens)
            loss, _, local_loss = loss_fn(out.features, train_text[out.caption_ids], out.local_image, out.local_text,
                                          out.scale, out.caption_ids)
            if metric.active:  # CXR-CML: L_c + w·L_m; local_loss carries L_m into the epoch's metrics
                local_loss = metric.loss(out.features, out.indices)
                loss = loss + metric.weight * local_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                model.logit_scale.clamp_(max=MAX_LOG_LOGIT_SCALE)
            loss_sum += float(loss.detach())
            local_sum += float(local_loss.detach()) if local_loss is not None else 0.0
            batches += 1
            samples += len(out.caption_ids)
        seconds = time.perf_counter() - started

        model.eval()
        val_sum, val_local_sum, val_batches = 0.0, 0.0, 0
        with torch.no_grad():
            for batch in val_loader:
                out = _batch_forward(step_module, batch, config.stage, device, train.bf16, val_tokens)
                # selection and early stopping read the loss each run optimises (LRCLR: global + λ·local)
                total, _, local_loss = loss_fn(out.features, val_text[out.caption_ids], out.local_image,
                                               out.local_text, out.scale, out.caption_ids)
                val_sum += float(total)
                val_local_sum += float(local_loss) if local_loss is not None else 0.0
                val_batches += 1
        loss_sum, local_sum, batches, samples, val_sum, val_local_sum, val_batches, seconds = _all_reduce_sum(
            [loss_sum, local_sum, batches, samples, val_sum, val_local_sum, val_batches, seconds], ctx.world_size
        )
        val_loss = val_sum / max(1.0, val_batches)
        if update_early_stopping(state, epoch, val_loss, train.patience):
            best = _trainable_state(model)
        metrics = {
            "epoch": epoch,
            "train_loss": loss_sum / max(1.0, batches),
            "val_loss": val_loss,
            "best_val_loss": state["best_val"],
            "lr": scheduler.get_last_lr()[0],
            "temperature": float(1.0 / model.logit_scale_exp().detach()),
            "pairs_per_second": samples / max(1e-9, seconds / ctx.world_size),
            "stopped_early": int(state["stopped_early"]),
            **({"train_local_loss": local_sum / max(1.0, batches),
                "val_local_loss": val_local_sum / max(1.0, val_batches)} if local else {}),
            **({"train_metric_loss": local_sum / max(1.0, batches)} if metric.active else {}),
            **epoch_metrics,
        }
        checkpoint_dir = None
        if ctx.rank == 0:
            checkpoint_dir = tempfile.mkdtemp(prefix="radclip-ckpt-")
            _save_checkpoint(Path(checkpoint_dir), model, optimizer, scheduler, state, best)
        ctx.report(metrics, checkpoint_dir)  # on Ray, the driver logs the epoch (radclip.io.ray_train)
        if on_epoch is not None and on_epoch(metrics):  # in-process: the driver's hook, called right here
            break
        if config.driver_decides and _stop_requested(config, ctx, epoch):
            break
    return ctx.local_reports
