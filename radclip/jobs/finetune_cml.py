"""Stage ``finetune_cml``: CXR-CML (paper 003) in four arms under one MLflow parent run, scored on the
long-tail suite.

Every arm starts from the fine-tuned 2D encoder (``pretrain_2d``'s model) and fine-tunes its image tower
on the long-tail collection (``cml.collection``, role finetune) with the same epochs, data order and
seeds (``cml.train``, ``cml.seeds``): ``control``, ``meta``, ``gauss``, ``t`` (see
:mod:`radclip.training.cml`). Seed k of every arm trains with ``loop_seed + k`` and the mixture seed + k
as an MLflow child run; seed 0's model is kept (``models/radclip-cml-<arm>``, a LoggedModel), the
others are scored and dropped. Writes ``reports/longtail.{json,md}`` (the paper's table: macro AUROC
total / base / rare per arm, seed and fold stds, paired-bootstrap CIs of each arm − control and of
t − meta, the NMI of the pseudo-labels per epoch, the verdicts), ``reports/finetune_cml.json`` (training
summary) and ``reports/finetune_cml_history.csv``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from radclip.config import Params
from radclip.evaluation.longtail import (
    SUBSETS,
    LongTailSuite,
    arm_logits,
    long_tail_suite,
    long_tail_table,
    rare_classes,
    verdicts,
)
from radclip.io import mlflow_tracking as tracking
from radclip.io import ray_train
from radclip.jobs._inference import load_model
from radclip.jobs.common import (
    MODEL_2D,
    log,
    model_dir,
    stage_main,
    vocabulary,
    write_effective_params,
    write_history,
    write_metrics,
)
from radclip.training.cml import ARMS, arm_caption_template
from radclip.training.fit import FitResult, fit

STAGE = "finetune_cml"
REPORT = "longtail"
PARAMS = ("profile", "loss", "cml", "evaluate.rare_fraction", "evaluate.bootstrap", "evaluate.protocol_seed",
          "evaluate.folds", "inference.device", "data.caption", "data.collections")
HISTORY_COLUMNS = ["arm", "seed", "epoch", "train_loss", "val_loss", "train_metric_loss", "nmi", "clusters_used",
                   "refit_seconds", "lr", "temperature", "pairs_per_second"]


def arm_model_name(arm: str) -> str:
    return f"radclip-cml-{arm}"


def run(params: Params, *, progress: bool = True) -> dict[str, Any]:
    start = model_dir(params, MODEL_2D)
    if not start.exists():
        raise FileNotFoundError(f"{start}: no fine-tuned 2D encoder to start from (run `dvc repro pretrain_2d`)")
    effective = write_effective_params(params, STAGE, PARAMS)
    captions = vocabulary(params)
    suite = long_tail_suite(params)
    rare, shares = rare_classes(params, suite.classes)
    cml = params.cml
    logits: dict[str, np.ndarray] = {}
    results: dict[str, list[FitResult]] = {}
    scratch = params.resolve(params.paths.tmp) / STAGE
    name = f"{STAGE}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}"
    with (tracking.start_run(params, stage=STAGE, run_name=name, tags={"cml.arms": ",".join(ARMS)}) as parent,
          ray_train.trainer_session(params, cml.train)):
        tracking.log_artifact(effective, "params")
        for arm in ARMS:
            seed_logits = []
            for k in range(cml.seeds):
                out = model_dir(params, arm_model_name(arm)) if k == 0 else scratch / f"{arm}-seed{k}"
                result, arm_seed_logits = train_arm(params, arm, k, suite, out_dir=out, captions=captions,
                                                    parent_run_id=parent.info.run_id, run_name=f"{name}-{arm}-seed{k}",
                                                    keep=k == 0, progress=progress)
                results.setdefault(arm, []).append(result)
                seed_logits.append(arm_seed_logits)
            logits[arm] = np.concatenate(seed_logits, axis=1)
        table = long_tail_table(logits, suite, rare, params)
        nmi = _final_nmi(results)
        report: dict[str, Any] = {
            "suite": cml.suite, "collection": cml.collection, "rare_fraction": params.evaluate.rare_fraction,
            "training_shares": shares, **table, "nmi_last_epoch": nmi, "nmi_per_epoch": _nmi_per_epoch(results),
            "verdicts": verdicts(table, nmi, cml.thresholds)}
        tracking.log_metrics(_flat_metrics(report))
        json_path = write_metrics(params, f"{REPORT}.json", report)
        markdown = json_path.with_suffix(".md")
        markdown.write_text(render_markdown(report))
        training = write_metrics(params, f"{STAGE}.json", _training_summary(results))
        history = write_history(json_path.with_name(f"{STAGE}_history.csv"),
                                [{"arm": arm, "seed": k, **row} for arm, runs in results.items()
                                 for k, run_result in enumerate(runs) for row in run_result.history], HISTORY_COLUMNS)
        for path in (json_path, markdown, training, history):
            tracking.log_artifact(path, REPORT)
    shutil.rmtree(scratch, ignore_errors=True)
    for key, verdict in report["verdicts"].items():
        state = verdict.get("passed", verdict.get("reproduced"))
        log.info("%s %s: %s", STAGE, key, {True: "pass", False: "FAIL"}[bool(state)])
    return report


def train_arm(params: Params, arm: str, seed: int, suite: LongTailSuite, *, out_dir: Path, captions: list[str],
              parent_run_id: str | None, run_name: str, keep: bool = True, progress: bool = False
              ) -> tuple[FitResult, np.ndarray]:
    """Train seed ``seed`` of one arm from ``radclip-2d`` into ``out_dir`` (an MLflow run, a child of
    ``parent_run_id``; a LoggedModel when ``keep``, else the directory is removed after scoring) and score it
    on the suite: the FitResult and its (N, 1, C) zero-shot logits."""
    seeded = params.with_values({"cml.train.loop_seed": params.cml.train.loop_seed + seed})
    result = fit(seeded, "cml", data_dir=params.resolve(params.paths.curated), vocabulary=captions,
                 model_source=model_dir(params, MODEL_2D), out_dir=out_dir, parent_run_id=parent_run_id,
                 run_name=run_name, tags={"cml.arm": arm, "cml.seed": seed}, log_model=keep,
                 epoch_lines=progress and keep, arm=arm, seed_offset=seed)
    logits = arm_logits([load_model(params, out_dir)], suite, arm_caption_template(params, arm))
    if not keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    log.info("%s %s seed %d: best val loss %.4f at epoch %d (%.0fs)", STAGE, arm, seed, result.best_val_loss,
             result.best_epoch, result.seconds)
    return result, logits


def _final_nmi(results: dict[str, list[FitResult]]) -> dict[str, float]:
    """Per arm with a mixture: the last epoch's pseudo-label NMI, mean over seeds (the labels it ended on)."""
    out = {}
    for arm, runs in results.items():
        values = [run_result.history[-1]["nmi"] for run_result in runs if "nmi" in run_result.history[-1]]
        if values:
            out[arm] = float(np.mean(values))
    return out


def _nmi_per_epoch(results: dict[str, list[FitResult]]) -> dict[str, list[float]]:
    out = {}
    for arm, runs in results.items():
        epochs = [[row.get("nmi", np.nan) for row in run_result.history] for run_result in runs]
        if any("nmi" in row for run_result in runs for row in run_result.history):
            length = min(len(e) for e in epochs)
            out[arm] = [float(np.nanmean([e[i] for e in epochs])) for i in range(length)]
    return out


def _training_summary(results: dict[str, list[FitResult]]) -> dict[str, Any]:
    arms = {}
    for arm, runs in results.items():
        arms[arm] = {
            "best_val_loss": float(np.mean([r.best_val_loss for r in runs])),
            "epochs_run": float(np.mean([len(r.history) for r in runs])),
            "seconds_per_epoch": float(np.mean([r.seconds / len(r.history) for r in runs])),
            "pairs_per_second": float(np.mean([row["pairs_per_second"] for r in runs for row in r.history])),
            "mlflow_run_ids": [r.mlflow_run_id for r in runs],
        }
    return {"arms": arms}


def _flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    flat = {f"{arm}.{key}": value for arm, values in report["arms"].items() for key, value in values.items()
            if isinstance(value, float)}
    flat.update({f"{pair}.{subset}.difference": values[subset]["difference"]
                 for pair, values in report["comparisons"].items() for subset in SUBSETS})
    flat.update({f"{arm}.nmi": value for arm, value in report["nmi_last_epoch"].items()})
    return flat


def _cell(arm: dict[str, Any], subset: str) -> str:
    return f"{arm[subset]:.3f} ± {arm[f'{subset}_seed_std']:.3f} (folds ± {arm[f'{subset}_fold_std']:.3f})"


def render_markdown(report: dict[str, Any]) -> str:
    seeds = next(iter(report["arms"].values()))["seeds"]
    lines = [
        f"# Long-tail zero-shot classification ({report['suite']}, {report['images']} images)", "",
        f"Macro AUROC, mean ± std over {seeds} seed(s) (in brackets: std over 5 patient-disjoint parts of the suite). "
        f"Rare: below {report['rare_fraction']:.0%} of {report['collection']}'s training images: "
        f"{', '.join(report['rare_classes'])}; base: {', '.join(report['base_classes'])}.", "",
        "| arm | total | base | rare | NMI (last epoch) |", "|---|---|---|---|---|",
    ]
    for arm, values in report["arms"].items():
        nmi = report["nmi_last_epoch"].get(arm)
        lines.append(f"| {arm} | {_cell(values, 'total')} | {_cell(values, 'base')} | {_cell(values, 'rare')} | "
                     f"{'' if nmi is None else f'{nmi:.3f}'} |")
    lines += ["", "Differences (paired bootstrap over the suite's images, the seed-mean difference):", "",
              "| comparison | total | base | rare |", "|---|---|---|---|"]
    for pair, values in report["comparisons"].items():
        cells = []
        for subset in SUBSETS:
            v = values[subset]
            ci = f" [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]" if "ci_low" in v else ""
            cells.append(f"{v['difference']:+.3f}{ci}")
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    lines += ["", "Per class (seed-mean AUROC; rare classes marked *):", "",
              "| class | positives | train share | " + " | ".join(report["arms"]) + " |",
              "|---|---|---|" + "---|" * len(report["arms"])]
    for c in report["classes"]:
        mark = "*" if c in report["rare_classes"] else ""
        values = " | ".join(f"{report['arms'][arm]['per_class'][c]:.3f}" for arm in report["arms"])
        lines.append(f"| {c}{mark} | {report['positives'][c]} | {report['training_shares'][c]:.1%} | {values} |")
    lines += ["", "## Pre-registered verdicts (params.yaml `cml.thresholds`)", ""]
    for key, verdict in report["verdicts"].items():
        state = verdict.get("passed", verdict.get("reproduced"))
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in verdict.items()}
        lines.append(f"- **{key}**: {'pass' if state else 'FAIL'} — {shown}")
    return "\n".join(lines) + "\n"


def main() -> None:
    stage_main(run)
