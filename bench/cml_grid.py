"""CXR-CML's ablation grid (paper 003, Table 3): the ``t`` arm over ν × batch size, beside ``control`` and
``meta`` at the paper's batch of 32, with each arm's cost per epoch.

Every cell fine-tunes the pipeline's ``models/radclip-2d`` on the long-tail collection with ``cml.train``
(only ``cml.nu`` and ``cml.train.batch_size`` change) and is scored on the long-tail suite (macro AUROC
total / base / rare, rare by training share as in ``finetune_cml``). Each cell runs in a scratch directory
with its own MLflow store; the project's models, reports and store are untouched. Needs `make run` first.
The cost per epoch is the training steps (records / pairs per second) plus, for the mixture arms, the
refit (embedding every training image and fitting the mixture), means over epochs and seeds.

    python bench/cml_grid.py [--nu 2 4 6] [--batch 16 32 64] [--seeds 0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _cell(base, arm: str, nu: float, batch: int, seeds: list[int], scratch: Path) -> dict:
    from radclip.evaluation.longtail import long_tail_suite, rare_classes, subset_macros
    from radclip.jobs.common import vocabulary
    from radclip.jobs.finetune_cml import train_arm

    work = scratch / f"{arm}-nu{nu}-bs{batch}"
    params = base.with_values({"paths.reports": str(work / "reports"), "paths.tmp": str(work / "tmp"),
                               "mlflow.artifact_root": str(work / "mlruns"), "cml.nu": nu,
                               "cml.train.batch_size": batch})
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    suite = long_tail_suite(params)
    rare_names, _ = rare_classes(params, suite.classes)
    rare = np.array([c in rare_names for c in suite.classes])
    captions = vocabulary(params)
    records = None
    macros, epoch_costs = [], []
    for seed in seeds:
        result, logits = train_arm(params, arm, seed, suite, out_dir=work / f"model-{seed}", captions=captions,
                                   parent_run_id=None, run_name=f"bench-{arm}-{seed}", keep=False)
        macros.append(subset_macros(logits, suite.targets(), rare)[0])
        if records is None:
            from radclip.training.cml import LongTailDataset

            records = len(LongTailDataset(params, str(params.resolve(params.paths.curated)), "train", arm))
        epoch_costs += [records / row["pairs_per_second"] + row.get("refit_seconds", 0.0) for row in result.history]
    return {"macro": np.mean(macros, axis=0), "epoch_seconds": float(np.mean(epoch_costs))}


def main() -> None:
    from radclip.config import load_params

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nu", type=float, nargs="+", default=[2.0, 4.0, 6.0])
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    base = load_params(ROOT / "params.yaml")
    base = base.with_values({"paths.curated": str(base.resolve(base.paths.curated)),
                             "paths.models": str(base.resolve(base.paths.models))})
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="radclip-cml-grid-") as scratch:
        cells = [("control", base.cml.nu, 32), ("meta", base.cml.nu, 32)]
        cells += [("t", nu, batch) for batch in args.batch for nu in args.nu]
        for arm, nu, batch in cells:
            result = _cell(base, arm, nu, batch, args.seeds, Path(scratch))
            rows.append((arm, nu, batch, result))
            print(f"{arm} ν={nu:g} bs={batch}: total {result['macro'][0]:.3f}, base {result['macro'][1]:.3f}, "
                  f"rare {result['macro'][2]:.3f}, {result['epoch_seconds']:.1f} s/epoch", flush=True)
    print(f"\nCXR-CML grid on the long-tail suite, macro AUROC, mean over seeds {args.seeds} "
          f"({time.perf_counter() - started:.0f} s)\n")
    print("| arm | ν | batch | total | base | rare | s / epoch |")
    print("|---|---|---|---|---|---|---|")
    for arm, nu, batch, result in rows:
        shown_nu = "—" if arm in ("control", "meta") else f"{nu:g}"
        total, base_auc, rare_auc = result["macro"]
        print(f"| {arm} | {shown_nu} | {batch} | {total:.3f} | {base_auc:.3f} | {rare_auc:.3f} | "
              f"{result['epoch_seconds']:.1f} |")


if __name__ == "__main__":
    main()
