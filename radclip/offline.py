"""Nothing this project runs may reach beyond loopback: set every library's offline switch.

Applied when ``radclip`` is imported (so every stage, test and Ray worker that imports
it) and exported by the Makefile for tools that start before Python code of ours
runs (``dvc`` itself). Values already set by the user win, except that nothing here
turns a switch back on.
"""

from __future__ import annotations

import os

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",  # transformers/huggingface_hub: no hub calls, fail fast
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DVC_NO_ANALYTICS": "1",  # dvc: no analytics daemon
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",  # ray: no usage report
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
    "GX_ANALYTICS_ENABLED": "false",
}


def apply() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
