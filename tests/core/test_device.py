"""Where models run for inference (radclip.core.device), and that the models' inference paths hold up under bf16
autocast: torch's CPU autocast runs the same ops in bfloat16 that CUDA's does, so this machine can check what a GPU
run will compute, to bf16 tolerance."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from radclip.config import Params
from radclip.core.device import DeviceUnavailable, bf16_autocast, resolve_device
from radclip.training.build import build_model

CAPTIONS = ["Normal Chest CT", "Chest CT with COVID-19", "Brain MRI with Glioma"]
BF16_COSINE = 0.99  # bfloat16 keeps 8 bits of mantissa: per-element error ~0.4 %, embeddings stay this close


def test_auto_takes_cuda_when_torch_sees_it_and_the_cpu_otherwise(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")  # asked for: the CPU even where a GPU is


def test_cuda_without_a_gpu_is_an_error_naming_the_way_out_not_a_silent_cpu_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match="device 'cuda' was asked for, but torch sees no CUDA device.*"
                                                "use device 'cpu' or 'auto'"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda, got 'gpu'"):
        resolve_device("gpu")


def test_bf16_autocast_applies_on_cuda_only_and_only_when_asked():
    with warnings.catch_warnings():  # built on a machine without CUDA, torch warns that it would disable it
        warnings.simplefilter("ignore", UserWarning)
        on_cuda = bf16_autocast("cuda", True)
    assert isinstance(on_cuda, torch.autocast)
    assert on_cuda.device == "cuda" and on_cuda.fast_dtype == torch.bfloat16
    for device, bf16 in (("cuda", False), ("cpu", True), ("cpu", False)):
        context = bf16_autocast(device, bf16)
        assert not isinstance(context, torch.autocast)
        with context:
            product = torch.ones(4, 4) @ torch.ones(4, 4)
        assert product.dtype == torch.float32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(Params(), CAPTIONS).eval()


def _cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).numpy()


def test_image_volume_and_text_embeddings_under_bf16_autocast_agree_with_fp32(model):
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(4, 64, 64, generator=generator)
    volumes = torch.randn(2, 5, 64, 64, generator=generator)
    with torch.inference_mode():
        reference = (model.encode_image(images), model.encode_volume(volumes), model.encode_text(CAPTIONS))
        model.text_cache.clear()  # the frozen text tower's cache would hand back the fp32 embeddings
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            autocast = (model.encode_image(images), model.encode_volume(volumes), model.encode_text(CAPTIONS))
        model.text_cache.clear()
    for name, fp32, bf16 in zip(("image", "volume", "text"), reference, autocast, strict=True):
        assert fp32.dtype == torch.float32, name
        assert torch.isfinite(bf16.float()).all(), name
        # bf16 actually ran (else this test would compare fp32 with itself) and stayed close.
        assert not torch.equal(fp32, bf16.float()), name
        assert _cosines(fp32, bf16).min() > BF16_COSINE, name
