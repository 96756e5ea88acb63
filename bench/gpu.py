"""GPU checks (issue 14, item 6), one short script: run it on a machine with a CUDA GPU; it prints the figures.

Data: phantoms generated and curated here (``--volumes`` training volumes, the embedded default's volume shape and
model architecture, freshly initialised: the checks compare devices and precisions, not trained quality).

1. pretrain_2d on Ray Train with one GPU worker: nccl, bf16 autocast and gradient checkpointing, against the same
   run in fp32 without checkpointing (both ``--epochs`` epochs): seconds, pairs/s, best validation loss, and the
   ratio. Both must train (finite losses, the validation loss falls below its first epoch's).
2. embed_slices on Ray Data with one GPU actor (``embed.num_gpus: 1``, bf16) against one CPU process in fp32:
   volumes/s each and the ratio, and how far the two caches agree (cosine of every valid slice embedding).
3. CPU/GPU agreement of embeddings: curated 2D images and volumes through ``encode_image`` / ``encode_volume`` on
   the CPU (fp32) and on CUDA in fp32 and in bf16 autocast: the smallest cosine of each against the CPU.

Each agreement must reach its tolerance (fp32: ``FP32_COSINE``, bf16: ``BF16_COSINE``); the script exits 1 when one
does not, 2 when there is no GPU. ``--allow-cpu`` runs the same steps on the CPU (gloo, fp32: every ratio ≈ 1): a
check of this script, not of a GPU.

    python bench/gpu.py [--volumes 64 --epochs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's tiny params (the same phantoms the tests curate)
sys.path.insert(0, str(ROOT / "bench"))  # cluster.py's phantoms at the default's shapes

FP32_COSINE = 0.9999  # fp32 on another device: kernels differ in summation order only
BF16_COSINE = 0.99  # bfloat16 autocast: 8 bits of mantissa


def _params(base: Path, volumes: int, epochs: int, device: str):
    from cluster import default_shape_params

    gpu = device == "cuda"
    return default_shape_params(base, volumes).with_values({
        "train_2d.engine": "ray", "train_2d.epochs": epochs, "train_2d.patience": epochs, "train_2d.num_workers": 1,
        "train_2d.use_gpu": gpu, "train_2d.backend": "nccl" if gpu else "gloo", "train_2d.bf16": gpu,
        "train_2d.gradient_checkpointing": gpu, "train_2d.max_failures": 0,
        "inference.device": device, "inference.bf16": gpu})


def _timed(function):
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started


def _pairs_per_second(history: list[dict]) -> float:
    rates = [row["pairs_per_second"] for row in history[1:] or history if row.get("pairs_per_second")]
    return float(np.median(rates)) if rates else float("nan")


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    valid = (np.linalg.norm(a, axis=1) > 0) & (np.linalg.norm(b, axis=1) > 0)  # padded slices are zero in both
    a, b = a[valid], b[valid]
    return float((np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=64, help="training volumes of the phantoms")
    parser.add_argument("--epochs", type=int, default=3, help="pretrain_2d epochs per run")
    parser.add_argument("--allow-cpu", action="store_true", help="run the same steps on the CPU (script check)")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print(f"no CUDA device visible to torch {torch.__version__}: this script checks a GPU (--allow-cpu runs "
              "its steps on the CPU)")
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ.setdefault("RADCLIP_PHI_SALT", "radclip-embedded-default")  # phantom data, as the tests curate it
    import radclip  # noqa: F401  (offline switches for this process and its children)
    from radclip.core.device import bf16_autocast
    from radclip.data.curate import curate
    from radclip.data.phantoms import generate
    from radclip.data.shards import CuratedDataset
    from radclip.data.slice_cache import SliceCacheDataset
    from radclip.jobs import init_model, pretrain_2d
    from radclip.jobs._inference import load_model
    from radclip.jobs.common import MODEL_INIT, model_dir
    from radclip.jobs.embed_slices import build_cache

    scratch = Path(tempfile.mkdtemp(prefix="rg-", dir="/tmp"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"  # the project's store stays clean
    failures: list[str] = []
    try:
        params = _params(scratch / "project", args.volumes, args.epochs, device)
        generate(params)
        curate(params, progress=False)
        init_model.run(params)
        name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (--allow-cpu)"
        print(f"device: {name}; torch {torch.__version__}")

        # 1. pretrain_2d: one GPU worker, nccl + bf16 + gradient checkpointing, against fp32 without checkpointing
        fast = params
        plain = params.with_values({"train_2d.bf16": False, "train_2d.gradient_checkpointing": False})
        runs = {}
        for label, run_params in (("nccl+bf16+checkpointing", fast), ("fp32", plain)):
            result = pretrain_2d.run(run_params, progress=False)
            losses = [row["val_loss"] for row in result.history]
            runs[label] = _pairs_per_second(result.history)
            print(f"pretrain_2d {label}: {len(result.history)} epochs in {result.seconds:.1f} s, "
                  f"{runs[label]:.0f} pairs/s, validation loss {losses[0]:.4f} -> best {result.best_val_loss:.4f}")
            if not (np.isfinite(losses).all() and result.best_val_loss < losses[0]):
                failures.append(f"pretrain_2d {label} did not train (validation losses {losses})")
        ratio = runs["nccl+bf16+checkpointing"] / runs["fp32"]
        print(f"pretrain_2d pairs/s, nccl+bf16+checkpointing / fp32 = {ratio:.2f}×")

        # 2. embed_slices: Ray Data with one GPU actor (bf16) against one CPU process (fp32)
        start = model_dir(params, MODEL_INIT)
        cpu_params = params.with_values({"inference.device": "cpu", "embed.engine": "local"})
        gpu_params = params.with_values({"embed.engine": "ray", "embed.concurrency": 1,
                                         "embed.num_gpus": 1.0 if device == "cuda" else 0.0})
        cpu_info, cpu_seconds = _timed(lambda: build_cache(cpu_params, load_model(cpu_params, start),
                                                           scratch / "cache-cpu", meta={}, progress=False))
        gpu_info, gpu_seconds = _timed(lambda: build_cache(gpu_params, load_model(gpu_params, start),
                                                           scratch / "cache-gpu", meta={}, progress=False))
        cpu_cache, gpu_cache = SliceCacheDataset(scratch / "cache-cpu"), SliceCacheDataset(scratch / "cache-gpu")
        cosine = min(_min_cosine(cpu_cache[i][0].numpy(), gpu_cache[i][0].numpy()) for i in range(len(cpu_cache)))
        volumes, precision = cpu_info["count"], "bf16" if device == "cuda" else "fp32"
        print(f"embed_slices, {volumes} volumes: one CPU process (fp32) {volumes / cpu_seconds:.1f} volumes/s, "
              f"Ray Data 1 {device} actor ({precision}) "
              f"{volumes / gpu_seconds:.1f} volumes/s (Ray start-up included): ratio {cpu_seconds / gpu_seconds:.2f}×; "
              f"smallest slice cosine {cosine:.5f} (tolerance {BF16_COSINE})")
        if gpu_info["count"] != volumes or cosine < BF16_COSINE:
            failures.append(f"embed_slices on {device}: {gpu_info['count']} volumes, smallest cosine {cosine:.5f}")

        # 3. CPU/GPU agreement of embeddings: images and volumes, fp32 and bf16 on the device, against the CPU
        curated = CuratedDataset(params.resolve(params.paths.curated), query="kind == '2d'")
        images = np.stack([curated.array(i) for i in range(min(64, len(curated)))])
        volume_rows = CuratedDataset(params.resolve(params.paths.curated), query="kind == '3d' and plane == 'axial'")
        volume_batch = np.stack([volume_rows.array(i) for i in range(min(4, len(volume_rows)))])
        on_cpu = load_model(cpu_params, start)
        on_device = load_model(params, start)
        with torch.inference_mode():
            reference = (on_cpu.encode_image(images).numpy(), on_cpu.encode_volume(volume_batch).numpy())
            for precision, tolerance in (("fp32", FP32_COSINE), ("bf16", BF16_COSINE)):
                with bf16_autocast(device, precision == "bf16"):  # the stages' autocast: a no-op on the CPU
                    encoded = (on_device.encode_image(images).float().cpu().numpy(),
                               on_device.encode_volume(volume_batch).float().cpu().numpy())
                for kind, ref, got in zip(("images", "volumes"), reference, encoded, strict=True):
                    value = _min_cosine(ref, got)
                    print(f"{kind} on {device} {precision} vs CPU fp32: smallest cosine {value:.6f} "
                          f"({len(ref)} {kind}; tolerance {tolerance})")
                    if value < tolerance:
                        failures.append(f"{kind} on {device} {precision}: smallest cosine {value:.6f} < {tolerance}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for failure in failures:
        print(f"FAIL {failure}")
    print("all GPU checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
