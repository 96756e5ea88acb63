"""Stage ``ablate``: RadCLIP Table III, {vanilla, fine-tuned} 2D encoder × {average pooling, trained adapter}."""

from __future__ import annotations

from radclip.config import Params
from radclip.core.models.radclip import RadCLIP
from radclip.evaluation.ablation import (
    CELLS,
    ENCODER_LABELS,
    ENCODERS,
    FIGURE_METRICS,
    MEAN_SUITE,
    POOLING_LABELS,
    attention_markdown,
    mean_rows,
    ordering,
    summary_metric,
    table_markdown,
    write_table,
)
from radclip.evaluation.evaluate import evaluate_features, suite_features, suite_names
from radclip.evaluation.plots import ablation_figure
from radclip.io import mlflow_tracking as tracking
from radclip.jobs.common import (
    ADAPTED_MODELS,
    log,
    model_dir,
    slice_cache_dir,
    stage_main,
    write_effective_params,
    write_metrics,
)

STAGE = "ablate"
PARAMS = ("evaluate", "data.caption", "data.collections", "phantoms.volume_shape")


def run(params: Params, *, progress: bool = True) -> dict:
    """Evaluate the four cells: each encoder's model with its trained adapter, on its own slice cache.
    Writes ``reports/ablation.{json,csv,md,png}``."""
    models = {encoder: model_dir(params, ADAPTED_MODELS[encoder]) for encoder in ENCODERS}
    slice_caches = {encoder: slice_cache_dir(params, encoder) for encoder in ENCODERS}
    suites = suite_names(params)
    rows: list[dict] = []
    loaded = {encoder: RadCLIP.from_pretrained(models[encoder]).eval() for encoder in ENCODERS}
    encoder_only: dict[tuple[str, str], dict] = {}  # 2D suites: same numbers for both poolings
    with tracking.start_run(
        params, stage="ablate", run_name="ablation-grid", tags={"ablation.cells": len(CELLS)}
    ) as parent:
        for cell in CELLS:
            model = loaded[cell.encoder]
            tags = {"ablation.encoder": cell.encoder, "ablation.pooling": cell.pooling,
                    "model.dir": str(models[cell.encoder])}
            with tracking.start_run(params, stage="ablate", run_name=cell.name, nested=True, tags=tags):
                for suite in suites:
                    key = (cell.encoder, suite)
                    if key in encoder_only:
                        kind, metrics = "2d", encoder_only[key]
                    else:
                        features = suite_features(
                            model, params, suite, slice_caches[cell.encoder], pooling=cell.pooling
                        )
                        kind, metrics = features.kind, evaluate_features(model, features, params).metrics
                        if kind == "2d":
                            encoder_only[key] = metrics
                    headline = {k: v for k, v in metrics.items() if "_fold" not in k and "." not in k}
                    tracking.log_metrics({f"{suite}.{k}": v for k, v in headline.items()})
                    rows.append({"label": f"{suite}: {cell.name}", "cell": cell.name, "encoder": cell.encoder,
                                 "pooling": cell.pooling, "suite": suite, "kind": kind, **headline})
        volume_suites = [s for s in suites if any(r["suite"] == s and r["kind"] == "3d" for r in rows)]
        rows += mean_rows(rows, volume_suites)
        checks = {suite: ordering(rows, suite) for suite in volume_suites + ([MEAN_SUITE] if volume_suites else [])}
        reports = params.resolve(params.paths.reports)
        markdown = table_markdown(rows, volume_suites + ([MEAN_SUITE] if volume_suites else []))
        (reports / "ablation.md").write_text(
            "# Ablation (RadCLIP Table III): 2D encoder × slice pooling, 3D suites\n\n"
            "Linear probe accuracy and macro F1 (mean ± std over patient-level folds), image–text matching P@1.\n\n"
            + markdown
            + attention_markdown(rows)
        )
        write_table(reports / "ablation.csv", rows)
        summary = {
            "cells": {cell.name: {r["suite"]: {k: r[k] for k in r if summary_metric(k)}
                                  for r in rows if r["cell"] == cell.name and r["kind"] == "3d"} for cell in CELLS},
            "ordering": checks,
        }
        write_metrics(params, "ablation.json", summary)
        figure_rows = [
            {**next(r for r in rows if r["cell"] == c.name and r["suite"] == MEAN_SUITE),
             "encoder": ENCODER_LABELS[c.encoder], "pooling": POOLING_LABELS[c.pooling]}
            for c in CELLS
        ] if volume_suites else []
        if figure_rows:
            ablation_figure(figure_rows, FIGURE_METRICS, reports / "ablation.png",
                            title="Ablation on the 3D suites (mean over suites)")
        tracking.log_metrics({f"ordering.{suite}.gap": check["gap"] for suite, check in checks.items()})
        for name in ("ablation.md", "ablation.csv", "ablation.json", "ablation.png"):
            if (reports / name).exists():
                tracking.log_artifact(reports / name, "ablation")
        tracking.log_artifact(write_effective_params(params, STAGE, PARAMS), "params")
        summary["mlflow_run_id"] = parent.info.run_id
    log.info("%s", markdown)
    for suite, check in checks.items():
        log.info("%s: fine-tuned+adapter − vanilla+average = %+.3f (fold std %.3f): ordering %s", suite, check["gap"],
                 check["fold_std"], "holds" if check["holds"] else "does NOT hold")
    return summary | {"rows": rows, "markdown": markdown}


def main() -> None:
    stage_main(run)
