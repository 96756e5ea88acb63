"""Stage ``ablate``: RadCLIP Table III widened to {random init, vanilla, fine-tuned} × {average pooling, adapter},
plus the fine-tuned encoder with the other adapter reducers, each cell over ``ablate.seeds`` seeds, and the
pre-registered verdicts. The adapter rows train what ``pretrain_adapter`` trains (the sweep's best params,
its reducer included)."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter

from radclip.config import Params
from radclip.core.models.radclip import RadCLIP
from radclip.evaluation.ablation import (
    ENCODER_LABELS,
    ENCODERS,
    FIGURE_METRICS,
    MEAN_SUITE,
    Cell,
    aggregate,
    attention_markdown,
    grid_cells,
    mean_over_suites,
    table_markdown,
    verdict_markdown,
    verdicts,
    write_table,
)
from radclip.evaluation.evaluate import evaluate_features, suite_features, suite_names
from radclip.evaluation.plots import ablation_figure
from radclip.io import mlflow_tracking as tracking
from radclip.jobs._inference import inference_precision, load_model
from radclip.jobs.common import (
    ENCODER_MODELS,
    log,
    model_dir,
    slice_cache_dir,
    stage_main,
    write_effective_params,
    write_metrics,
)
from radclip.jobs.embed_slices import batch_engine
from radclip.jobs.pretrain_adapter import adapter_params
from radclip.training.fit import fit

STAGE = "ablate"
PARAMS = ("ablate", "evaluate", "inference", "embed", "data.caption", "data.collections", "phantoms.volume_shape",
          "model.adapter", "loss", "train_adapter", "sweep.apply_best")
GENERAL_REPORT = "pretrain_general.json"


def seed_params(params: Params, seed: int) -> Params:
    """Seed ``seed`` of the grid: the adapter's loop seed and the probes' protocol seed moved by it; no
    bootstrap intervals (the seeds and folds give the spread here)."""
    return params.with_values({"train_adapter.loop_seed": params.train_adapter.loop_seed + seed,
                               "evaluate.protocol_seed": params.evaluate.protocol_seed + seed,
                               "evaluate.bootstrap": 0})


def _chance(labels) -> float:
    counts = Counter(labels.tolist())
    return max(counts.values()) / sum(counts.values())


def _general_zero_shot(params: Params) -> dict | None:
    path = params.resolve(params.paths.reports) / GENERAL_REPORT
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return report.get("heldout_zero_shot")


def _train_adapter(params: Params, cell: Cell, seed: int, parent_run_id: str) -> RadCLIP:
    """The cell's adapter for this seed, trained in-process on the encoder's slice cache (scratch output)."""
    trained = adapter_params(params).with_values({"model.adapter.reducer": cell.pooling,
                                                  "train_adapter.engine": "local"})
    out = params.resolve(params.paths.tmp) / "ablation" / f"{cell.name}-seed{seed}"
    fit(trained, "adapter", data_dir=slice_cache_dir(params, cell.encoder), vocabulary=[],
        model_source=model_dir(params, ENCODER_MODELS[cell.encoder]), out_dir=out, parent_run_id=parent_run_id,
        run_name=f"{cell.name}-seed{seed}", tags={"encoder": cell.encoder, "ablation.seed": seed}, log_model=False,
        epoch_lines=False)
    model = load_model(params, out)
    shutil.rmtree(out, ignore_errors=True)
    return model


def run(params: Params, *, progress: bool = True) -> dict:
    """Every cell × seed × suite; writes ``reports/ablation.{json,csv,md,png}`` with seed means, seed and fold
    stds, and the verdict of each pre-registered threshold."""
    suites = suite_names(params)
    encoders = {encoder: load_model(params, model_dir(params, ENCODER_MODELS[encoder])) for encoder in ENCODERS}
    seeds = range(params.ablate.seeds)
    cells = grid_cells(adapter_params(params).model.adapter.reducer)
    per_seed: list[dict] = []
    kinds: dict[str, str] = {}
    chance: dict[str, float] = {}
    with batch_engine(params) as engine, tracking.start_run(
            params, stage=STAGE, run_name="ablation-grid",
            tags={"ablation.cells": len(cells), "ablation.seeds": len(seeds)}) as parent:
        encoder_only: dict[tuple[str, str, int], dict] = {}  # 2D suites: the pooling plays no part
        table: dict[str, dict[str, dict]] = {}  # cell -> suite -> seed aggregate
        for cell in cells:
            cell_started = time.perf_counter()
            tags = {"ablation.encoder": cell.encoder, "ablation.pooling": cell.pooling}
            with tracking.start_run(params, stage=STAGE, run_name=cell.name, nested=True, tags=tags) as cell_run:
                for seed in seeds:
                    run_params = seed_params(params, seed)
                    model = (_train_adapter(run_params, cell, seed, cell_run.info.run_id) if cell.trains_adapter
                             else encoders[cell.encoder])
                    pooling = "average" if cell.pooling == "average" else "adapter"
                    for suite in suites:
                        key = (cell.encoder, suite, seed)
                        if key in encoder_only:
                            metrics = encoder_only[key]
                        else:
                            with inference_precision(params):  # not around _train_adapter: training has its own
                                features = suite_features(model, run_params, suite,
                                                          slice_cache_dir(params, cell.encoder), pooling=pooling,
                                                          engine=engine)
                                metrics = evaluate_features(model, features, run_params).metrics
                            kinds[suite] = features.kind
                            chance[suite] = _chance(features.labels)
                            if features.kind == "2d":
                                encoder_only[key] = metrics
                        headline = {k: v for k, v in metrics.items() if "_fold" not in k and "." not in k}
                        tracking.log_metrics({f"{suite}.{k}": v for k, v in headline.items()}, step=seed)
                        per_seed.append({"cell": cell.name, "encoder": cell.encoder, "pooling": cell.pooling,
                                         "suite": suite, "seed": seed, **headline})
                table[cell.name] = {suite: aggregate([r for r in per_seed if r["cell"] == cell.name
                                                      and r["suite"] == suite]) for suite in suites}
                tracking.log_metrics({f"{suite}.{k}": v for suite, row in table[cell.name].items()
                                      for k, v in row.items()})
            log.info("ablate cell %s: %d seed(s) x %d suite(s) in %.0fs", cell.name, len(seeds), len(suites),
                     time.perf_counter() - cell_started)
        volume_suites = [s for s in suites if kinds.get(s) == "3d"]
        means = mean_over_suites(table, volume_suites)
        for cell in cells:
            if cell.name in means:
                table[cell.name][MEAN_SUITE] = means[cell.name]
        global_suites = [s for s in volume_suites if s in params.ablate.global_suites]
        focal_suites = [s for s in volume_suites if s not in global_suites]
        checks = verdicts(table, suites=suites, chance=chance, focal_suites=focal_suites, global_suites=global_suites,
                          thresholds=params.ablate.thresholds.model_dump(),
                          general_zero_shot=_general_zero_shot(params))
        reports = params.resolve(params.paths.reports)
        shown = suites + ([MEAN_SUITE] if volume_suites else [])
        markdown = table_markdown(table, shown, cells)
        (reports / "ablation.md").write_text(
            "# Ablation (RadCLIP Table III, widened): 2D encoder × slice pooling\n\n"
            f"Linear probe accuracy and macro F1, image–text matching P@1: mean ± std over {len(seeds)} seeds "
            "(adapter training and probe), fold std (patient-level folds, mean over seeds) in brackets. "
            "2D suites do not depend on the pooling.\n\n"
            + markdown + verdict_markdown(checks) + attention_markdown(mean_over_suites(table, focal_suites), cells)
        )
        write_table(reports / "ablation.csv", per_seed)
        summary = {
            "seeds": len(seeds),
            "chance": chance,
            "focal_suites": focal_suites,
            "global_suites": global_suites,
            "cells": table,
            "thresholds": checks,
            "all_passed": all(check["passed"] for check in checks.values()),
        }
        write_metrics(params, "ablation.json", summary)
        if volume_suites:
            figure_rows = [{"encoder": ENCODER_LABELS[c.encoder], "pooling": c.label,
                            **{m: means[c.name][m] for m in FIGURE_METRICS},
                            **{f"{m}_std": means[c.name][f"{m}_seed_std"] for m in FIGURE_METRICS}} for c in cells]
            ablation_figure(figure_rows, FIGURE_METRICS, reports / "ablation.png",
                            title=f"Ablation on the 3D suites (mean over suites; ± std over {len(seeds)} seeds)")
        tracking.log_metrics({f"threshold.{key}.value": check["value"] for key, check in checks.items()}
                             | {f"threshold.{key}.passed": float(check["passed"]) for key, check in checks.items()})
        for name in ("ablation.md", "ablation.csv", "ablation.json", "ablation.png"):
            if (reports / name).exists():
                tracking.log_artifact(reports / name, "ablation")
        tracking.log_artifact(write_effective_params(params, STAGE, PARAMS), "params")
        summary["mlflow_run_id"] = parent.info.run_id
    log.info("%s", markdown)
    for name, check in checks.items():
        log.info("%-40s %s: %+.3f (%s %+.3f)", name, "PASS" if check["passed"] else "FAIL", check["value"],
                 check["rule"], check["threshold"])
    return summary | {"rows": per_seed, "markdown": markdown}


def main() -> None:
    stage_main(run)
