"""``radclip serve``: a registered model version, by alias, behind MLflow's scoring server.

Not a DVC stage: it runs until stopped. It binds 127.0.0.1 unless told otherwise; clients send
images as base64 bytes (``content``), and server-side paths are read only under ``path_root``
(see :mod:`radclip.io.mlflow_pyfunc` for the request format).
"""

from __future__ import annotations

from pathlib import Path

from radclip.config import Params
from radclip.core.device import resolve_device
from radclip.io import mlflow_pyfunc
from radclip.io import mlflow_registry as registry
from radclip.io import mlflow_tracking as tracking
from radclip.jobs.common import log
from radclip.serving import DEFAULT_MAX_ROWS, DEFAULT_MAX_UPLOAD_BYTES, ServingPolicy

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 5001
DEFAULT_ALIAS = "champion"


def model_uri(params: Params, alias: str = DEFAULT_ALIAS) -> str:
    """``models:/<registry.model_name>@<alias>``, after checking that the alias names a version."""
    version = registry.alias_version(params, alias)
    uri = f"models:/{params.registry.model_name}@{alias}"
    log.info("serving %s (version %d)", uri, version)
    return uri


def run(params: Params, *, model: str | None = None, alias: str = DEFAULT_ALIAS, host: str = LOOPBACK,
        port: int = DEFAULT_PORT, workers: int = 1, path_root: Path | None = None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_rows: int = DEFAULT_MAX_ROWS) -> int:
    """Serve ``model`` (an MLflow model URI) or the registered model's ``alias`` until stopped; the server's
    exit status."""
    tracking.configure(params)  # the project's store: models:/ resolves in its registry
    policy = ServingPolicy(path_root=path_root.resolve() if path_root else None,
                           max_upload_bytes=max_upload_bytes, max_rows=max_rows,
                           device=params.inference.device, bf16=params.inference.bf16)
    resolve_device(policy.device)  # a missing GPU fails here, not in the server's worker after start-up
    uri = model or model_uri(params, alias)
    log.info("scoring server on http://%s:%d/invocations; server-side paths: %s; uploads up to %d bytes, "
             "%d rows per request; model on %s", host, port, policy.path_root or "refused", max_upload_bytes, max_rows,
             policy.device)
    if host != LOOPBACK:
        log.warning("binding %s: the server is reachable from other machines and has no authentication", host)
    return mlflow_pyfunc.serve(uri, policy, host=host, port=port, workers=workers)
