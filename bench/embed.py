"""Slice-embedding benchmark: how close ``embed_slices`` runs to the machine's matmul peak, and how its cost and
memory grow with the number of volumes.

(a) MFU of slice embedding. The embedded default's 2D encoder (``models/radclip-2d`` when ``make run`` has built
    it, else the same architecture freshly initialised: the FLOPs are the same) encodes phantom volumes
    (32 slices × 64 × 64, z-scored float16) written as a curated dataset for this run. Rows, timed interleaved
    (rotating order, medians):
      - ``write_slice_cache`` end to end (memory-mapped reads, intensity mapping, the vision tower, the float16
        shards, the index) at ``embed.batch_volumes`` from params and at larger batches;
      - the vision tower alone on pixel values already prepared (``encode_pixels`` under ``inference_mode``),
        the ceiling of what the path could reach.
    FLOPs are analytic, forward only, per slice: patch embedding 2·N·3p²·d plus per layer 2·T·(4d² + 2·d·ff) +
    2·2·T²·d (T = N + 1 tokens), as bench/train.py counts them (÷ 3: no backward). Peak = median time of a
    2048 × 2048 fp32 ``torch.mm`` sampled between the rows; MFU = achieved / peak. Goal (issue 16): ≥ 60 %.
    Every batch size's cache is compared with the default's: the embeddings must agree within fp32 round-off
    (printed: the largest difference, in float16 units of the stored embeddings).

(b) Scaling. ``write_slice_cache`` and one adapter epoch on its cache at N, 4N and 16N volumes, in a fresh process
    per size (the phantom volumes are written by another one, so their arrays never enter it): seconds, seconds per
    volume and each phase's peak memory, sampled from /proc/self/status: RSS, which counts the memory-mapped shard
    pages the kernel may drop at will, and RssAnon, the process's own allocations. Own memory must stay flat (the
    cache is written shard by shard from batches, the adapter reads a batch at a time), printed as a ratio to N.
    Curation's N-vs-10N figures come from ``bench/curate.py``.

    python bench/embed.py [--volumes 192] [--reps 5] [--scale-n 64] [--skip a|b]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from train import (  # noqa: E402
    Peak,
    Vision,
    _interleaved,
    _median,
    _phantom_volumes,
    _write_curated,
    vision_flops_per_image,
)

SLICES, SIZE = 32, 64


def forward_flops_per_slice(vision: Vision) -> float:
    """Analytic forward FLOPs of the vision tower for one slice: bench/train.py's count without the backward."""
    return vision_flops_per_image(vision) / 3.0


def _encoder():
    """The embedded default's fine-tuned 2D encoder if built, else its architecture freshly initialised."""
    from radclip.config import Params

    params = Params.model_validate({"model": {"adapter": {"max_slices": SLICES}}, "curate": {"image_size": SIZE}})
    trained = ROOT / "models" / "radclip-2d"
    if (trained / "config.json").exists():
        from radclip.core.models.radclip import RadCLIP

        try:
            return RadCLIP.from_pretrained(trained, device="cpu"), f"{trained.relative_to(ROOT)}"
        except Exception as error:  # a stale or foreign checkpoint: the architecture is what is measured
            print(f"  ({trained}: not loadable ({error}); using a fresh encoder of the same shape)")
    from radclip.training.build import build_model

    return build_model(params, ["a chest x-ray"]), "fresh (params.yaml's model)"


def _vision_of(model) -> Vision:
    config = model.clip.config.vision_config
    return Vision(config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
                  config.patch_size, config.image_size)


def _write_volumes(curated: Path, count: int) -> list[str]:
    """Phantom volumes as a curated dataset, with each volume's display range recorded as curation records it
    (its DISPLAY_PERCENTILES): without one the encoder sorts every volume for its percentiles, which curated data
    never asks of it."""
    import pandas as pd

    from radclip.core.preprocessing import DISPLAY_PERCENTILES

    volumes = _phantom_volumes(count, SLICES, SIZE)
    captions = _write_curated(curated, volumes)
    manifest = pd.read_parquet(curated / "manifest.parquet")
    bounds = np.array([np.percentile(volume.astype(np.float32), DISPLAY_PERCENTILES) for volume in volumes])
    manifest["display_low"], manifest["display_high"] = bounds[:, 0], bounds[:, 1]
    manifest.to_parquet(curated / "manifest.parquet", index=False)
    return captions


def _display_ranges(curated: Path) -> np.ndarray:
    import pandas as pd

    return pd.read_parquet(curated / "manifest.parquet")[["display_low", "display_high"]].to_numpy(np.float32)


def _read_cache(cache_dir: Path) -> np.ndarray:
    return np.concatenate([np.load(path) for path in sorted(cache_dir.glob("embeddings-*.npy"))]).astype(np.float32)


def bench_mfu(work: Path, volumes: int, reps: int) -> dict:
    from radclip.config import Params
    from radclip.data.slice_cache import write_slice_cache

    torch.manual_seed(0)
    model, source = _encoder()
    model.eval()
    vision = _vision_of(model)
    curated = work / "curated"
    _write_volumes(curated, volumes)
    default_batch = Params().embed.batch_volumes
    batch_sizes = sorted({default_batch, 32, 64})
    slices = volumes * SLICES
    steps = {f"cache, batch_volumes {b}": (lambda b=b: write_slice_cache(model, curated, work / f"cache-{b}",
                                                                          batch_volumes=b, progress=False))
             for b in batch_sizes}
    # The tower alone: pixel values prepared once (the same preprocessing as the cache path), chunk by chunk.
    volumes_array = torch.from_numpy(np.load(curated / "shards" / "3d-axial-00000.npy"))
    with torch.inference_mode():
        pixels = model.preprocess_slices(volumes_array[:64], _display_ranges(curated)[:64]).contiguous()
    chunk = model.slice_chunk_size

    def tower_only() -> None:
        with torch.inference_mode():
            for start in range(0, len(pixels), chunk):
                model.encode_pixels(pixels[start:start + chunk])

    tower_slices = len(pixels)
    steps[f"vision tower only, chunk {chunk}"] = tower_only
    for step in steps.values():
        step()  # warm-up (and the caches compared below)
    peak = Peak()
    times = _interleaved(steps, reps, peak)
    flops = forward_flops_per_slice(vision)
    reference = _read_cache(work / f"cache-{default_batch}")
    rows = []
    for name, values in times.items():
        count = tower_slices if name.startswith("vision") else slices
        seconds = _median(values)
        achieved = flops * count / seconds / 1e9
        row = {"row": name, "seconds": seconds, "slices_per_second": count / seconds, "gflops": achieved,
               "mfu": achieved / peak.gflops()}
        if name.startswith("cache"):
            batch = int(name.rsplit(" ", 1)[1])
            row["max_difference"] = float(np.abs(_read_cache(work / f"cache-{batch}") - reference).max())
        rows.append(row)
    return {"encoder": source, "vision": vision.describe(), "volumes": volumes, "slices": slices,
            "flops_per_slice": flops, "peak_gflops": peak.gflops(), "default_batch": default_batch, "rows": rows}


# --------------------------------------------------------------------------- (b) scaling, one size per process


class MemorySampler:
    """Peak resident memory of this process while a phase runs, sampled every 10 ms from /proc/self/status:
    RSS (file-backed pages of the memory-mapped shards included: the kernel may drop those at will) and
    RssAnon (the process's own allocations, what must fit)."""

    def __init__(self) -> None:
        self.peaks = {"VmRSS": 0.0, "RssAnon": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in self.peaks:
                self.peaks[key] = max(self.peaks[key], int(value.split()[0]) / 1024)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self._read()

    def __enter__(self) -> MemorySampler:
        self._read()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read()


def _scale_data(work: Path, volumes: int) -> list[str]:
    """Runs in a process of its own: the curated phantom volumes of one size (their arrays never enter the
    measuring process)."""
    return _write_volumes(work / "curated", volumes)


def _scale_child(work: Path) -> dict:
    """Runs in a fresh process: the slice cache of ``work/curated``, then one adapter epoch on it; seconds and
    peak memory of each phase."""
    from train import AdapterEpoch

    from radclip.config import Params
    from radclip.data.slice_cache import SliceCacheDataset, write_slice_cache
    from radclip.training.build import build_model

    curated = work / "curated"
    captions = json.loads((work / "captions.json").read_text())
    params = Params.model_validate({"model": {"adapter": {"max_slices": SLICES}}, "curate": {"image_size": SIZE}})
    torch.manual_seed(0)
    model = build_model(params, sorted(set(captions)))
    with MemorySampler() as embed_memory:
        started = time.perf_counter()
        info = write_slice_cache(model, curated, work / "cache", progress=False)
        embed_seconds = time.perf_counter() - started
    cached = SliceCacheDataset(work / "cache", query="role == 'train' and split == 'train'")
    model.trainable_parameters("adapter")
    epoch = AdapterEpoch(model, cached, 16, reencode=False)
    with torch.no_grad():
        epoch.text_table = model.encode_text(cached.captions).detach()
    with MemorySampler() as adapter_memory:
        started = time.perf_counter()
        epoch()
        adapter_seconds = time.perf_counter() - started
    return {"volumes": int(info["count"]), "embed_seconds": embed_seconds, "adapter_seconds": adapter_seconds,
            "embed_rss_mib": embed_memory.peaks["VmRSS"], "embed_anon_mib": embed_memory.peaks["RssAnon"],
            "adapter_rss_mib": adapter_memory.peaks["VmRSS"], "adapter_anon_mib": adapter_memory.peaks["RssAnon"]}


def bench_scaling(work: Path, base: int) -> list[dict]:
    results = []
    for factor in (1, 4, 16):
        folder = work / f"scale-{factor}"
        folder.mkdir()
        subprocess.run([sys.executable, __file__, "--child-data", str(folder), str(base * factor)], check=True)
        out = subprocess.run([sys.executable, __file__, "--child", str(folder)], check=True, capture_output=True,
                             text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def _print(mfu: dict | None, scaling: list[dict] | None) -> None:
    if mfu:
        print(f"\n(a) slice embedding: {mfu['encoder']}, {mfu['vision']}; {mfu['volumes']} volumes × {SLICES} slices "
              f"= {mfu['slices']} slices, {mfu['flops_per_slice'] / 1e6:.1f} MFLOP per slice (forward)")
        print(f"    in-run fp32 matmul peak: {mfu['peak_gflops']:.0f} GFLOP/s")
        print(f"    {'row':<34} {'s':>7} {'slices/s':>9} {'GFLOP/s':>8} {'MFU':>6}  max |Δ| vs batch "
              f"{mfu['default_batch']}")
        for row in mfu["rows"]:
            diff = f"{row['max_difference']:.2e}" if "max_difference" in row else ""
            print(f"    {row['row']:<34} {row['seconds']:7.2f} {row['slices_per_second']:9.0f} {row['gflops']:8.1f} "
                  f"{row['mfu']:6.1%}  {diff}")
        print("    goal: ≥ 60 % of the in-run peak on the cache path")
    if scaling:
        first = scaling[0]
        print("\n(b) scaling (a fresh process per size): write_slice_cache, then one adapter epoch on its cache")
        print("    peak memory of each phase: RSS (memory-mapped shard pages included) / RssAnon (own allocations)")
        print(f"    {'volumes':>7} {'embed s':>8} {'ms/vol':>7} {'RSS/anon MiB':>13} {'adapter s':>9} {'ms/vol':>7}"
              f" {'RSS/anon MiB':>13}  anon × N: embed, adapter")
        for row in scaling:
            per_volume = 1e3 * row["embed_seconds"] / row["volumes"]
            print(f"    {row['volumes']:7d} {row['embed_seconds']:8.2f} {per_volume:7.1f}"
                  f" {row['embed_rss_mib']:6.0f}/{row['embed_anon_mib']:<6.0f} {row['adapter_seconds']:9.2f}"
                  f" {1e3 * row['adapter_seconds'] / row['volumes']:7.2f} {row['adapter_rss_mib']:6.0f}/"
                  f"{row['adapter_anon_mib']:<6.0f}  {row['embed_anon_mib'] / first['embed_anon_mib']:.2f}, "
                  f"{row['adapter_anon_mib'] / first['adapter_anon_mib']:.2f}")
        print("    goal: own memory flat from N to 16N; time per volume flat (linear cost)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=192)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--scale-n", type=int, default=64)
    parser.add_argument("--skip", default="")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-data", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_data:
        folder = Path(args.child_data[0])
        (folder / "captions.json").write_text(json.dumps(_scale_data(folder, int(args.child_data[1]))))
        return
    if args.child:
        print(json.dumps(_scale_child(Path(args.child))))
        return
    skip = set(filter(None, args.skip.split(",")))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(prefix="radclip-bench-embed-") as tmp:
        work = Path(tmp)
        mfu = None if "a" in skip else bench_mfu(work, args.volumes, args.reps)
        scaling = None if "b" in skip else bench_scaling(work, args.scale_n)
    _print(mfu, scaling)


if __name__ == "__main__":
    main()
