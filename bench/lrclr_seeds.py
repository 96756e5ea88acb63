"""Seed spread of LRCLR's verdicts: both arms of ``pretrain_lrclr`` and ``localise`` rerun under other seeds.

LRCLR seed k adds k to ``lrclr.train.loop_seed`` (both arms' data order) and ``lrclr.init_seed`` (the
cross-modal transformer's initial weights); both arms start from the pipeline's ``models/radclip-2d``
and are scored on the pipeline's curated data. Each seed runs in a scratch directory with its own
MLflow store; the project's models, reports and store are untouched. Needs `make run` first.

Prints per seed the values behind issue 12's pre-registered criteria (per focal finding: LRCLR's
text→region pointing and top-2 hit and whether each CI excludes chance; the mean pointing of each
heatmap and (b)'s gain; (c)'s zero-shot difference), then their mean ± std over the seeds and
whether any verdict differs between seeds.

    python bench/lrclr_seeds.py [--seeds 0 1 2]
    python bench/lrclr_seeds.py --seeds 1 2 --pipeline-as-seed-0   # seed 0 read from reports/localisation.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VERDICTS = ("a_text_regions_beat_chance", "b_pointing_gain", "c_zero_shot_auroc")


def _seed_run(seed: int, scratch: Path) -> dict:
    from radclip.config import load_params
    from radclip.jobs import localise, pretrain_lrclr
    from radclip.jobs.common import MODEL_2D, model_dir

    base = load_params(ROOT / "params.yaml")
    work = scratch / f"lrclr-{seed}"
    (work / "models").mkdir(parents=True)
    (work / "models" / MODEL_2D).symlink_to(model_dir(base, MODEL_2D), target_is_directory=True)
    params = base.with_values({
        "paths.models": str(work / "models"), "paths.reports": str(work / "reports"), "paths.tmp": str(work / "tmp"),
        "paths.curated": str(base.resolve(base.paths.curated)), "mlflow.artifact_root": str(work / "mlruns"),
        "lrclr.train.loop_seed": base.lrclr.train.loop_seed + seed, "lrclr.init_seed": base.lrclr.init_seed + seed})
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    started = time.perf_counter()
    pretrain_lrclr.run(params, progress=False)
    result = localise.run(params, progress=False)
    result["seconds"] = time.perf_counter() - started
    return result


def _row(result: dict) -> dict[str, float]:
    """The figures one seed gives: per finding text→region pointing/top-2 and their beat-chance flags."""
    row: dict[str, float] = {}
    for finding, entry in result["findings"].items():
        text = entry["lrclr_text_regions"]
        row[f"{finding}: text→region pointing"] = text["pointing"]["mean"]
        row[f"{finding}: text→region top-2"] = text["top2"]["mean"]
    b = result["verdicts"]["b_pointing_gain"]
    for name, value in b["mean_pointing"].items():
        row[f"mean pointing, {name}"] = value
    row["(b) gain of the best LRCLR heatmap"] = b["gain"]
    row["(c) zero-shot macro AUROC, lrclr − control"] = result["verdicts"]["c_zero_shot_auroc"]["difference"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pipeline-as-seed-0", action="store_true",
                        help="take seed 0 from reports/localisation.json (the pipeline is seed 0)")
    args = parser.parse_args()
    results: dict[int, dict] = {}
    if args.pipeline_as_seed_0:
        results[0] = json.loads((ROOT / "reports" / "localisation.json").read_text())
    with tempfile.TemporaryDirectory(prefix="radclip-lrclr-seeds-") as scratch:
        for seed in args.seeds:
            results[seed] = _seed_run(seed, Path(scratch))
            print(f"seed {seed}: {results[seed]['seconds']:.0f} s", flush=True)
    seeds = sorted(results)
    rows = {seed: _row(results[seed]) for seed in seeds}
    print("| figure | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |")
    print("|---|" + "---|" * (len(seeds) + 1))
    for key in rows[seeds[0]]:
        values = [rows[s][key] for s in seeds]
        print(f"| {key} | " + " | ".join(f"{v:+.3f}" for v in values)
              + f" | {np.mean(values):+.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f} |")
    print()
    for key in VERDICTS:
        verdicts = ["pass" if results[s]["verdicts"][key]["pass"] else "FAIL" for s in seeds]
        flips = " (differs between seeds)" if len(set(verdicts)) > 1 else ""
        print(f"{key}: " + ", ".join(f"seed {s} {v}" for s, v in zip(seeds, verdicts)) + flips)


if __name__ == "__main__":
    main()
