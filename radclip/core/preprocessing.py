"""The preprocessing contract: how a loaded image or volume becomes what the model sees.

One :class:`Preprocessing` owns every rule that decides an input's pixels, so curation,
the slice cache, evaluation, serving and the CLI cannot disagree:

* **the CT window** (:meth:`Preprocessing.window`): the collection's window, else its
  ``"{region} {modality}"`` window, else the file's own (CT only), else none (robust
  0.5/99.5 percentile range) — the same for DICOM and NIfTI. An input served without a
  collection is looked up by region/modality across all collections;
* **sizes**: the curated 2D size and the per-plane volume shapes;
* **the intensity/display mapping** (:func:`normalise_image`, :func:`normalise_volume`):
  2D to uint8 in display range; volumes z-scored float16 with their display range;
* **pixel normalisation** (:class:`PixelNormalisation`): mean, std and resize method of
  the checkpoint's ``CLIPImageProcessor`` (saved with the model), applied by the model
  to curated arrays.

Curation writes the contract next to the curated data (``preprocessing.json``); every
saved model carries a copy with its pixel normalisation filled in, and serving reads it
from the model, never from params.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from radclip.core.records import InputError, LoadedImage

Window = tuple[float, float]  # (center, width)

PREPROCESSING_FILE = "preprocessing.json"
CONTRACT_FORMAT = "radclip-preprocessing"
CONTRACT_VERSION = 1
# Robust intensity range of images without a window, and of volumes without a recorded display range.
DISPLAY_PERCENTILES = (0.5, 99.5)
# PIL resample codes (what CLIPImageProcessor stores) → torch.nn.functional.interpolate modes.
RESAMPLE_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}


class ContractError(ValueError):
    """A preprocessing contract that is missing, malformed or ambiguous."""


# --------------------------------------------------------------------------- pixel normalisation


@dataclass(frozen=True)
class PixelNormalisation:
    """What the vision tower expects of [0, 1] grey pixels: size, resize method, per-channel mean/std."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: str = "bilinear"  # a torch interpolate mode

    @classmethod
    def from_image_processor(cls, processor: Any, source: str = "image processor") -> PixelNormalisation:
        """From a ``transformers`` ``CLIPImageProcessor`` (its saved ``preprocessor_config.json``)."""
        size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size

        def field(name: str) -> Any:  # a dict in older transformers, a SizeDict in 5.x
            return size.get(name) if isinstance(size, Mapping) else getattr(size, name, None)

        edge = field("height") or field("shortest_edge")
        if not edge:
            raise ContractError(f"{source}: no image size in {size!r}")
        resample = int(getattr(processor, "resample", 3))
        if resample not in RESAMPLE_MODES:
            raise ContractError(f"{source}: resample {resample} is not one of {sorted(RESAMPLE_MODES)} (PIL codes)")
        mean, std = tuple(float(v) for v in processor.image_mean), tuple(float(v) for v in processor.image_std)
        if len(mean) != 3 or len(std) != 3:
            raise ContractError(f"{source}: image_mean/image_std must have 3 channels, got {mean} / {std}")
        return cls(size=int(edge), mean=mean, std=std, resample=RESAMPLE_MODES[resample])  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std), "resample": self.resample}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PixelNormalisation:
        return cls(size=int(data["size"]), mean=tuple(data["mean"]), std=tuple(data["std"]),  # type: ignore[arg-type]
                   resample=str(data["resample"]))

    def apply(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 1|3, H, W)`` floats in [0, 1] → the vision tower's normalised ``(B, 3, size, size)``."""
        if pixels.shape[-2:] != (self.size, self.size):
            # antialias: curated 64 px → 224 px is an upsample, but downsampling must not alias either
            pixels = F.interpolate(pixels, size=(self.size, self.size), mode=self.resample,
                                   align_corners=False if self.resample != "nearest" else None,
                                   antialias=self.resample in ("bilinear", "bicubic"))
        pixels = pixels.expand(-1, 3, -1, -1)  # grey → RGB: CLIP weights expect three channels
        mean = torch.tensor(self.mean, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
        return (pixels - mean) / std


# --------------------------------------------------------------------------- intensity mapping


def _window_bounds(window: Window) -> tuple[float, float]:
    center, width = window
    return center - width / 2, center + width / 2


def to_display_range(pixels: np.ndarray, window: Window | None, eight_bit: bool) -> np.ndarray:
    """2D intensities to [0, 1]: a CT window when given, 8-bit images as they are, else robust min-max."""
    if window is not None:
        low, high = _window_bounds(window)
    elif eight_bit:
        low, high = 0.0, 255.0
    else:
        low, high = np.percentile(pixels, DISPLAY_PERCENTILES)
        if high <= low:
            high = low + 1.0
    return np.clip((pixels - low) / (high - low), 0.0, 1.0)


def normalise_image(pixels: np.ndarray, size: int, window: Window | None, eight_bit: bool = False) -> np.ndarray:
    """2D → uint8 (size, size): windowed/scaled, resized with anti-aliasing."""
    scaled = to_display_range(pixels.astype(np.float32), window, eight_bit)
    tensor = torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))[None, None]
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return np.clip(np.rint(resized[0, 0].numpy() * 255.0), 0, 255).astype(np.uint8)


def resize_box(box: tuple[float, float, float, float], source_shape: tuple[int, ...], size: int
               ) -> tuple[float, float, float, float]:
    """A box ``(x, y, w, h)`` in a 2D source image's pixels (x along columns, y along rows) → the same
    region in the ``(size, size)`` image :func:`normalise_image` makes of it: that resize stretches
    each axis to ``size`` on its own, so x and w scale by size / width, y and h by size / height."""
    height, width = source_shape[-2:]
    x, y, w, h = box
    return x * size / width, y * size / height, w * size / width, h * size / height


def normalise_volume(
    pixels: np.ndarray, slices: int, size: int, window: Window | None, source: str
) -> tuple[np.ndarray, tuple[float, float]]:
    """3D → float16 (slices, size, size): windowed (CT), z-scored, resampled per plane shape.

    Also returns the volume's display range in its z-scored units: the CT window's
    bounds when windowed, else its 0.5/99.5 percentiles, the same rule
    :func:`to_display_range` applies to a 2D image. The model maps slices to [0, 1]
    by it, so a CT slice looks to the 2D encoder like a 2D CT image does.
    """
    volume = pixels.astype(np.float32)
    if window is not None:
        low, high = _window_bounds(window)
        volume = np.clip(volume, low, high)
    else:
        low, high = (float(v) for v in np.percentile(volume, DISPLAY_PERCENTILES))
    mean, std = float(volume.mean()), float(volume.std())
    if not std > 1e-6:
        raise InputError(source, "volume has constant intensity (cannot be z-scored)")
    volume = (volume - mean) / std
    tensor = torch.from_numpy(np.ascontiguousarray(volume))[None, None]
    resized = F.interpolate(tensor, size=(slices, size, size), mode="trilinear", align_corners=False)
    display = ((low - mean) / std, (max(high, low + 1e-6) - mean) / std)
    return resized[0, 0].numpy().astype(np.float16), display


def check_pixels(image: LoadedImage, source: str, min_pixels: int) -> None:
    """Dimensions, size and finite values of a loaded image; InputError naming ``source`` otherwise."""
    pixels = image.pixels
    expected_ndim = 2 if image.kind == "2d" else 3
    if pixels.ndim != expected_ndim:
        raise InputError(source, f"{pixels.ndim}D array where a {image.kind.upper()} image was expected")
    if pixels.size == 0:
        raise InputError(source, "empty image (zero pixels)")
    in_plane = pixels.shape[-2:]
    if min(in_plane) < min_pixels:
        raise InputError(
            source, f"image too small ({in_plane[0]}x{in_plane[1]} pixels, minimum {min_pixels} per side)"
        )
    if not np.isfinite(pixels).all():
        raise InputError(source, "pixel values contain NaN or Inf")


# --------------------------------------------------------------------------- the contract


@dataclass(frozen=True)
class Prepared:
    """One input as curation stores it: uint8 ``(H, W)``, or z-scored float16 ``(S, H, W)`` with its
    display range (the z-scored values that map to 0 and 1) and plane."""

    kind: str
    array: np.ndarray
    plane: str = ""
    display_range: tuple[float, float] = (float("nan"), float("nan"))


def _window_or_none(value: Any) -> Window | None:
    return None if value is None else (float(value[0]), float(value[1]))


@dataclass(frozen=True)
class Preprocessing:
    """The rules that turn a loaded image into model input (see the module docstring)."""

    image_size: int
    volume_shapes: Mapping[str, tuple[int, int]]  # plane → (slices, in-plane size)
    min_pixels: int
    collection_windows: Mapping[str, Window | None] = field(default_factory=dict)  # collection → its window
    collection_region_windows: Mapping[str, Mapping[str, Window]] = field(default_factory=dict)
    # "{region} {modality}" → window over all collections: for inputs that arrive without a collection.
    region_windows: Mapping[str, Window] = field(default_factory=dict)
    pixels: PixelNormalisation | None = None  # the model's; None in the curated copy

    @classmethod
    def build(
        cls,
        *,
        image_size: int,
        volume_shapes: Mapping[str, tuple[int, int]],
        min_pixels: int,
        collections: Mapping[str, tuple[str, str, Window | None, Mapping[str, Window]]],
    ) -> Preprocessing:
        """From per-collection ``(region, modality, window, windows by "{region} {modality}")``.

        The cross-collection table takes every collection's ``windows`` and, for a collection
        with a window and one region/modality, that pair; two different windows for one pair
        are ambiguous for a served input and refused, naming the collections.
        """
        table: dict[str, Window] = {}
        origin: dict[str, str] = {}

        def add(key: str, window: Window, collection: str) -> None:
            if key in table and table[key] != window:
                raise ContractError(
                    f"collections {origin[key]!r} and {collection!r} configure different CT windows for {key!r} "
                    f"({list(table[key])} vs {list(window)}): an input served as {key!r} would be ambiguous"
                )
            table.setdefault(key, window)
            origin.setdefault(key, collection)

        for name, (region, modality, window, windows) in collections.items():
            for key, named in windows.items():
                add(key, (float(named[0]), float(named[1])), name)
            if window is not None and region and modality:
                add(f"{region} {modality}", (float(window[0]), float(window[1])), name)
        return cls(
            image_size=int(image_size),
            volume_shapes={plane: (int(s), int(z)) for plane, (s, z) in volume_shapes.items()},
            min_pixels=int(min_pixels),
            collection_windows={name: _window_or_none(spec[2]) for name, spec in collections.items()},
            collection_region_windows={name: {k: (float(w[0]), float(w[1])) for k, w in spec[3].items()}
                                       for name, spec in collections.items()},
            region_windows=table,
        )

    def with_pixels(self, pixels: PixelNormalisation) -> Preprocessing:
        return replace(self, pixels=pixels)

    # ------------------------------------------------------------------ the rules

    def window(
        self,
        image: LoadedImage,
        *,
        collection: str | None = None,
        region: str = "",
        modality: str = "",
    ) -> Window | None:
        """The CT window of one input: collection > region/modality > the file's own (CT) > none."""
        key = f"{region} {modality}"
        if collection is not None:
            if collection not in self.collection_windows:
                known = ", ".join(sorted(self.collection_windows)) or "none"
                raise ContractError(f"unknown collection {collection!r} (the contract knows: {known})")
            own = self.collection_windows[collection]
            if own is not None:
                return own
            named = self.collection_region_windows.get(collection, {}).get(key)
        else:
            named = self.region_windows.get(key)
        if named is not None:
            return named
        return image.window if image.dicom_modality == "CT" else None

    def prepare(
        self,
        image: LoadedImage,
        source: str,
        *,
        collection: str | None = None,
        region: str = "",
        modality: str = "",
    ) -> Prepared:
        """Check and normalise one loaded image exactly as curation stores it.

        2D → uint8 (PNG/JPEG are display values already, so no window); 3D → z-scored
        float16 shaped per ``volume_shapes[plane]`` with its display range.
        """
        check_pixels(image, source, self.min_pixels)
        window = self.window(image, collection=collection, region=region, modality=modality)
        if image.kind == "2d":
            eight_bit = image.extra.get("bit_depth") == 8
            array = normalise_image(image.pixels, self.image_size, None if eight_bit else window, eight_bit)
            return Prepared("2d", array)
        plane = image.plane or "axial"
        if plane not in self.volume_shapes:
            raise InputError(
                source, f"no curated volume shape for plane {plane!r} (known: {sorted(self.volume_shapes)})"
            )
        slices, size = self.volume_shapes[plane]
        array, display = normalise_volume(image.pixels, slices, size, window, source)
        return Prepared("3d", array, plane, (float(display[0]), float(display[1])))

    def map_box(self, box: tuple[float, float, float, float], source_shape: tuple[int, ...]
                ) -> tuple[float, float, float, float]:
        """A lesion box in a 2D source image's pixels → curated pixels (see :func:`resize_box`)."""
        return resize_box(box, source_shape, self.image_size)

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CONTRACT_FORMAT,
            "format_version": CONTRACT_VERSION,
            "image_size": self.image_size,
            "volume_shapes": {plane: {"slices": s, "size": z} for plane, (s, z) in sorted(self.volume_shapes.items())},
            "min_pixels": self.min_pixels,
            "collection_windows": {k: None if w is None else list(w)
                                   for k, w in sorted(self.collection_windows.items())},
            "collection_region_windows": {k: {n: list(w) for n, w in sorted(v.items())}
                                          for k, v in sorted(self.collection_region_windows.items())},
            "region_windows": {k: list(w) for k, w in sorted(self.region_windows.items())},
            "display_percentiles": list(DISPLAY_PERCENTILES),
            "pixels": None if self.pixels is None else self.pixels.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "preprocessing") -> Preprocessing:
        if data.get("format") != CONTRACT_FORMAT or int(data.get("format_version", -1)) > CONTRACT_VERSION:
            raise ContractError(f"{source}: not a preprocessing contract this version can read "
                                f"({data.get('format')!r} v{data.get('format_version')})")
        if list(data.get("display_percentiles", DISPLAY_PERCENTILES)) != list(DISPLAY_PERCENTILES):
            raise ContractError(f"{source}: display percentiles {data['display_percentiles']} differ from this "
                                f"version's {list(DISPLAY_PERCENTILES)}")
        try:
            return cls(
                image_size=int(data["image_size"]),
                volume_shapes={p: (int(s["slices"]), int(s["size"])) for p, s in data["volume_shapes"].items()},
                min_pixels=int(data["min_pixels"]),
                collection_windows={k: _window_or_none(w) for k, w in data["collection_windows"].items()},
                collection_region_windows={k: {n: (float(w[0]), float(w[1])) for n, w in v.items()}
                                           for k, v in data["collection_region_windows"].items()},
                region_windows={k: (float(w[0]), float(w[1])) for k, w in data["region_windows"].items()},
                pixels=None if data.get("pixels") is None else PixelNormalisation.from_dict(data["pixels"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ContractError(
                f"{source}: malformed preprocessing contract ({type(error).__name__}: {error})"
            ) from None

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / PREPROCESSING_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, directory: str | Path) -> Preprocessing:
        """The contract saved in ``directory`` (curated data or a model)."""
        path = Path(directory) / PREPROCESSING_FILE
        if not path.is_file():
            raise ContractError(f"{path}: no preprocessing contract (curate writes it next to the curated data; "
                                "every saved model carries a copy)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ContractError(f"{path}: not valid JSON ({error})") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def read_if_saved(cls, directory: str | Path) -> Preprocessing | None:
        """The contract saved in ``directory``, or None when none was saved there."""
        return cls.read(directory) if (Path(directory) / PREPROCESSING_FILE).is_file() else None
