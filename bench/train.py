"""Training benchmark: what the 2D step, the slice cache and Ray Train cost, measured side by side in one run.

Every figure is a ratio of two things timed in the same process, interleaved
repetition by repetition (rotating the order), reported as medians: the machines
are shared, so absolute numbers drift with the neighbours' load while ratios of
interleaved medians stay comparable.

(a) 2D training step, ours vs naive — image–text pairs per second on the same
    vision tower, batch and images. *Ours* is the step of radclip.training.loop:
    ``ImageStep`` (preprocessing + vision tower + visual projection), text
    embeddings looked up by caption id in a table the frozen text tower computed
    once per unique caption, duplicate-aware ``ClipLoss``, AdamW step, cosine lr
    step, logit-scale clamp. *Naive* is the usual CLIP loop: HF ``CLIPModel`` with
    both towers every step (``clip(input_ids=..., pixel_values=..., attention_mask=...)``),
    captions tokenised every step and padded to 77 tokens like the original CLIP,
    text tower frozen (``requires_grad=False``: no backward) but recomputed, same
    loss and optimiser. *open_clip* is
    open_clip_train's step on an equal ``open_clip.CLIP`` (see ``OpenClipStep``;
    ``make bench-deps`` installs it). ``--variants`` adds ours with fused AdamW
    (one kernel instead of AdamW's per-tensor loop on CPU) and ours under
    ``torch.compile``.
    Captions repeat from 20 realistic templates. The speed-up
    is bounded by (text forward) / (vision forward+backward): it is measured with
    a text tower shaped like the vision tower ("mirror", the embedded default's
    design: both towers of one width) and, as a sensitivity row, with the
    original CLIP ViT-B text tower (width 512, 12 layers). Row (a') repeats ours
    vs naive at the embedded default (params.yaml's towers, 64 px, text context
    77), where the vision tower is cheap next to a 77-token text forward. Goals:
    ours ≥ 1.3× naive and ≥ 1.1× open_clip.

(b) Model FLOPs utilisation of our 2D step. FLOPs are counted analytically for
    the vision tower only, per image: patch embedding 2·N·3p²·d, plus per layer
    2·T·(4d² + 2·d·ff) for the QKV/out projections and MLP and 2·2·T²·d for QKᵀ
    and AV (T = N + 1 tokens), times 3 for forward + backward. The visual
    projection, loss, norms, activations and the optimiser are not counted (their
    time is: the step timed is the whole training step). ``FlopCounterMode`` on
    the same forward + backward is printed as a cross-check (it counts what runs:
    no input-gradient for the patch convolution, plus the projection). Peak =
    median time of a 2048×2048 fp32 ``torch.mm``, sampled between the step
    repetitions so it sees the same neighbours' load; MFU = achieved / peak.
    Goal ≥ 65%.

(c) Adapter epoch on the slice cache vs re-encoding. 64 phantom-like volumes
    (32 slices × 64×64, z-scored float16) in a hand-made curated dir, cached with
    ``write_slice_cache`` by the embedded default's 2D encoder (the encoder that
    natively reads 64 px; a bigger encoder only makes re-encoding dearer). Then
    (i) one adapter epoch over ``SliceCacheDataset`` (``AdapterStep`` forward,
    backward, AdamW step, batch 16) and (ii) the same epoch where each batch reads
    its volumes and runs ``encode_slices`` under ``no_grad`` first. Goal:
    (i) / (ii) ≤ 2%. The one-off cost of writing the cache is printed too.

(d) Ray Train with 2 workers vs one in-process worker, via
    ``radclip.training.fit.fit`` (stage 2d) on phantoms generated and curated for
    this run, same epochs and global batch. Epoch pairs/s come from the run history
    (epoch 0 excluded: warm-up) and the wall time includes Ray start-up, MLflow and
    saving the model; both are printed as ray/local. MLflow writes to a store in the
    temp dir (``MLFLOW_TRACKING_URI``), never the project's. On 2 shared cores two
    workers fight over the same cores that one process already uses with 2 threads,
    so expect ≤ 1×: the figure says what Ray costs on this machine, not what it
    buys on a cluster.

    python bench/train.py [--quick] [--vision w384] [--batch 32] [--variants] [--no-open-clip] [--mfu-sweep]
                          [--keep DIR] [--skip a,c,d]

``--quick`` shrinks everything for a smoke run (figures then mean little);
``--mfu-sweep`` only runs (b) for every vision config, to choose one.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# Template captions as curation writes them ("{region} {modality} with {condition}" / "Normal {region} {modality}").
CAPTIONS = [
    "Brain MRI with Glioma", "Brain MRI with Meningioma", "Brain MRI with Pituitary Tumor", "Normal Brain MRI",
    "Chest CT with COVID-19", "Chest CT with Community-Acquired Pneumonia", "Normal Chest CT",
    "Chest CT with Lung Nodule", "Chest X-ray with Atelectasis", "Chest X-ray with Cardiomegaly",
    "Chest X-ray with Consolidation", "Chest X-ray with Edema", "Chest X-ray with Pleural Effusion",
    "Normal Chest X-ray", "Chest X-ray with Edema and Pleural Effusion", "Abdomen CT with Liver Lesion",
    "Normal Abdomen CT", "Knee MRI with Meniscal Tear", "Normal Knee MRI", "Spine MRI with Disc Herniation",
]
BENCH_SITE = Path(os.environ.get("RADCLIP_BENCH_SITE", ROOT / ".venv" / "bench-site"))
CLIP_CONTEXT = 77  # the original CLIP pads every caption to 77 tokens
PEAK_N = 2048


@dataclass(frozen=True)
class Vision:
    hidden: int
    layers: int
    heads: int
    ff: int
    patch: int
    image: int

    def tower(self) -> dict:
        return {"hidden_size": self.hidden, "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
                "intermediate_size": self.ff, "patch_size": self.patch}

    def describe(self) -> str:
        return f"ViT d={self.hidden} L={self.layers} ff={self.ff} heads={self.heads} patch {self.patch} @ {self.image} px"


VISION = {
    "w256": Vision(256, 4, 4, 1024, 16, 224),
    "w384": Vision(384, 4, 6, 1536, 16, 224),
    "w512": Vision(512, 4, 8, 2048, 16, 224),
    "w768": Vision(768, 2, 12, 3072, 16, 224),
    "w256-p8": Vision(256, 4, 4, 1024, 8, 112),
    "quick": Vision(256, 2, 4, 1024, 16, 112),
}
CLIP_B_TEXT = {"hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8, "intermediate_size": 2048,
               "max_position_embeddings": CLIP_CONTEXT}


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


class Peak:
    """fp32 matmul throughput, sampled whenever asked (between the timed steps)."""

    def __init__(self, n: int = PEAK_N):
        generator = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=generator)
        self.b = torch.randn(n, n, generator=generator)
        self.out = torch.empty(n, n)
        self.flop = 2.0 * n**3
        self.seconds: list[float] = []
        for _ in range(2):
            torch.mm(self.a, self.b, out=self.out)

    def sample(self, count: int = 3) -> None:
        for _ in range(count):
            self.seconds.append(_timed(lambda: torch.mm(self.a, self.b, out=self.out)))

    def gflops(self) -> float:
        return self.flop / _median(self.seconds) / 1e9


def _interleaved(steps: dict[str, Callable[[], object]], reps: int, peak: Peak | None = None) -> dict[str, list[float]]:
    """Time every step ``reps`` times, rotating their order each repetition; peak samples in between."""
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            if peak is not None:
                peak.sample()
            times[name].append(_timed(steps[name]))
    if peak is not None:
        peak.sample()
    return times


# --------------------------------------------------------------------------- (a) + (b): the 2D step


def _model_params(vision: Vision, text: dict | None = None, **extra):
    from radclip.config import Params

    text = text or {"hidden_size": vision.hidden, "num_hidden_layers": vision.layers,
                    "num_attention_heads": vision.heads, "intermediate_size": vision.ff}
    return Params.model_validate({
        "model": {"projection_dim": 128, "vision": vision.tower(),
                  "text": {**text, "max_position_embeddings": CLIP_CONTEXT}},
        "curate": {"image_size": vision.image},
        **extra,
    })


def vision_flops_per_image(vision: Vision) -> float:
    """Analytic forward+backward FLOPs of the vision tower for one image (see the module docstring)."""
    patches = (vision.image // vision.patch) ** 2
    tokens = patches + 1
    d, ff = vision.hidden, vision.ff
    patch_embedding = 2 * patches * 3 * vision.patch**2 * d
    per_layer = 2 * tokens * (4 * d * d + 2 * d * ff) + 2 * 2 * tokens * tokens * d
    return 3.0 * (patch_embedding + vision.layers * per_layer)


class OurStep:
    """radclip.training.loop's stage-2d step on one fixed batch."""

    def __init__(self, model, images: torch.Tensor, caption_ids: torch.Tensor, *, fused: bool = False,
                 compiled: bool = False):
        from radclip.config import TrainParams
        from radclip.core.losses import ClipLoss
        from radclip.training.loop import MAX_LOG_LOGIT_SCALE, ImageStep, build_optimizer

        self.model, self.images, self.caption_ids = model, images, caption_ids
        self.max_log_scale = MAX_LOG_LOGIT_SCALE
        model.trainable_parameters("2d")
        model.train()
        self.step_module = ImageStep(model)
        if compiled:  # a variant tried (--variants): inductor on the forward, its backward compiled alike
            self.step_module = torch.compile(self.step_module)
        with torch.no_grad():  # what train_worker does: the frozen text tower once per unique caption
            self.text_table = model.encode_text(CAPTIONS).detach()
        self.loss_fn = ClipLoss()
        self.optimizer = build_optimizer(model, TrainParams())
        if fused:  # a variant tried (--variants): the same parameter groups, AdamW's fused kernel
            groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in self.optimizer.param_groups]
            self.optimizer = torch.optim.AdamW(groups, lr=TrainParams().lr, fused=True)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=10_000)

    def forward_backward(self) -> torch.Tensor:
        features, scale = self.step_module(self.images)
        loss = self.loss_fn(features, self.text_table[self.caption_ids], scale, self.caption_ids)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    def __call__(self) -> float:
        loss = self.forward_backward()
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(max=self.max_log_scale)
        return float(loss.detach())


class NaiveStep(OurStep):
    """Both towers every step through HF CLIPModel; captions tokenised and padded to 77 tokens each step."""

    def __init__(self, model, images: torch.Tensor, caption_ids: torch.Tensor):
        super().__init__(model, images, caption_ids)
        self.captions = [CAPTIONS[i] for i in caption_ids.tolist()]
        assert not any(p.requires_grad for p in model.clip.text_model.parameters())

    def forward_backward(self) -> torch.Tensor:
        model = self.model
        tokens = model.tokenizer(self.captions, padding="max_length", max_length=CLIP_CONTEXT, truncation=True,
                                 return_tensors="pt")
        out = model.clip(input_ids=tokens["input_ids"], pixel_values=model.preprocess_images(self.images),
                         attention_mask=tokens["attention_mask"])
        loss = self.loss_fn(out.image_embeds, out.text_embeds, model.logit_scale_exp(), self.caption_ids)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss


def import_open_clip():
    """open_clip from ``BENCH_SITE`` (``make bench-deps``; bench/requirements.txt), next to the CPU-only torch.

    torchvision's PyPI wheel links CUDA torch, so on a CPU torch its C ops never load, and its import then dies
    registering fake kernels for two of them (``nms``, ``qnms``), the only registrations torchvision does not
    guard. Defining their schemas first lets the pure-Python rest import. Nothing here calls them: open_clip
    needs torchvision only for its PIL transforms and a ResNet norm layer. There is no public switch for this.
    """
    if not (BENCH_SITE / "open_clip").is_dir():
        raise SystemExit(f"open_clip is not installed in {BENCH_SITE}: run `make bench-deps` (or pass --no-open-clip)")
    if str(BENCH_SITE) not in sys.path:
        sys.path.append(str(BENCH_SITE))  # after the venv: the bench site adds packages, never replaces one
    try:
        torch.ops.torchvision.nms  # noqa: B018 - probes whether torchvision's C ops are registered
    except (AttributeError, RuntimeError):
        library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 - a schema only, never an implementation
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        globals()["_TORCHVISION_SCHEMAS"] = library  # the definitions live as long as the Library object
    import open_clip

    return open_clip


class OpenClipStep:
    """open_clip's training step on an equal model: open_clip_train.train.train_one_epoch's body at fp32.

    The model is ``open_clip.CLIP`` with the same vision tower (width, layers, heads, MLP, patch, image size,
    quick-GELU as HF CLIP's default) and a text tower shaped like ours, locked with ``lock_text_tower()`` as
    ``--lock-text`` does; the optimiser is open_clip_train.main's AdamW (gain/bias/logit-scale without decay,
    betas 0.9/0.98, eps 1e-6, our lr and weight decay), its ``cosine_lr`` schedule and its ``ClipLoss``. Its
    data loader hands over normalised float pixels and token ids, prepared in loader workers, so those are
    prepared once here, off the timed step (ours prepares its uint8 images inside the step).
    """

    def __init__(self, vision: Vision, text: dict | None, pixel_values: torch.Tensor, captions: list[str]):
        open_clip = import_open_clip()
        from open_clip_train.scheduler import cosine_lr

        from radclip.config import TrainParams

        text = text or {"hidden_size": vision.hidden, "num_hidden_layers": vision.layers,
                        "num_attention_heads": vision.heads, "intermediate_size": vision.ff}
        self.model = open_clip.CLIP(
            embed_dim=128,
            vision_cfg=open_clip.CLIPVisionCfg(
                layers=vision.layers, width=vision.hidden, head_width=vision.hidden // vision.heads,
                mlp_ratio=vision.ff / vision.hidden, patch_size=vision.patch, image_size=vision.image),
            text_cfg=open_clip.CLIPTextCfg(
                context_length=CLIP_CONTEXT, width=text["hidden_size"], heads=text["num_attention_heads"],
                layers=text["num_hidden_layers"], mlp_ratio=text["intermediate_size"] / text["hidden_size"]),
            quick_gelu=True, output_dict=True)
        self.model.lock_text_tower()
        self.model.train()
        self.pixel_values = pixel_values.detach().clone()
        self.texts = open_clip.tokenize(captions)
        named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]

        def exempt(name: str, p: torch.nn.Parameter) -> bool:
            return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

        train = TrainParams()
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for n, p in named if exempt(n, p)], "weight_decay": 0.0},
             {"params": [p for n, p in named if not exempt(n, p)], "weight_decay": train.weight_decay}],
            lr=train.lr, betas=(0.9, 0.98), eps=1e-6)
        self.scheduler = cosine_lr(self.optimizer, train.lr, 0, 10_000)
        self.loss_fn = open_clip.ClipLoss()
        self.step = 0

    def __call__(self) -> float:
        self.scheduler(self.step)
        self.step += 1
        self.optimizer.zero_grad()
        out = self.model(self.pixel_values, self.texts)
        losses = self.loss_fn(**out, output_dict=True)
        total = sum(losses.values())
        total.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
        return float(total.detach())


def _counted_flops(step: OurStep) -> float:
    """FlopCounterMode over one forward + backward of our step (cross-check of the analytic count)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step.forward_backward()
    step.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _batch(vision: Vision, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Phantom-like uint8 images (smooth blobs + noise) and caption ids cycling through the templates."""
    generator = torch.Generator().manual_seed(0)
    size = vision.image
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centres = torch.rand(batch, 2, generator=generator) * 0.6 - 0.3
    radius = 0.5 + 0.3 * torch.rand(batch, 1, 1, generator=generator)
    body = ((x - centres[:, 0, None, None]) ** 2 + (y - centres[:, 1, None, None]) ** 2 < radius**2).float()
    noise = torch.rand(batch, size, size, generator=generator)
    images = (150 * body + 60 * noise).clamp(0, 255).to(torch.uint8)
    caption_ids = torch.randint(0, len(CAPTIONS), (batch,), generator=generator)
    return images, caption_ids


def embedded_default() -> tuple[Vision, dict]:
    """The embedded default's towers (radclip.config defaults = params.yaml), text context widened to 77."""
    from radclip.config import Params

    params = Params()
    v, t = params.model.vision, params.model.text
    vision = Vision(v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size, v.patch_size,
                    params.curate.image_size)
    return vision, t.model_dump(exclude={"max_position_embeddings"})


def bench_step(vision: Vision, batch: int, reps: int, *, naive: bool, clip_b_text: bool, text: dict | None = None,
               peer: bool = False, variants: bool = False) -> dict:
    """Time our step (and the naive ones, open_clip's, our variants) interleaved; ``text``: the text tower
    (None: mirror of the vision tower)."""
    from radclip.training.build import build_model

    images, caption_ids = _batch(vision, batch)
    model = build_model(_model_params(vision, text), CAPTIONS)
    steps: dict[str, Callable[[], object]] = {}
    ours = OurStep(copy.deepcopy(model), images, caption_ids)
    steps["ours"] = ours
    if variants:
        steps["ours_fused_adamw"] = OurStep(copy.deepcopy(model), images, caption_ids, fused=True)
        steps["ours_compiled"] = OurStep(copy.deepcopy(model), images, caption_ids, compiled=True)
    if peer:
        pixel_values = model.preprocess_images(images)
        steps["open_clip"] = OpenClipStep(vision, text, pixel_values, [CAPTIONS[i] for i in caption_ids.tolist()])
    if naive:
        steps["naive"] = NaiveStep(copy.deepcopy(model), images, caption_ids)
    if naive and clip_b_text:
        wide = build_model(_model_params(vision, CLIP_B_TEXT), CAPTIONS)
        # Same vision weights as ours; only the text tower differs.
        wide.clip.vision_model.load_state_dict(model.clip.vision_model.state_dict())
        wide.clip.visual_projection.load_state_dict(model.clip.visual_projection.state_dict())
        steps["naive_clip_b_text"] = NaiveStep(wide, images, caption_ids)
    counted = _counted_flops(ours)
    peak = Peak()
    for step in steps.values():  # warm-up: allocator, oneDNN primitives, optimiser state (and compilation)
        step()
        step()
    times = _interleaved(steps, reps, peak)
    analytic = vision_flops_per_image(vision) * batch
    seconds = _median(times["ours"])
    achieved = analytic / seconds / 1e9
    return {
        "vision": vision,
        "batch": batch,
        "pairs_per_s": {name: batch / _median(values) for name, values in times.items()},
        "seconds": {name: _median(values) for name, values in times.items()},
        "analytic_gflop": analytic / 1e9,
        "counted_gflop": counted / 1e9,
        "achieved_gflops": achieved,
        "peak_gflops": peak.gflops(),
        "mfu": achieved / peak.gflops(),
        "vision_params_m": sum(p.numel() for p in model.clip.vision_model.parameters()) / 1e6,
        "open_clip_vision_params_m": (sum(p.numel() for p in steps["open_clip"].model.visual.parameters()) / 1e6
                                      if "open_clip" in steps else None),
        "text": "mirror" if text is None else f"d={text['hidden_size']} L={text['num_hidden_layers']}",
    }


# --------------------------------------------------------------------------- (c): slice cache


def _phantom_volumes(count: int, slices: int, size: int) -> np.ndarray:
    """Ellipsoid 'organs' with a brighter blob and noise, z-scored per volume, float16."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.linspace(-1, 1, slices), np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    volumes = np.empty((count, slices, size, size), dtype=np.float16)
    for index in range(count):
        radii = rng.uniform(0.6, 0.9, 3)
        body = (x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2 < 1
        centre = rng.uniform(-0.4, 0.4, 3)
        lesion = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + ((z - centre[2]) * 4) ** 2 < 0.02
        volume = 1.0 * body + 0.8 * lesion + 0.2 * rng.standard_normal(body.shape)
        volumes[index] = ((volume - volume.mean()) / volume.std()).astype(np.float16)
    return volumes


def _write_curated(root: Path, volumes: np.ndarray) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from radclip.data.curate import MANIFEST_COLUMNS, MANIFEST_SCHEMA

    (root / "shards").mkdir(parents=True, exist_ok=True)
    shard = "shards/3d-axial-00000.npy"
    np.save(root / shard, volumes)
    count, slices, size, _ = volumes.shape
    rows, captions = [], []
    for index in range(count):
        caption = CAPTIONS[index % len(CAPTIONS)]
        # Columns this benchmark does not describe: empty strings, null numbers (display_low/high: NaN = the
        # encoder's percentile rule, as for manifests curated before display ranges were recorded).
        row = {name: "" if pa.types.is_string(MANIFEST_SCHEMA.field(name).type) else None for name in MANIFEST_COLUMNS}
        row.update(record_id=f"vol{index:04d}", collection="phantom-3d", role="train", kind="3d", split="train",
                   caption=caption, label=caption, plane="axial", patient_hash=f"p{index:04d}", shard=shard,
                   shard_index=index, slices=slices, height=size, width=size, mean=0.0, std=1.0, min=-3.0, max=3.0)
        rows.append(row)
        captions.append(caption)
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), root / "manifest.parquet")
    return captions


class CuratedVolumes(torch.utils.data.Dataset):
    """Curated volumes of the manifest with caption ids numbered like SliceCacheDataset's (sorted captions)."""

    def __init__(self, curated_dir: Path, captions: list[str]):
        from radclip.data.shards import CuratedDataset

        self.data = CuratedDataset(curated_dir, query="kind == '3d' and role == 'train' and split == 'train'")
        lookup = {caption: index for index, caption in enumerate(captions)}
        self.caption_ids = self.data.manifest["caption"].map(lookup).to_numpy()
        self.shards = self.data.manifest["shard"].to_numpy(dtype=object)
        self.rows = self.data.manifest["shard_index"].to_numpy()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        volume = np.array(self.data.shard(self.shards[index])[int(self.rows[index])])
        return torch.from_numpy(volume), int(self.caption_ids[index])


class AdapterEpoch:
    """One adapter-stage epoch (train_worker's step), from the cache or re-encoding every batch."""

    def __init__(self, model, dataset, batch: int, *, reencode: bool):
        from radclip.config import TrainParams
        from radclip.core.losses import ClipLoss
        from radclip.training.loop import MAX_LOG_LOGIT_SCALE, AdapterStep, build_optimizer

        self.model, self.reencode, self.max_log_scale = model, reencode, MAX_LOG_LOGIT_SCALE
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                                                  generator=torch.Generator().manual_seed(0))
        self.step_module = AdapterStep(model)
        self.loss_fn = ClipLoss()
        self.optimizer = build_optimizer(model, TrainParams(lr=1e-3, weight_decay=0.01))
        self.samples = 0

    def __call__(self) -> None:
        model = self.model
        model.train()
        for batch in self.loader:
            if self.reencode:
                volumes, caption_ids = batch
                with torch.no_grad():
                    slices = model.encode_slices(volumes)
                mask = torch.ones(slices.shape[:2], dtype=torch.bool)
            else:
                slices, mask, caption_ids = batch
            features, scale = self.step_module(slices, mask)
            loss = self.loss_fn(features, self.text_table[caption_ids], scale, caption_ids)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(max=self.max_log_scale)
            self.samples += len(caption_ids)


def bench_cache(work: Path, volumes_n: int, slices: int, size: int, batch: int, reps: int) -> dict:
    from radclip.config import Params
    from radclip.data.slice_cache import SliceCacheDataset, write_slice_cache
    from radclip.training.build import build_model

    curated = work / "cache-curated"
    captions = _write_curated(curated, _phantom_volumes(volumes_n, slices, size))
    # The embedded default (params.yaml's model, 64 px) with room for the slices of these volumes.
    defaults = Params()
    params = Params.model_validate({"model": {"adapter": {"max_slices": max(slices, defaults.model.adapter.max_slices)}},
                                    "curate": {"image_size": 64}})
    model = build_model(params, sorted(set(captions)))
    cache_dir = work / "slice_cache"
    write_seconds = _timed(lambda: write_slice_cache(model, curated, cache_dir, progress=False))
    cached = SliceCacheDataset(cache_dir, query="role == 'train' and split == 'train'")
    raw = CuratedVolumes(curated, cached.captions)
    model.trainable_parameters("adapter")
    with torch.no_grad():
        text_table = model.encode_text(cached.captions).detach()
    epochs = {"cache": AdapterEpoch(model, cached, batch, reencode=False),
              "reencode": AdapterEpoch(model, raw, batch, reencode=True)}
    for epoch in epochs.values():
        epoch.text_table = text_table
        epoch()  # warm-up
    times = _interleaved(epochs, reps)
    return {
        "volumes": volumes_n, "slices": slices, "size": size, "batch": batch,
        "write_seconds": write_seconds,
        "cache_seconds": _median(times["cache"]),
        "reencode_seconds": _median(times["reencode"]),
        "ratio": _median(times["cache"]) / _median(times["reencode"]),
    }


# --------------------------------------------------------------------------- (d): Ray Train vs local


def _fit_params(work: Path, quick: bool, **train_2d):
    from helpers import tiny_params

    phantoms = {"train_2d": 96 if quick else 1200, "train_3d": 4, "image_size": 64, "workers": 1,
                "suites": {"chest_xray_5class": 1, "brain_mri_4class": 1, "brain_mri_3d_2class": 1, "chest_ct_3d_3class": 1,
                           "brain_mri_3d_sex": 1}}
    return tiny_params(
        work,
        phantoms=phantoms,
        curate={"engine": "serial", "image_size": 64},
        validate={"min_class_count": 0, "fail_on_violation": False},
        train_2d={"epochs": 2 if quick else 3, "batch_size": 16 if quick else 32, "patience": 100,
                  "max_failures": 0, **train_2d},
        ray={"address": None, "num_cpus": 2},
        mlflow={"tracking_uri": os.environ["MLFLOW_TRACKING_URI"], "artifact_root": str(work / "mlruns"),
                "experiment": "bench-train"},
    )


def bench_ray(work: Path, quick: bool) -> dict:
    from radclip.data.curate import curate
    from radclip.data.phantoms import generate
    from radclip.jobs.common import vocabulary
    from radclip.training.fit import fit

    base = _fit_params(work, quick)
    started = time.perf_counter()
    generate(base)
    curate(base, progress=False)
    data_seconds = time.perf_counter() - started
    words = vocabulary(base)
    results = {}
    for engine, workers in (("local", 1), ("ray", 2)):
        params = _fit_params(work, quick, engine=engine, num_workers=workers)
        started = time.perf_counter()
        result = fit(params, "2d", data_dir=params.resolve(params.paths.curated), vocabulary=words,
                     out_dir=work / f"model-{engine}")
        wall = time.perf_counter() - started
        history = result.history
        steady = history[1:] if len(history) > 1 else history
        results[engine] = {
            "wall": wall,
            "epochs": len(history),
            "pairs_per_s": _median([h["pairs_per_second"] for h in steady]),
            "epoch0_pairs_per_s": history[0]["pairs_per_second"],
        }
    results["data_seconds"] = data_seconds
    results["batch"] = base.train_2d.batch_size
    return results


# --------------------------------------------------------------------------- report


VARIANTS = {"ours_fused_adamw": "ours + fused AdamW", "ours_compiled": "ours + torch.compile"}


def _variant_rows(part: str, pps: dict[str, float]) -> list[tuple[str, str, str]]:
    return [(f"{part} variant tried, {label}: pairs/s", f"{pps[name]:.1f}", f"{pps[name] / pps['ours']:.2f}x ours")
            for name, label in VARIANTS.items() if name in pps]


def _print_report(step: dict | None, default: dict | None, cache: dict | None, ray: dict | None) -> None:
    rows: list[tuple[str, str, str]] = []
    goals: list[str] = []
    if step is not None:
        vision, pps, batch = step["vision"], step["pairs_per_s"], step["batch"]
        rows.append(("(a,b) model", f"{vision.describe()}, {step['vision_params_m']:.1f}M params", f"batch {batch}"))
        rows.append(("(a) ours: pairs/s", f"{pps['ours']:.1f}", f"{step['seconds']['ours']:.3f} s/step"))
        if "naive" in pps:
            rows.append(("(a) naive, mirror text tower: pairs/s", f"{pps['naive']:.1f}",
                         f"{step['seconds']['naive']:.3f} s/step"))
        if "naive_clip_b_text" in pps:
            rows.append(("(a) naive, CLIP ViT-B text tower (512x12): pairs/s", f"{pps['naive_clip_b_text']:.1f}",
                         f"{step['seconds']['naive_clip_b_text']:.3f} s/step"))
        if "open_clip" in pps:
            rows.append(("(a) open_clip, text tower locked: pairs/s", f"{pps['open_clip']:.1f}",
                         f"{step['seconds']['open_clip']:.3f} s/step; vision {step['open_clip_vision_params_m']:.1f}M "
                         "params"))
        rows.extend(_variant_rows("(a)", pps))
        rows.append(("(b) vision FLOPs / step (analytic, fwd+bwd)", f"{step['analytic_gflop']:.1f} GFLOP",
                     f"FlopCounterMode: {step['counted_gflop']:.1f} GFLOP"))
        rows.append(("(b) achieved", f"{step['achieved_gflops']:.1f} GFLOP/s", "whole step timed"))
        rows.append(("(b) peak (2048² fp32 mm, same run)", f"{step['peak_gflops']:.1f} GFLOP/s", "median"))
        rows.append(("(b) MFU", f"{100 * step['mfu']:.1f}%", "analytic FLOPs"))
        if "naive" in pps:
            ratio = pps["ours"] / pps["naive"]
            goals.append(f"(a) ours / naive (mirror text tower): {ratio:.2f}x   (goal >= 1.3x)")
        if "naive_clip_b_text" in pps:
            ratio = pps["ours"] / pps["naive_clip_b_text"]
            goals.append(f"(a) ours / naive (CLIP ViT-B text tower): {ratio:.2f}x   (sensitivity; goal >= 1.3x)")
        if "open_clip" in pps:
            goals.append(f"(a) ours / open_clip: {pps['ours'] / pps['open_clip']:.2f}x   (goal >= 1.1x)")
        goals.append(f"(b) MFU: {100 * step['mfu']:.1f}%   (goal >= 65%)")
    if default is not None:
        vision, pps, seconds = default["vision"], default["pairs_per_s"], default["seconds"]
        rows.append(("(a') embedded default model", f"{vision.describe()}, text {default['text']} (context 77)",
                     f"batch {default['batch']}"))
        rows.append(("(a') ours: pairs/s", f"{pps['ours']:.1f}", f"{seconds['ours']:.3f} s/step"))
        rows.append(("(a') naive: pairs/s", f"{pps['naive']:.1f}", f"{seconds['naive']:.3f} s/step"))
        rows.extend(_variant_rows("(a')", pps))
        goals.append(f"(a') ours / naive at the embedded default: {pps['ours'] / pps['naive']:.2f}x   (goal >= 1.3x)")
    if cache is not None:
        shape = f"{cache['volumes']} vol x {cache['slices']} x {cache['size']}²"
        rows.append(("(c) write slice cache (one-off)", f"{cache['write_seconds']:.2f} s", shape))
        rows.append(("(c) adapter epoch on cache", f"{1000 * cache['cache_seconds']:.1f} ms", f"batch {cache['batch']}"))
        rows.append(("(c) adapter epoch re-encoding slices", f"{1000 * cache['reencode_seconds']:.1f} ms",
                     f"batch {cache['batch']}"))
        goals.append(f"(c) cache epoch / re-encode epoch: {100 * cache['ratio']:.2f}%   (goal <= 2%)")
    if ray is not None:
        local, remote = ray["local"], ray["ray"]
        rows.append(("(d) phantoms + curation (one-off)", f"{ray['data_seconds']:.1f} s", ""))
        rows.append(("(d) local 1 process: epoch pairs/s", f"{local['pairs_per_s']:.1f}",
                     f"epoch 0: {local['epoch0_pairs_per_s']:.1f}; global batch {ray['batch']}"))
        rows.append(("(d) Ray 2 workers: epoch pairs/s", f"{remote['pairs_per_s']:.1f}",
                     f"epoch 0: {remote['epoch0_pairs_per_s']:.1f}; global batch {ray['batch']}"))
        rows.append(("(d) local wall time", f"{local['wall']:.1f} s", f"{local['epochs']} epochs"))
        rows.append(("(d) Ray wall time (incl. start-up)", f"{remote['wall']:.1f} s", f"{remote['epochs']} epochs"))
        goals.append(f"(d) Ray / local epoch pairs/s: {remote['pairs_per_s'] / local['pairs_per_s']:.2f}x   "
                     "(honest figure; 2 shared cores: expect <= 1x)")
        goals.append(f"(d) Ray / local wall time: {remote['wall'] / local['wall']:.2f}x   (includes Ray start-up)")
    print()
    print("| measurement | value | note |")
    print("|---|---:|---|")
    for name, value, note in rows:
        print(f"| {name} | {value} | {note} |")
    print()
    for line in goals:
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shrink everything for a smoke run")
    parser.add_argument("--vision", choices=sorted(VISION), default=None, help="vision tower of (a)/(b)")
    parser.add_argument("--batch", type=int, default=None, help="batch of (a)/(b)")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions per measurement")
    parser.add_argument("--variants", action="store_true",
                        help="(a) also times our step with fused AdamW and with torch.compile")
    parser.add_argument("--no-open-clip", action="store_true",
                        help="(a) without open_clip's step (when `make bench-deps` has not run)")
    parser.add_argument("--mfu-sweep", action="store_true", help="only (b), for every vision config")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: a (a and b), c, d")
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep (default: a temp dir)")
    args = parser.parse_args()

    quick = args.quick
    batch = args.batch or (8 if quick else 32)
    reps = args.reps or (2 if quick else 5)
    work = args.keep or Path(tempfile.mkdtemp(prefix="radclip-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; work dir {work}",
          flush=True)

    if args.mfu_sweep:
        print("| vision | batch | s/step | pairs/s | achieved GFLOP/s | peak GFLOP/s | MFU |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, vision in VISION.items():
            if name == "quick":
                continue
            r = bench_step(vision, batch, reps, naive=False, clip_b_text=False)
            print(f"| {name}: {vision.describe()} | {batch} | {r['seconds']['ours']:.3f} | {r['pairs_per_s']['ours']:.1f} "
                  f"| {r['achieved_gflops']:.1f} | {r['peak_gflops']:.1f} | {100 * r['mfu']:.1f}% |", flush=True)
        return

    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    step = default = cache = ray = None
    if "a" not in skip:
        vision = VISION[args.vision or ("quick" if quick else "w384")]
        print(f"(a)+(b) 2D step: {vision.describe()}, batch {batch}, {reps} interleaved reps ...", flush=True)
        step = bench_step(vision, batch, reps, naive=True, clip_b_text=True, peer=not args.no_open_clip,
                          variants=args.variants)
        vision, text = embedded_default()
        print(f"(a') 2D step at the embedded default: {vision.describe()}, batch {batch} ...", flush=True)
        default = bench_step(vision, batch, 2 * reps, naive=True, clip_b_text=False, text=text,
                             variants=args.variants)
    if "c" not in skip:
        shape = (16, 8, 32) if quick else (64, 32, 64)
        print(f"(c) slice cache: {shape[0]} volumes x {shape[1]} slices x {shape[2]}² ...", flush=True)
        cache = bench_cache(work, *shape, batch=16 if not quick else 8, reps=reps)
    if "d" not in skip:
        print("(d) Ray Train 2 workers vs local ...", flush=True)
        ray = bench_ray(work, quick)
    _print_report(step, default, cache, ray)


if __name__ == "__main__":
    main()
