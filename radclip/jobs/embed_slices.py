"""Stage ``embed_slices``: every slice of every curated volume, encoded once by a frozen 2D encoder."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from radclip.config import Params, ParamsError
from radclip.core.models.radclip import RadCLIP
from radclip.data.slice_cache import (
    INFO_FILE,
    BatchEngine,
    encoder_fingerprint,
    map_in_process,
    read_cache_info,
    write_slice_cache,
)
from radclip.jobs._inference import inference_device, load_model
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
PARAMS: tuple[str, ...] = ("embed", "inference")  # how it runs; the encoder and the curated data decide the cache
METRICS = ("count", "embedding_dim", "max_slices", "seconds", "volumes_per_second")
MODEL_CACHES = "slice_cache_by_fingerprint"  # under paths.tmp: caches of models outside the pipeline


def run(params: Params, *, encoder: str = CACHE_FINETUNED, progress: bool = True) -> dict[str, Any]:
    """The pipeline's cache of one 2D encoder (``finetuned`` or ``vanilla``)."""
    out = slice_cache_dir(params, encoder)
    model = load_model(params, model_dir(params, ENCODER_MODELS[encoder]))
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
    """``model``'s slice cache of the curated data in ``out``, built by the ``embed.engine`` (this process on
    ``inference.device``, or Ray Data actors, on CUDA when they hold GPUs); bf16 autocast on CUDA when
    ``inference.bf16``."""
    curated = params.resolve(params.paths.curated)
    with batch_engine(params) as engine:
        return write_slice_cache(model, curated, out, batch_volumes=params.embed.batch_volumes, meta=meta,
                                 progress=progress, engine=engine)


def actor_device(params: Params) -> str:
    """The device of Ray Data encoder actors: Ray hands them GPUs by ``embed.num_gpus``, so ``inference.device``
    can only agree with it (``auto`` follows it)."""
    device, gpus = params.inference.device, params.embed.num_gpus
    if device == "cuda" and gpus == 0:
        raise ParamsError("inference.device is cuda but embed.num_gpus is 0: Ray gives the encoder actors no GPU "
                          "(set embed.num_gpus, e.g. 1.0)")
    if device == "cpu" and gpus > 0:
        raise ParamsError(f"inference.device is cpu but embed.num_gpus is {gpus}: the actors would hold GPUs they "
                          "never use (set embed.num_gpus: 0.0)")
    return "cuda" if gpus > 0 else "cpu"


@contextlib.contextmanager
def batch_engine(params: Params) -> Iterator[BatchEngine]:
    """``embed.engine``: ``local``, one encoder in this process on ``inference.device``; ``ray``, Ray Data actors
    (``embed.concurrency``, ``num_cpus``, ``num_gpus``) on the local Ray or the cluster at ``ray.address``, for the
    block."""
    embed, bf16 = params.embed, params.inference.bf16
    if embed.engine == "local":
        yield BatchEngine(map_in_process, str(inference_device(params)), bf16, on_ray=False)
        return
    from radclip.io.ray_cluster import ray_session
    from radclip.io.ray_data import map_in_order

    device = actor_device(params)
    with ray_session(params):
        yield BatchEngine(functools.partial(map_in_order, concurrency=embed.concurrency, num_cpus=embed.num_cpus,
                                            num_gpus=embed.num_gpus), device, bf16, on_ray=True)


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
