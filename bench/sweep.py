"""Sweep benchmark: trials per minute of the adapter sweep on the embedded default, and the pruned fraction.

Runs a fresh study (its own journal in a temporary directory, so the pipeline's study is
untouched) with the default sweep params on the default slice cache, and prints the wall
time, trials per minute and how many trials the pruner stopped. Goal (issue): 20 trials in
≤ 5 minutes on 2 cores. Needs `make run` first (the fine-tuned encoder and its slice cache).

    python bench/sweep.py [--trials 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=None, help="default: sweep.n_trials")
    args = parser.parse_args()

    from radclip.config import load_params
    from radclip.io.optuna_sweep import sweep

    params = load_params(ROOT / "params.yaml")
    scratch = Path(tempfile.mkdtemp(prefix="radclip-bench-sweep-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"  # keep the project's store clean
    paths = params.paths.model_copy(update={"sweeps": str(scratch / "sweeps"), "reports": str(scratch / "reports")})
    params = params.model_copy(update={"paths": paths})
    try:
        started = time.perf_counter()
        result = sweep(params, n_trials=args.trials)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    finished = result.trials["COMPLETE"] + result.trials["PRUNED"]
    print(f"study {result.study}: {finished} trials in {seconds:.0f} s = {finished / (seconds / 60):.1f} trials/min "
          f"(goal: 20 trials in <= 300 s)")
    print(f"pruned: {result.trials['PRUNED']} of {finished} ({result.trials['PRUNED'] / finished:.0%}); "
          f"failed: {result.trials['FAIL']}")
    print(f"best val loss {result.best_value:.4f} at trial {result.best_trial}: {result.best_params}")


if __name__ == "__main__":
    main()
