"""Stage ``embed_slices``: every slice of every curated volume, encoded once by a frozen 2D encoder."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from radclip.config import Params
from radclip.core.models.radclip import RadCLIP
from radclip.data.slice_cache import INFO_FILE, encoder_fingerprint, read_cache_info, write_slice_cache
from radclip.jobs.common import (
    CACHE_FINETUNED,
    ENCODER_MODELS,
    log,
    model_dir,
    report_name,
    slice_cache_dir,
    stage_main,
    write_effective_params,
    write_metrics,
)

STAGE = "embed_slices"
PARAMS: tuple[str, ...] = ("embed",)  # how it runs; the encoder and the curated data decide the cache
METRICS = ("count", "embedding_dim", "max_slices", "seconds", "volumes_per_second")
MODEL_CACHES = "slice_cache_by_fingerprint"  # under paths.tmp: caches of models outside the pipeline


def run(params: Params, *, encoder: str = CACHE_FINETUNED, progress: bool = True) -> dict[str, Any]:
    """The pipeline's cache of one 2D encoder (``finetuned`` or ``vanilla``)."""
    out = slice_cache_dir(params, encoder)
    model = RadCLIP.from_pretrained(model_dir(params, ENCODER_MODELS[encoder]))
    info = build_cache(params, model, out, progress=progress,
                       meta={"model": str(Path(params.paths.models) / ENCODER_MODELS[encoder]), "encoder": encoder})
    report = report_name(STAGE, encoder)
    write_metrics(params, f"{report}.json", {k: info[k] for k in METRICS})
    write_effective_params(params, report, PARAMS, {"encoder": encoder})
    log.info("embed_slices (%s): %d volumes cached at %.1f volumes/s",
             encoder, info["count"], info["volumes_per_second"])
    return info


def build_cache(params: Params, model: RadCLIP, out: Path, *, meta: dict[str, Any], progress: bool = True
                ) -> dict[str, Any]:
    """``model``'s slice cache of the curated data in ``out``, in this process or (``embed.engine: ray``) on Ray
    Data actors, on the local Ray or the cluster at ``ray.address``."""
    embed = params.embed
    curated = params.resolve(params.paths.curated)
    if embed.engine == "local":
        return write_slice_cache(model, curated, out, batch_volumes=embed.batch_volumes, meta=meta, progress=progress)
    from radclip.io.ray_cluster import ray_session
    from radclip.io.ray_data import map_in_order

    device = "cuda" if embed.num_gpus > 0 else "cpu"
    with ray_session(params):
        return write_slice_cache(
            model, curated, out, batch_volumes=embed.batch_volumes, meta=meta, progress=progress, device=device,
            map_batches=functools.partial(map_in_order, concurrency=embed.concurrency, num_cpus=embed.num_cpus,
                                          num_gpus=embed.num_gpus))


def cache_for(params: Params, model: RadCLIP, *, progress: bool = True) -> Path:
    """A slice cache built by ``model``'s own 2D encoder: the pipeline's when its fingerprint matches
    (no work), else one under ``paths.tmp`` keyed by the fingerprint, built on first use."""
    fingerprint = encoder_fingerprint(model)
    for encoder in ENCODER_MODELS:
        pipeline_cache = slice_cache_dir(params, encoder)
        if ((pipeline_cache / INFO_FILE).is_file()
                and read_cache_info(pipeline_cache)["encoder_fingerprint"] == fingerprint):
            return pipeline_cache
    own = params.resolve(params.paths.tmp) / MODEL_CACHES / fingerprint[:16]
    if not (own / INFO_FILE).is_file():
        log.info("slice cache for encoder %s… (not the pipeline's): encoding every curated volume", fingerprint[:12])
        build_cache(params, model, own, progress=progress, meta={"encoder_fingerprint": fingerprint})
    return own


def main() -> None:
    stage_main(run, encoder_option=True)
