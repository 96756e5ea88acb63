"""RadCLIP: CLIP with a fine-tuned 2D image encoder, a frozen text tower and a slice pooling adapter.

One module holds everything a stage needs:

* ``clip`` — a ``transformers.CLIPModel``. Stage ``2d`` fine-tunes the vision tower
  and visual projection with InfoNCE; the text tower and text projection stay frozen
  (the paper's method), so caption embeddings come from a
  :class:`~radclip.core.models.text_cache.TextEmbeddingCache`.
* ``adapter`` — :class:`~radclip.core.models.adapter.SlicePoolingAdapter`; stage
  ``adapter`` trains only it: every slice of a volume goes through the 2D encoder,
  the adapter pools the slice embeddings into one volume embedding.
* ``cross_modal`` — LRCLR's cross-modal transformer
  (:class:`~radclip.core.models.regions.CrossModalTransformer`), only in a model stage
  ``lrclr`` trained with λ > 0; stage ``lrclr`` trains it with the vision tower.
* ``logit_scale`` — log(1/τ), learnable or fixed per ``loss``; its exponential is
  clamped at 100 like CLIP (:meth:`RadCLIP.logit_scale_exp`). CLIP's own
  ``logit_scale`` is unused and frozen.

Inputs are the curated arrays as they are (see radclip.data.curate): 2D images
uint8 ``(H, W)`` in display range, volumes float16 ``(S, H, W)`` z-scored per
volume. Preprocessing maps both to what a CLIP vision tower expects: values in
[0, 1] (each volume by its recorded display range — so slices look like the 2D images
the encoder was fine-tuned on), grey repeated to 3 channels, then the checkpoint's own
image-processor settings (:class:`~radclip.core.preprocessing.PixelNormalisation`: size,
resize method, mean/std from ``clip/preprocessor_config.json``). Every ``encode_*``
returns L2-normalised embeddings.

Saved layout (``save_pretrained``; loading never unpickles, ``torch.load`` is not used)::

    config.json            RadCLIP config: adapter settings, image size, tokenizer kind, temperature
    clip/                  CLIPModel.save_pretrained (config.json + model.safetensors) and the
                           CLIPImageProcessor (preprocessor_config.json)
    tokenizer/             tokenizer.save_pretrained (JSON)
    adapter.safetensors    adapter weights (prefix "adapter.") and "logit_scale"
    cross_modal.safetensors  LRCLR's cross-modal transformer, when the model has one (config "cross_modal")
    preprocessing.json     the preprocessing contract of the data it was trained on (serving reads it)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, cast, overload

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import CLIPModel, CLIPVisionConfig, PreTrainedTokenizerBase

from radclip.core.losses import MAX_LOGIT_SCALE
from radclip.core.models.adapter import AdapterSpec, SlicePoolingAdapter
from radclip.core.models.clip import (
    freeze_for_radclip,
    image_processor,
    load_pixel_normalisation,
    text_tower_frozen,
    vision_modules,
)
from radclip.core.models.regions import (
    CrossModalOutput,
    CrossModalSpec,
    CrossModalTransformer,
    RegionOutput,
    TextTokenCache,
    encode_regions,
    use_eager_vision_attention,
)
from radclip.core.models.text_cache import TextEmbeddingCache
from radclip.core.models.tokenizer import load_tokenizer
from radclip.core.preprocessing import (
    DISPLAY_PERCENTILES,
    PixelNormalisation,
    Preprocessing,
)

Stage = Literal["2d", "adapter", "lrclr"]

CONFIG_FILE = "config.json"
CLIP_DIR = "clip"
TOKENIZER_DIR = "tokenizer"
ADAPTER_FILE = "adapter.safetensors"
CROSS_MODAL_FILE = "cross_modal.safetensors"
FORMAT_NAME = "radclip"
FORMAT_VERSION = 2  # 2: adapter settings instead of the params schema's model section; image processor saved

# Slices → [0, 1] by each volume's display range (curation records it: a CT's window, else its
# 0.5–99.5 percentiles, the rule 2D images get), so a slice looks to the 2D encoder like a 2D image
# of that anatomy. Without a recorded range the percentiles below stand in. Percentiles for a
# windowed CT put air at 0 where the lung window puts it at 0.22: per-slice zero-shot on lesion
# slices went from 0.0 to 0.4-0.6 with the recorded window.
SLICE_RANGE_QUANTILES = tuple(p / 100 for p in DISPLAY_PERCENTILES)
DEFAULT_SLICE_CHUNK = 256  # slices per vision forward in encode_slices: bounds activation memory


def _as_tensor(array: Tensor | np.ndarray) -> Tensor:
    # Curated shards are read-only memory maps: copy instead of sharing (torch warns on those).
    return array if isinstance(array, Tensor) else torch.tensor(np.asarray(array))


class RadCLIP(nn.Module):
    def __init__(
        self,
        clip: CLIPModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        adapter: AdapterSpec,
        image_size: int,
        pixels: PixelNormalisation,
        temperature: float = 0.07,
        learnable_temperature: bool = True,
        slice_chunk_size: int = DEFAULT_SLICE_CHUNK,
        preprocessing: Preprocessing | None = None,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.clip = clip
        self.tokenizer = tokenizer
        self.adapter_spec = adapter
        self.pixels = pixels
        self.preprocessing = None if preprocessing is None else preprocessing.with_pixels(pixels)
        self.image_size = int(image_size)  # curated 2D size (the vision tower's may differ: resized)
        # CLIPConfig holds a CLIPVisionConfig with an int image size and projection dim here (its stubs allow more).
        self.vision_image_size = int(cast(int, cast(CLIPVisionConfig, clip.config.vision_config).image_size))
        self.embedding_dim = int(cast(int, clip.config.projection_dim))
        self.temperature = float(temperature)
        self.learnable_temperature = bool(learnable_temperature)
        self.slice_chunk_size = int(slice_chunk_size)
        self.adapter = SlicePoolingAdapter.from_spec(self.embedding_dim, adapter)
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature), dtype=torch.float32), requires_grad=learnable_temperature
        )
        if pixels.size != self.vision_image_size:
            raise ValueError(f"image processor size {pixels.size} differs from the vision tower's "
                             f"image_size {self.vision_image_size}")
        freeze_for_radclip(clip)
        self.text_cache = TextEmbeddingCache(clip, tokenizer)
        self.cross_modal_spec: CrossModalSpec | None = None
        self.cross_modal: CrossModalTransformer | None = None
        self._token_cache: TextTokenCache | None = None
        self._eager = False  # the vision tower runs SDPA until region selection needs its attention

    # ------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable description; with the saved weights it rebuilds this model."""
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "adapter": asdict(self.adapter_spec),
            "image_size": self.image_size,
            "vision_image_size": self.vision_image_size,
            "embedding_dim": self.embedding_dim,
            "tokenizer": type(self.tokenizer).__name__,
            "temperature": self.temperature,
            "learnable_temperature": self.learnable_temperature,
            "slice_chunk_size": self.slice_chunk_size,
            "cross_modal": None if self.cross_modal_spec is None else asdict(self.cross_modal_spec),
        }

    def logit_scale_exp(self) -> Tensor:
        """1/τ = exp(logit_scale), clamped at 100 like CLIP."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def similarity_logits(self, image_embeddings: Tensor, text_embeddings: Tensor) -> Tensor:
        """``(N_images, N_texts)`` logits = exp(logit_scale) · cosine similarity of normalised embeddings."""
        return self.logit_scale_exp() * image_embeddings @ text_embeddings.T

    # ------------------------------------------------------------------ preprocessing

    def _vision_dtype(self) -> torch.dtype:
        return self.clip.vision_model.embeddings.patch_embedding.weight.dtype

    def preprocess_images(self, images: Tensor | np.ndarray) -> Tensor:
        """Curated images → CLIP pixel values ``(B, 3, h, w)`` on the model's device.

        ``images``: ``(B, H, W)`` or ``(B, 1, H, W)`` (or already 3-channel); uint8 in
        display range 0–255, or float already scaled to [0, 1]. NumPy arrays (curated
        shards) are accepted and copied.
        """
        images = _as_tensor(images)
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be (B, H, W), (B, 1, H, W) or (B, 3, H, W), got {tuple(images.shape)}")
        images = images.to(self.device)  # before the float cast: uint8 is a quarter of the transfer
        pixels = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return self.pixels.apply(pixels).to(self._vision_dtype())

    def preprocess_slices(
        self, volumes: Tensor | np.ndarray, display_range: Tensor | np.ndarray | None = None
    ) -> Tensor:
        """Z-scored volumes ``(B, S, H, W)`` → pixel values ``(B*S, 3, h, w)``.

        Each volume is mapped to [0, 1] by its display range (see :meth:`volumes_to_unit`),
        then every slice is preprocessed like a 2D image.
        """
        volumes = _as_tensor(volumes)
        if volumes.dim() != 4:
            raise ValueError(f"volumes must be (B, S, H, W), got {tuple(volumes.shape)}")
        batch, count, height, width = volumes.shape
        unit = self.volumes_to_unit(volumes, display_range)
        return self.preprocess_images(unit.reshape(batch * count, height, width))

    def volumes_to_unit(self, volumes: Tensor, display_range: Tensor | np.ndarray | None = None) -> Tensor:
        """``(B, S, H, W)`` → [0, 1] per volume: its display range ``(B, 2)`` (low, high in the
        volume's own units, as curation records it) maps to 0/1, clipped. Rows that are NaN, or
        no ``display_range``, fall back to the volume's ``DISPLAY_PERCENTILES``."""
        flat = volumes.to(self.device).float().reshape(volumes.shape[0], -1)
        bounds = torch.full((flat.shape[0], 2), float("nan"), device=flat.device)
        if display_range is not None:
            given = _as_tensor(display_range).to(device=flat.device, dtype=flat.dtype).reshape(-1, 2)
            if given.shape[0] != flat.shape[0]:
                raise ValueError(f"display_range must be (B, 2) = ({flat.shape[0]}, 2), got {tuple(given.shape)}")
            bounds = given.clone()
        # Percentiles only for volumes without a recorded range: a quantile sorts the whole volume.
        quantiles = torch.tensor(SLICE_RANGE_QUANTILES, device=flat.device)
        for row in (~torch.isfinite(bounds).all(dim=1)).nonzero().flatten().tolist():
            bounds[row] = torch.quantile(flat[row], quantiles)
        low, high = bounds[:, :1], bounds[:, 1:]
        unit = ((flat - low) / (high - low).clamp_min(1e-6)).clamp(0.0, 1.0)
        return unit.reshape(volumes.shape)

    # ------------------------------------------------------------------ encoders

    def encode_pixels(self, pixel_values: Tensor) -> Tensor:
        """Preprocessed ``(B, 3, h, w)`` → L2-normalised ``(B, D)`` (vision tower + visual projection)."""
        vision_model, visual_projection = vision_modules(self.clip)
        pooled = vision_model(pixel_values=pixel_values).pooler_output
        return F.normalize(visual_projection(pooled).float(), dim=-1)

    def encode_image(self, images: Tensor | np.ndarray) -> Tensor:
        """Curated 2D images (see :meth:`preprocess_images`) → L2-normalised ``(B, D)``."""
        return self.encode_pixels(self.preprocess_images(images))

    def encode_slices(
        self,
        volumes: Tensor | np.ndarray,
        mask: Tensor | None = None,
        chunk_size: int | None = None,
        display_range: Tensor | np.ndarray | None = None,
    ) -> Tensor:
        """Z-scored volumes ``(B, S, H, W)`` → per-slice L2-normalised embeddings ``(B, S, D)``.

        Slices go through the 2D encoder ``chunk_size`` at a time (preprocessing
        included), so memory stays bounded whatever B × S. With ``mask`` (True = valid)
        padded slices are skipped and their embeddings are zero. ``display_range``
        ``(B, 2)``: see :meth:`volumes_to_unit`.
        """
        volumes = _as_tensor(volumes)
        if volumes.dim() != 4:
            raise ValueError(f"volumes must be (B, S, H, W), got {tuple(volumes.shape)}")
        batch, count, height, width = volumes.shape
        chunk = chunk_size or self.slice_chunk_size
        # Per-volume intensity mapping first: it needs the whole volume, chunks cut across volumes.
        flat = self.volumes_to_unit(volumes, display_range).reshape(batch * count, height, width)
        if mask is None:
            pieces = [
                self.encode_image(flat[start : start + chunk])
                for start in range(0, len(flat), chunk)
            ]
            return torch.cat(pieces).reshape(batch, count, -1)
        mask = _as_tensor(mask)
        if mask.shape != (batch, count):
            raise ValueError(f"mask must be (batch, slices) = {(batch, count)}, got {tuple(mask.shape)}")
        selected = mask.reshape(-1).to(device="cpu", dtype=torch.bool).nonzero().squeeze(1)
        pieces = [
            self.encode_image(flat[selected[start : start + chunk].to(flat.device)])
            for start in range(0, len(selected), chunk)
        ]
        encoded = torch.cat(pieces) if pieces else torch.zeros(0, self.embedding_dim, device=self.device)
        # index_copy (out of place) keeps the graph when the vision tower trains.
        full = torch.zeros(batch * count, encoded.shape[-1], device=encoded.device, dtype=encoded.dtype)
        return full.index_copy(0, selected.to(encoded.device), encoded).reshape(batch, count, -1)

    @overload
    def pool_slices(
        self, slice_embeddings: Tensor, mask: Tensor | None = None, *, return_weights: Literal[False] = False
    ) -> Tensor: ...

    @overload
    def pool_slices(
        self, slice_embeddings: Tensor, mask: Tensor | None = None, *, return_weights: Literal[True]
    ) -> tuple[Tensor, Tensor]: ...

    def pool_slices(
        self, slice_embeddings: Tensor, mask: Tensor | None = None, *, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Slice embeddings ``(B, S, D)`` → L2-normalised volume embeddings ``(B, D)`` through the adapter.

        With ``return_weights`` also the adapter's per-slice weights ``(B, S)``.
        """
        mask = None if mask is None else _as_tensor(mask).to(slice_embeddings.device)
        pooled, weights = self.adapter(slice_embeddings, mask)
        volume = F.normalize(pooled, dim=-1)
        return (volume, weights) if return_weights else volume

    def encode_volume(
        self,
        volumes: Tensor | np.ndarray,
        mask: Tensor | None = None,
        display_range: Tensor | np.ndarray | None = None,
    ) -> Tensor:
        """Z-scored volumes ``(B, S, H, W)`` → L2-normalised ``(B, D)``."""
        return self.pool_slices(self.encode_slices(volumes, mask, display_range=display_range), mask)

    def encode_text(self, captions: list[str]) -> Tensor:
        """Captions → L2-normalised ``(N, D)``; cached per unique caption while the text tower is frozen."""
        return self.text_cache.encode(captions)

    # ------------------------------------------------------------------ LRCLR

    def attach_cross_modal(self, spec: CrossModalSpec) -> None:
        """A fresh cross-modal transformer (the caller seeds torch for its initial weights); the vision
        tower switches to eager attention, the path that returns the weights region selection reads."""
        self.cross_modal_spec = spec
        self.cross_modal = CrossModalTransformer.from_spec(self.embedding_dim, spec).to(self.device)
        self._use_eager_attention()

    def _use_eager_attention(self) -> None:
        if not self._eager:
            use_eager_vision_attention(self.clip)
            self._eager = True

    def encode_regions(self, images: Tensor | np.ndarray) -> RegionOutput:
        """Curated 2D images → global embedding, per-head attention rollout and the K selected regions."""
        self._use_eager_attention()  # same weights; only this path returns attention
        return encode_regions(self.clip, self.preprocess_images(images))

    def local_features(self, regions: RegionOutput, captions: list[str]) -> CrossModalOutput:
        """LRCLR's ``(v_l, t_l)`` and t_l's attention over the regions, one caption per image."""
        if self.cross_modal is None:
            raise ValueError("this model has no cross-modal transformer (trained with λ = 0, or not by LRCLR)")
        if self._token_cache is None:
            self._token_cache = TextTokenCache(self.clip, self.tokenizer)
        states, mask, pooled = self._token_cache.encode(captions)
        return self.cross_modal(regions.cls_token, regions.regions, states.to(regions.cls_token.dtype), mask, pooled)

    # ------------------------------------------------------------------ training

    def trainable_parameters(self, stage: Stage) -> list[nn.Parameter]:
        """Set ``requires_grad`` for a training stage and return the parameters that train.

        ``"2d"``: vision tower + visual projection; ``"lrclr"``: those and the cross-modal transformer
        (when attached); ``"adapter"``: the adapter. All add ``logit_scale`` when the temperature is
        learnable. Everything else, the text tower included, is frozen.
        """
        modules: list[nn.Module]
        if stage == "2d":
            modules = list(vision_modules(self.clip))
        elif stage == "lrclr":
            modules = [*vision_modules(self.clip), *([self.cross_modal] if self.cross_modal is not None else [])]
        elif stage == "adapter":
            modules = [self.adapter]
        else:
            raise ValueError(f"stage must be '2d', 'lrclr' or 'adapter', got {stage!r}")
        self.requires_grad_(False)
        trainable: list[nn.Parameter] = []
        for module in modules:
            module.requires_grad_(True)
            trainable.extend(module.parameters())
        if self.learnable_temperature:
            self.logit_scale.requires_grad_(True)
            trainable.append(self.logit_scale)
        return trainable

    def replace_adapter(self, adapter: AdapterSpec, temperature: float, learnable_temperature: bool) -> None:
        """A fresh adapter and τ (what the adapter stage and a sweep trial start from); the
        caller seeds torch for the adapter's initial weights."""
        self.adapter_spec = adapter
        self.adapter = SlicePoolingAdapter.from_spec(self.embedding_dim, adapter).to(self.device)
        with torch.no_grad():
            self.logit_scale.fill_(math.log(1.0 / temperature))
        self.temperature = float(temperature)
        self.learnable_temperature = bool(learnable_temperature)

    @property
    def text_frozen(self) -> bool:
        return text_tower_frozen(self.clip)

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json, clip/, tokenizer/ and adapter.safetensors (safetensors and JSON only)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.clip.save_pretrained(directory / CLIP_DIR)
        image_processor(self.pixels).save_pretrained(directory / CLIP_DIR)
        self.tokenizer.save_pretrained(directory / TOKENIZER_DIR)
        if self.preprocessing is not None:
            self.preprocessing.write(directory)
        tensors = {
            f"adapter.{name}": value.detach().cpu().contiguous() for name, value in self.adapter.state_dict().items()
        }
        tensors["logit_scale"] = self.logit_scale.detach().reshape(1).contiguous().cpu()
        save_file(
            tensors, str(directory / ADAPTER_FILE), metadata={"format": FORMAT_NAME, "version": str(FORMAT_VERSION)}
        )
        (directory / CROSS_MODAL_FILE).unlink(missing_ok=True)
        if self.cross_modal is not None:
            cross = {name: value.detach().cpu().contiguous() for name, value in self.cross_modal.state_dict().items()}
            save_file(cross, str(directory / CROSS_MODAL_FILE), metadata={"format": FORMAT_NAME})
        (directory / CONFIG_FILE).write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device | None = None) -> RadCLIP:
        """Load a model written by :meth:`save_pretrained` (safetensors only), in eval mode."""
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory}: no {CONFIG_FILE}; not a RadCLIP model saved with save_pretrained")
        config = json.loads(config_path.read_text())
        if config.get("format") != FORMAT_NAME or int(config.get("format_version", -1)) > FORMAT_VERSION:
            found = f"{config.get('format')!r} v{config.get('format_version')}"
            raise ValueError(f"{config_path}: not a RadCLIP config this version can read ({found})")
        clip = CLIPModel.from_pretrained(str(directory / CLIP_DIR), local_files_only=True)
        tokenizer = load_tokenizer(directory / TOKENIZER_DIR)
        pixels = load_pixel_normalisation(directory / CLIP_DIR)
        contract = Preprocessing.read_if_saved(directory)
        model = cls(
            clip,
            tokenizer,
            adapter=AdapterSpec(**config["adapter"]),
            image_size=config["image_size"],
            pixels=pixels,
            preprocessing=contract,
            temperature=config["temperature"],
            learnable_temperature=config["learnable_temperature"],
            slice_chunk_size=config.get("slice_chunk_size", DEFAULT_SLICE_CHUNK),
        )
        tensors = load_file(str(directory / ADAPTER_FILE))
        prefix = "adapter."
        adapter_state = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
        model.adapter.load_state_dict(adapter_state, strict=True)
        with torch.no_grad():
            model.logit_scale.copy_(tensors["logit_scale"].reshape(()))
        if config.get("cross_modal"):
            model.attach_cross_modal(CrossModalSpec(**config["cross_modal"]))
            assert model.cross_modal is not None
            model.cross_modal.load_state_dict(load_file(str(directory / CROSS_MODAL_FILE)), strict=True)
        if device is not None:
            model.to(device)
        return model.eval()
