"""Metrics files under ``paths.reports`` that DVC reads (``dvc metrics show``, ``dvc plots show``)."""

from __future__ import annotations

import json
from pathlib import Path

from radclip.config import Params


def write_metrics(params: Params, name: str, data: dict) -> Path:
    """``<reports>/<name>`` as sorted, indented JSON (stable bytes for identical numbers)."""
    path = params.resolve(params.paths.reports) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path
