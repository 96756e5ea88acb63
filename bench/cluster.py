"""Cluster benchmark: what the multi-node machinery costs, on a local two-node Ray cluster, PostgreSQL and an
MLflow server (the test suite's servers: tests/ray_cluster.py, tests/postgres_server.py, tests/tracking_server.py,
all on loopback, started and stopped here).

Data: phantoms generated and curated here (``--volumes`` training volumes at the embedded default's volume shape,
the embedded default's model architecture, freshly initialised: throughput does not depend on the weights).

1. embed_slices: one process vs Ray Data (``--actors`` encoder actors spread over the two nodes), volumes/s and
   the ratio, side by side on the same data; the two caches are compared byte for byte.
2. sweep: ``--trials`` adapter trials on one PostgreSQL study with ``sweep.workers`` 1, then 2 (a fresh study
   each): trials per minute and the ratio.
3. MLflow: one epoch's metrics logged by the driver (``radclip.io.mlflow_tracking.log_metrics``, as fit logs each
   epoch) into a SQLite store vs the MLflow server: milliseconds per epoch and the ratio.

On 2 shared cores expect ≤ 1× for compute: the figures say what the machinery costs; the tests say it works.

    python bench/cluster.py [--volumes 160 --actors 2 --trials 6 --epochs 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's server helpers (started the same way here)


def default_shape_params(base: Path, volumes: int):
    """Tiny phantoms (``volumes`` training volumes) at the embedded default's volume shape, curated size and model
    architecture (fresh weights), every path under ``base``; ``bench/gpu.py`` starts from these too."""
    from helpers import tiny_params_dict

    from radclip.config import Params

    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw = tiny_params_dict(str(base))
    raw["model"] = {**default["model"], "pretrained": None}  # the default's architecture, fresh weights
    raw["curate"].update(volume=default["curate"]["volume"], image_size=default["curate"]["image_size"])
    raw["phantoms"].update(train_3d=volumes, volume_shape=default["phantoms"]["volume_shape"],
                           lesion_slices=default["phantoms"]["lesion_slices"])
    raw["train_adapter"] = {**default["train_adapter"], "engine": "local"}
    raw["sweep"] = {**default["sweep"], "apply_best": False}
    return Params.model_validate(raw)


def _timed(function):
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=160, help="training volumes of the phantoms")
    parser.add_argument("--actors", type=int, default=2, help="Ray Data encoder actors")
    parser.add_argument("--trials", type=int, default=6, help="sweep trials per configuration")
    parser.add_argument("--sweep-epochs", type=int, default=10, help="epochs per sweep trial")
    parser.add_argument("--epochs", type=int, default=200, help="epochs logged to each MLflow store")
    args = parser.parse_args()

    os.environ.setdefault("RADCLIP_PHI_SALT", "radclip-embedded-default")  # phantom data, as the tests curate it
    from helpers import assert_same_cache
    from postgres_server import running_postgres
    from ray_cluster import two_node_cluster
    from tracking_server import running_mlflow_server, running_s3

    import radclip  # noqa: F401  (offline switches for this process and its children)
    from radclip.core.preprocessing import Preprocessing
    from radclip.data.curate import curate
    from radclip.data.phantoms import generate
    from radclip.io import mlflow_tracking as tracking
    from radclip.io.ray_cluster import ray_session
    from radclip.jobs import sweep
    from radclip.jobs.common import MODEL_2D, model_dir, slice_cache_dir, vocabulary
    from radclip.jobs.embed_slices import build_cache
    from radclip.training.build import build_model

    scratch = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"  # the project's store stays clean
    try:
        params = default_shape_params(scratch / "project", args.volumes)
        generate(params)
        curate(params, progress=False)
        curated = params.resolve(params.paths.curated)
        model = build_model(params, vocabulary(params), Preprocessing.read_if_saved(curated))
        model.save_pretrained(model_dir(params, MODEL_2D))
        (scratch / "pg").mkdir()
        (scratch / "mlflow-server").mkdir()

        with running_postgres(scratch / "pg", scratch) as postgres, running_s3() as s3, two_node_cluster() as cluster:
            # 1. embed_slices
            in_process, one_seconds = _timed(lambda: build_cache(params, model, scratch / "cache-one", meta={},
                                                                 progress=False))
            on_cluster = params.model_copy(update={
                "ray": params.ray.model_copy(update=cluster.ray_params()),
                "embed": params.embed.model_copy(update={"engine": "ray", "concurrency": args.actors})})
            with ray_session(on_cluster):  # connected once: the ratio is the work, not the connection
                _, ray_seconds = _timed(lambda: build_cache(on_cluster, model, scratch / "cache-ray", meta={},
                                                            progress=False))
            assert_same_cache(scratch / "cache-ray", scratch / "cache-one")
            volumes = in_process["count"]
            slices = volumes * in_process["max_slices"]
            print(f"embed_slices, {volumes} volumes ({slices} slices): one process {volumes / one_seconds:.1f} "
                  f"volumes/s ({one_seconds:.1f} s), Ray Data {args.actors} actors on 2 nodes "
                  f"{volumes / ray_seconds:.1f} volumes/s ({ray_seconds:.1f} s): "
                  f"ratio {one_seconds / ray_seconds:.2f}×; "
                  "caches identical byte for byte")
            shutil.copytree(scratch / "cache-one", slice_cache_dir(params))

            # 2. the sweep on PostgreSQL
            rates = {}
            for workers in (1, 2):
                database = postgres.create_database(f"sweep_{workers}")
                swept = params.model_copy(update={"sweep": params.sweep.model_copy(update={
                    "storage": postgres.uri(database), "workers": workers, "n_trials": args.trials,
                    "epochs": args.sweep_epochs, "study": f"bench-{workers}-workers"})})
                result, seconds = _timed(lambda swept=swept: sweep.run(swept, progress=False))
                # Workers that start a trial together may finish one more than asked for: count what finished.
                finished = result.trials["COMPLETE"] + result.trials["PRUNED"]
                rates[workers] = finished / (seconds / 60)
                print(f"sweep on PostgreSQL, {workers} worker(s): {finished} trials in {seconds:.1f} s = "
                      f"{rates[workers]:.1f} trials/min ({result.trials})")
            print(f"sweep: 2 workers / 1 worker = {rates[2] / rates[1]:.2f}×")

            # 3. MLflow: one epoch's metrics per call, as the driver logs them
            epoch = {"train_loss": 2.5, "val_loss": 2.4, "best_val_loss": 2.4, "lr": 1e-3, "temperature": 0.07,
                     "pairs_per_second": 200.0, "stopped_early": 0}
            costs = {}
            database = postgres.create_database("mlflow_bench")
            with running_mlflow_server(postgres.uri(database), s3, scratch / "mlflow-server") as server:
                for store, uri in (("SQLite", f"sqlite:///{scratch / 'epochs.db'}"), ("server", server.url)):
                    os.environ["MLFLOW_TRACKING_URI"] = uri
                    with tracking.start_run(params, stage="bench_epochs", run_name=f"epochs-{store}") as run:
                        timings = []
                        for step in range(args.epochs):
                            _, seconds = _timed(lambda step=step: tracking.log_metrics(epoch, step=step,
                                                                                       run_id=run.info.run_id))
                            timings.append(seconds)
                    costs[store] = statistics.median(timings) * 1000
                    print(f"MLflow {store}: {costs[store]:.1f} ms per logged epoch (median of {args.epochs})")
            print(f"MLflow server / SQLite per logged epoch = {costs['server'] / costs['SQLite']:.2f}×")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
