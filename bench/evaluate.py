"""Evaluation benchmark: feature extraction and the 5-fold probe per default suite, and the whole
`dvc repro` of the embedded default from a clean clone.

Prints:
  - per evaluation suite: seconds to extract frozen features (2D: image encoder on the
    curated images; 3D: slice cache + adapter) and seconds for the 5-fold linear probe;
  - wall time of `dvc repro` in a fresh `git clone` of HEAD (every stage, nothing cached),
    and of its stages, read from the log. Goal (issue): ≤ 15 minutes on 2 cores;
  - whether the clone's `reports/` and `sweeps/best_params.yaml` equal the committed ones, up
    to measurements (wall time, throughput, MLflow run ids); `reports/registry.json` describes
    the clone's own MLflow store and is not committed (git-ignored), so `register` always runs there.

The clone reuses this checkout's virtual environment (set-up time is the README's
`make run` first-time cost, not part of the pipeline), with the clone's own code first
on PYTHONPATH. Run after `make run` (the in-process part needs the trained models).

    python bench/evaluate.py [--skip-repro] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def features_and_probe() -> list[tuple[str, str, int, float, float]]:
    from radclip.config import load_params
    from radclip.evaluation.evaluate import suite_features, suite_names
    from radclip.core.metrics import linear_probe
    from radclip.core.models import RadCLIP
    from radclip.jobs.common import MODEL_FINAL, model_dir, slice_cache_dir

    params = load_params(ROOT / "params.yaml")
    model = RadCLIP.from_pretrained(model_dir(params, MODEL_FINAL)).eval()
    rows = []
    for suite in suite_names(params):
        started = time.perf_counter()
        features = suite_features(model, params, suite, slice_cache_dir(params))
        extract = time.perf_counter() - started
        started = time.perf_counter()
        settings = params.evaluate
        linear_probe(features.features, features.labels, features.patients, n_folds=settings.folds,
                     epochs=settings.probe_epochs, lr=settings.probe_lr, seed=params.evaluate.protocol_seed, method=settings.probe_method)
        rows.append((suite, features.kind, len(features.features), extract, time.perf_counter() - started))
    return rows


def _measurement(key: str) -> bool:
    """Fields that measure or name the run rather than its result: wall time, throughput, MLflow run id,
    the Optuna study's name (a digest of its inputs and of radclip's code, so a behaviour-preserving
    edit recorded with `dvc commit` leaves the committed name behind a rerun's)."""
    return key in {"seconds", "mlflow_run_id", "time", "study"} or key.endswith("_per_second")


def _without_measurements(path: str, text: str):
    if path.endswith(".json"):
        def strip(value):
            if isinstance(value, dict):
                return {k: strip(v) for k, v in value.items() if not _measurement(k)}
            return [strip(v) for v in value] if isinstance(value, list) else value
        return strip(json.loads(text))
    if path.endswith(".yaml"):
        loaded = yaml.safe_load(text)
        return {k: v for k, v in loaded.items() if not _measurement(k)} if isinstance(loaded, dict) else loaded
    if path.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
        return [{k: v for k, v in row.items() if not _measurement(k)} for row in rows]
    return text


def changed_outputs(clone: Path) -> tuple[list[str], list[str]]:
    """Committed reports, figures and best params that the clone's `dvc repro` rewrote: those that
    differ only in measurements (wall time, throughput, run ids), and those that differ in results."""
    status = subprocess.run(["git", "status", "--porcelain", "--", "reports", "sweeps"], cwd=clone,
                            capture_output=True, text=True, check=True).stdout
    measured, different = [], []
    for path in sorted(line[3:] for line in status.splitlines()):
        committed = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=clone, capture_output=True).stdout
        reproduced = (clone / path).read_bytes()
        try:
            same = _without_measurements(path, committed.decode()) == _without_measurements(path, reproduced.decode())
        except (UnicodeDecodeError, ValueError):  # a figure or an unreadable report: it differs in bytes
            same = False
        (measured if same else different).append(path)
    return measured, different


def clean_clone_repro(keep: Path | None) -> tuple[float, dict[str, float], int, tuple[list[str], list[str]]]:
    workdir = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="radclip-bench-repro-"))
    clone = workdir / "radclip"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    venv_bin = ROOT / ".venv" / "bin"
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(clone),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0", "DO_NOT_TRACK": "1"}
    log = workdir / "repro.log"
    started = time.perf_counter()
    stage_starts: list[tuple[str, float]] = []
    with open(log, "w") as handle:
        process = subprocess.Popen([str(venv_bin / "dvc"), "repro"], cwd=clone, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:  # stage boundaries timed as DVC announces them
            handle.write(line)
            match = re.match(r"Running stage '([^']+)'", line)
            if match:
                stage_starts.append((match.group(1), time.perf_counter()))
        code = process.wait()
    total = time.perf_counter() - started
    ends = [t for _, t in stage_starts[1:]] + [started + total]
    stages = {name: end - begin for (name, begin), end in zip(stage_starts, ends)}
    changed = changed_outputs(clone)
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"clone and log kept in {workdir}")
    return total, stages, code, changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-repro", action="store_true", help="only the in-process feature/probe timings")
    parser.add_argument("--keep", type=Path, help="keep the clean clone and its log here")
    args = parser.parse_args()

    print("| suite | kind | records | features (s) | 5-fold probe (s) |")
    print("|---|---|---|---|---|")
    rows = features_and_probe()
    for suite, kind, count, extract, probe in rows:
        print(f"| {suite} | {kind} | {count} | {extract:.2f} | {probe:.2f} |")
    print(f"all suites: features {sum(r[3] for r in rows):.1f} s, probes {sum(r[4] for r in rows):.1f} s")
    if args.skip_repro:
        return
    total, stages, code, changed = clean_clone_repro(args.keep)
    print("\n| stage | seconds |\n|---|---|")
    for name, seconds in stages.items():
        print(f"| {name} | {seconds:.0f} |")
    status = ("within the goal" if total <= 15 * 60 else "OVER the goal") if code == 0 else f"FAILED (exit {code})"
    print(f"dvc repro from a clean clone: {total / 60:.1f} min ({status}: <= 15 min on 2 cores)")
    measured, different = changed
    print("committed reports, figures and best params reproduced: "
          + ("all results identical" if not different else f"results differ in {', '.join(different)}")
          + (f"; only measurements (time, throughput, run ids) differ in {', '.join(measured)}" if measured else ""))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
