"""Where a model runs for inference, and at which precision: one rule for every stage and command that runs one."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

DeviceName = Literal["auto", "cpu", "cuda"]
DEVICE_NAMES: tuple[str, ...] = ("auto", "cpu", "cuda")


class DeviceUnavailable(RuntimeError):
    """The device asked for is not there (``cuda`` on a machine or torch build without one)."""


def resolve_device(requested: str) -> torch.device:
    """``auto``: the first CUDA device when torch sees one, else the CPU; ``cuda`` without one is an error,
    not a silent fall-back (a run meant for a GPU would otherwise take hours on the CPU unnoticed)."""
    if requested not in DEVICE_NAMES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_NAMES)}, got {requested!r}")
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise DeviceUnavailable("device 'cuda' was asked for, but torch sees no CUDA device (no GPU, no driver, or a "
                           f"CPU-only torch build: torch {torch.__version__}); use device 'cpu' or 'auto'")
    return torch.device("cpu")


def bf16_autocast(device: torch.device | str, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA when ``bf16``; a no-op on the CPU, where these models' fp32 matmuls are faster
    than bf16 ones (STACK-NOTES). Callers cast outputs back to float32, so what they return is fp32 either way."""
    device = torch.device(device)
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
