"""Seed spread of the ablation's best cell: the fine-tuned encoder's adapter retrained under several seeds.

The `ablate` stage trains each adapter once (`train_adapter.loop_seed`), so its table shows fold
spread only. This retrains the fine-tuned encoder's adapter with the stage's own params (the
sweep's best when `sweep.apply_best`) under each seed, in a scratch directory (the project's
models, reports and MLflow store are untouched), and prints per seed: the best validation
loss, the 3D suites' linear-probe accuracy and their mean, and where the attention went (mass
and within-volume AUROC on the finding slices the phantoms recorded). Average pooling of the
vanilla and fine-tuned encoders has no seed: it is printed once, as the reference the ordering
check uses. Needs `make run` first (encoders, slice caches, sweep).

    python bench/adapter_seeds.py [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _volume_scores(model, params, cache: Path, pooling: str) -> dict[str, dict[str, float]]:
    from radclip.evaluation.evaluate import evaluate_features, suite_names
    from radclip.evaluation.features import volume_features

    scores = {}
    for suite in suite_names(params):
        features = volume_features(model, cache, suite, pooling=pooling)
        if len(features.features):  # 2D suites have no slice-cache records
            scores[suite] = evaluate_features(model, features, params).metrics
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()

    from radclip.config import load_params
    from radclip.core.models import RadCLIP
    from radclip.training.fit import fit
    from radclip.jobs.common import ADAPTED_MODELS, ENCODER_MODELS, model_dir, slice_cache_dir
    from radclip.jobs.pretrain_adapter import adapter_params

    params = adapter_params(load_params(ROOT / "params.yaml"))
    scratch = Path(tempfile.mkdtemp(prefix="radclip-bench-seeds-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"  # keep the project's store clean
    params = params.model_copy(update={"paths": params.paths.model_copy(update={"tmp": str(scratch / "tmp")})})
    finetuned_cache, vanilla_cache = slice_cache_dir(params, "finetuned"), slice_cache_dir(params, "vanilla")
    try:
        reference = {
            "vanilla+average": _volume_scores(RadCLIP.from_pretrained(model_dir(params, ADAPTED_MODELS["vanilla"])).eval(),
                                              params, vanilla_cache, "average"),
            "finetuned+average": _volume_scores(RadCLIP.from_pretrained(model_dir(params, ADAPTED_MODELS["finetuned"])).eval(),
                                                params, finetuned_cache, "average"),
        }
        suites = list(reference["vanilla+average"])
        worst = reference["vanilla+average"]
        worst_mean = float(np.mean([worst[s]["probe_accuracy_mean"] for s in suites]))
        worst_std = float(np.mean([worst[s]["probe_accuracy_std"] for s in suites]))
        short = [s.removeprefix("phantom_") for s in suites]
        print(f"adapter params: heads {params.model.adapter.heads}, lr {params.train_adapter.lr:.3g}, "
              f"temperature {params.loss.temperature:.3g}, batch {params.train_adapter.batch_size}")
        print("| cell | seed | best val loss | " + " | ".join(f"{s} probe acc" for s in short)
              + " | mean 3D | lesion mass (uniform) | lesion AUROC |")
        print("|---" * (6 + len(suites)) + "|")
        for name, scores in reference.items():
            accs = [f"{scores[s]['probe_accuracy_mean']:.3f} ± {scores[s]['probe_accuracy_std']:.3f}" for s in suites]
            mean = np.mean([scores[s]["probe_accuracy_mean"] for s in suites])
            print(f"| {name} | - | - | " + " | ".join(accs) + f" | {mean:.3f} | - | 0.5 |")
        means, holds = [], []
        for seed in args.seeds:
            seeded = params.model_copy(update={"train_adapter": params.train_adapter.model_copy(update={"loop_seed": seed})})
            out = scratch / f"adapter-seed{seed}"
            result = fit(seeded, "adapter", data_dir=finetuned_cache, vocabulary=[],
                         model_source=model_dir(params, ENCODER_MODELS["finetuned"]), out_dir=out)
            scores = _volume_scores(RadCLIP.from_pretrained(out).eval(), seeded, finetuned_cache, "adapter")
            mean = float(np.mean([scores[s]["probe_accuracy_mean"] for s in suites]))
            means.append(mean)
            spread = max(worst_std, float(np.mean([scores[s]["probe_accuracy_std"] for s in suites])))
            holds.append(mean - worst_mean > spread)  # the ablation's ordering check, on the mean row
            accs = [f"{scores[s]['probe_accuracy_mean']:.3f} ± {scores[s]['probe_accuracy_std']:.3f}" for s in suites]
            mass = np.mean([scores[s].get("attention_lesion_mass", np.nan) for s in suites])
            uniform = np.mean([scores[s].get("attention_lesion_mass_uniform", np.nan) for s in suites])
            auroc = np.mean([scores[s].get("attention_lesion_auroc", np.nan) for s in suites])
            print(f"| finetuned+adapter | {seed} | {result.best_val_loss:.4f} | " + " | ".join(accs)
                  + f" | {mean:.3f} | {mass:.3f} ({uniform:.3f}) | {auroc:.3f} |", flush=True)
        print(f"\nfinetuned+adapter mean 3D probe over {len(means)} seeds: {np.mean(means):.3f} ± {np.std(means, ddof=1) if len(means) > 1 else 0.0:.3f}"
              f"; vanilla+average {worst_mean:.3f} (fold std {worst_std:.3f})")
        print(f"ordering holds (gap above the larger fold std) in {sum(holds)} of {len(holds)} seeds")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
