"""What the jobs that run frozen models share: ``inference.device`` and ``inference.bf16`` applied."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from radclip.config import Params
from radclip.core.device import bf16_autocast, resolve_device
from radclip.core.models.radclip import RadCLIP


def inference_device(params: Params) -> torch.device:
    """``inference.device`` resolved: where the stage's frozen models run."""
    return resolve_device(params.inference.device)


def load_model(params: Params, location: str | Path) -> RadCLIP:
    """A saved RadCLIP on ``inference.device``, in eval mode."""
    return RadCLIP.from_pretrained(location, device=inference_device(params)).eval()


def inference_precision(params: Params) -> contextlib.AbstractContextManager:
    """bf16 autocast around a stage's model calls when ``inference.bf16`` and the models run on CUDA."""
    return bf16_autocast(inference_device(params), params.inference.bf16)
