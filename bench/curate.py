"""Curation benchmark: throughput with 1 and 2 workers, peak memory at dataset sizes N and 10N.

Prints, measured side by side in one run on phantom collections written for it:
  - images+volumes per second with 1 and 2 Ray workers on the same data, at N and 10N
    (Ray start-up and worker warm-up excluded: paid once per stage, not per item);
  - peak RSS of the whole curation process tree (driver, Ray workers and Ray's own
    services) at N and 10N, and their ratio.
Goals (issue): ≥ 1.5× throughput with 2 workers over 1; peak RSS within ±20% between N and 10N.

    python bench/curate.py [--n-2d 600 --n-3d 60] [--keep DIR]
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

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _params(workdir: Path, n_2d: int, n_3d: int, workers: int, chunk_size: int):
    from helpers import tiny_params

    return tiny_params(
        workdir,
        phantoms={"train_2d": n_2d, "train_3d": n_3d, "image_size": 128, "volume_shape": [32, 64, 64],
                  "lesion_slices": [2, 4], "workers": 2,
                  "suites": {"chest_xray_5class": 0, "brain_mri_4class": 0, "brain_mri_3d_2class": 0, "chest_ct_3d_3class": 0,
                             "brain_mri_3d_sex": 0}},
        curate={"engine": "ray", "workers": workers, "chunk_size": chunk_size, "image_size": 64,
                "volume": {p: {"slices": 32, "size": 64} for p in ("axial", "coronal", "sagittal")}},
        data={"collections": [{"name": "phantom_train", "format": "csv", "path": str(workdir / "raw" / "train"),
                               "patient_column": "patient_id", "region_column": "region", "modality_column": "modality"}]},
        ray={"address": None, "num_cpus": workers},
    )


def _warm_up_workers(workers: int) -> None:
    """Start every Ray worker and import the curation stack in it before timing (paid once per stage)."""
    import ray

    @ray.remote(num_cpus=1)
    def warm() -> int:
        import os

        import radclip.data.curate  # noqa: F401
        import torch  # noqa: F401

        time.sleep(1.0)  # hold the CPU so the next warm-up task lands on another worker
        return os.getpid()

    pids = ray.get([warm.remote() for _ in range(workers)])
    assert len(set(pids)) == workers, "warm-up did not reach every worker"


def run_one(workdir: Path, n_2d: int, n_3d: int, workers: int, chunk_size: int) -> dict:
    """Child process: curate once inside an already started Ray session, print JSON."""
    from radclip.data.curate import curate
    from radclip.io.ray_cluster import ray_session

    params = _params(workdir, n_2d, n_3d, workers, chunk_size)
    with ray_session(params, num_cpus=workers):
        _warm_up_workers(workers)
        started = time.perf_counter()
        summary = curate(params, out_dir=workdir / f"curated-w{workers}", progress=False)
        seconds = time.perf_counter() - started
    return {"items": summary.items, "records": summary.records, "seconds": seconds, "per_second": summary.items / seconds}


def _measure(workdir: Path, n_2d: int, n_3d: int, workers: int, chunk_size: int) -> dict:
    """Run a child and sample the RSS of its whole process tree every 50 ms."""
    command = [sys.executable, __file__, "--child", str(workdir), str(n_2d), str(n_3d), str(workers), str(chunk_size)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(child.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                total = 0
                for proc in tree:
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = child.communicate()
    done.set()
    sampler.join()
    if child.returncode:
        raise SystemExit(f"benchmark child failed ({child.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = peak / 2**20
    return result


def _write_phantoms(workdir: Path, n_2d: int, n_3d: int) -> None:
    from radclip.data.phantoms import generate

    generate(_params(workdir, n_2d, n_3d, 2, 64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-2d", type=int, default=600)
    parser.add_argument("--n-3d", type=int, default=60)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep (default: a temp dir)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        workdir, n_2d, n_3d, workers, chunk = args.child
        print(json.dumps(run_one(Path(workdir), int(n_2d), int(n_3d), int(workers), int(chunk))))
        return

    base = args.keep or Path(tempfile.mkdtemp(prefix="radclip-bench-curate-"))
    small, large = base / "n", base / "10n"
    n_2d, n_3d = args.n_2d, args.n_3d
    print(f"writing phantoms: N = {n_2d} images + {n_3d} volumes, 10N = {10 * n_2d} + {10 * n_3d} ...", flush=True)
    _write_phantoms(small, n_2d, n_3d)
    _write_phantoms(large, 10 * n_2d, 10 * n_3d)

    runs = {
        (size, workers): _measure(folder, scale * n_2d, scale * n_3d, workers, args.chunk_size)
        for size, folder, scale in (("N", small, 1), ("10N", large, 10))
        for workers in (1, 2)
    }

    print()
    print("| data | workers | inputs | seconds | inputs/s | peak RSS (MB, process tree) |")
    print("|---|---:|---:|---:|---:|---:|")
    for (size, workers), r in runs.items():
        print(f"| {size} | {workers} | {r['items']} | {r['seconds']:.1f} | {r['per_second']:.1f} | {r['peak_rss_mb']:.0f} |")
    print()
    for size in ("N", "10N"):
        speedup = runs[(size, 2)]["per_second"] / runs[(size, 1)]["per_second"]
        print(f"throughput 2 workers / 1 worker at {size}: {speedup:.2f}x   (goal >= 1.5x)")
    for workers in (1, 2):
        rss_ratio = runs[("10N", workers)]["peak_rss_mb"] / runs[("N", workers)]["peak_rss_mb"]
        print(f"peak RSS 10N / N with {workers} worker(s): {rss_ratio:.2f}    (goal within 0.8-1.2)")


if __name__ == "__main__":
    main()
