"""Stage ``localise``: LRCLR's two arms on the localisation suite and the zero-shot suites (issue 12).

Writes ``reports/localisation.json`` (per finding and heatmap: pointing game, top-2 hit, heatmap
AUROC and IoU with bootstrap CIs and chance levels; zero-shot macro AUROC of both arms with a
paired CI; the pre-registered verdicts), ``reports/localisation.md`` (the same as tables) and
``reports/localisation.png`` (one example per finding, the paper's Fig. 4/5 style); one
MLflow run carries the metrics and files.
"""

from __future__ import annotations

import math
from typing import Any

from radclip.config import Params
from radclip.core.metrics import DETECTION_METRICS, detection_table
from radclip.evaluation.localisation import (
    HEATMAPS,
    TOP_K,
    BoxedSuite,
    ModelMaps,
    boxed_suite,
    detection_thresholds,
    localisation_table,
    model_maps,
    pair_heatmaps,
    paired_auroc_difference,
    patch_grid,
    suite_images,
    validation_images,
    verdicts,
    zero_shot_logits,
)
from radclip.evaluation.plots import localisation_figure
from radclip.io import mlflow_tracking as tracking
from radclip.jobs._inference import load_model
from radclip.jobs.common import (
    MODEL_LRCLR,
    MODEL_LRCLR_CONTROL,
    log,
    model_dir,
    stage_main,
    write_effective_params,
    write_metrics,
)

STAGE = "localise"
PARAMS = ("evaluate.bootstrap", "evaluate.protocol_seed", "inference.device", "lrclr", "data.caption",
          "data.collections")
REPORT = "localisation"
FIGURE = "localisation.png"
TITLES = {"control_rollout": "control: rollout", "lrclr_rollout": "LRCLR: rollout",
          "lrclr_text_regions": "LRCLR: text → regions"}
METRICS = ("pointing", f"top{TOP_K}", "auroc", "iou")


def run(params: Params, *, progress: bool = True) -> dict[str, Any]:
    lrclr = params.lrclr
    # On inference.device, in fp32 even on CUDA (inference.bf16 is not applied): attention rollout multiplies the
    # attention matrices of every layer, where bf16's 8-bit mantissa compounds and can move the selected patches.
    models = {arm: load_model(params, model_dir(params, name))
              for arm, name in (("control", MODEL_LRCLR_CONTROL), ("lrclr", MODEL_LRCLR))}
    suite = boxed_suite(params, lrclr.suite)
    maps = {arm: model_maps(model, suite) for arm, model in models.items()}
    grid = patch_grid(models["lrclr"])
    heatmaps = pair_heatmaps(suite, maps["control"], maps["lrclr"])
    level, n_boot, seed = lrclr.thresholds.chance_ci_level, params.evaluate.bootstrap, params.evaluate.protocol_seed
    table = localisation_table(suite, heatmaps, grid, level=level, n_boot=n_boot, seed=seed,
                               selected={arm: arm_maps.selected for arm, arm_maps in maps.items()})
    zero_shot: dict[str, dict[str, Any]] = {}
    for name in lrclr.zero_shot_suites:
        images = suite_images(params, name)
        validation = validation_images(params, images, suite.region, suite.modality)
        if validation is None:
            log.warning("%s: no %s %s validation images: Table 1's thresholds are P(present) = 0.5", STAGE,
                        suite.region, suite.modality)
        logits, tables = {}, {}
        for arm, model in models.items():
            logits[arm], targets, findings = zero_shot_logits(model, images)
            thresholds = detection_thresholds(model, validation, findings)
            tables[arm] = detection_table(logits[arm], targets, thresholds, findings)
        zero_shot[name] = {"findings": findings, "images": len(targets), "table1": tables,
                           "thresholds_from": "validation" if validation is not None else "P=0.5",
                           **paired_auroc_difference(logits["lrclr"], logits["control"], targets, n_boot=n_boot,
                                                     level=level, seed=seed)}
    result: dict[str, Any] = {
        "suite": suite.name, "patch_grid": grid, "image_size": suite.image_size, "pairs": len(suite.pairs),
        "ci_level": level, "local_weight": lrclr.local_weight, "findings": table, "zero_shot": zero_shot,
        "verdicts": verdicts(table, zero_shot, lrclr.thresholds)}
    reports = params.resolve(params.paths.reports)
    with tracking.start_run(params, stage=STAGE):
        json_path = write_metrics(params, f"{REPORT}.json", result)
        markdown = reports / f"{REPORT}.md"
        markdown.write_text(render_markdown(result))
        figure = localisation_figure(_examples(suite, heatmaps, maps["lrclr"]), TITLES, reports / FIGURE,
                                     title=f"{suite.name}: where each model looks (boxes red, LRCLR regions cyan)")
        tracking.log_metrics(_flat_metrics(result))
        for path in (json_path, markdown, figure, write_effective_params(params, STAGE, PARAMS)):
            tracking.log_artifact(path, REPORT)
    for key, verdict in result["verdicts"].items():
        log.info("%s %s: %s", STAGE, key, "pass" if verdict["pass"] else "FAIL")
    return result


def _examples(suite: BoxedSuite, heatmaps: dict, lrclr_maps: ModelMaps) -> list[dict]:
    """The first pair of each finding (pairs are sorted by image row, so the choice is fixed)."""
    examples, seen = [], set()
    for index, (row, finding) in enumerate(suite.pairs):
        if finding in seen:
            continue
        seen.add(finding)
        examples.append({"image": suite.images[row], "boxes": suite.boxes[(row, finding)], "label": finding,
                         "heatmaps": {name: heatmaps[name][index] for name in HEATMAPS},
                         "selected": lrclr_maps.selected[row]})
    return sorted(examples, key=lambda e: e["label"])


def _flat_metrics(result: dict) -> dict[str, float]:
    flat = {}
    for finding, entry in result["findings"].items():
        key = finding.replace(" ", "_")
        for name in HEATMAPS:
            for metric in METRICS:
                flat[f"{key}.{name}.{metric}"] = entry[name][metric]["mean"]
    for suite, values in result["zero_shot"].items():
        flat.update({f"zero_shot.{suite}.{arm}": values[arm] for arm in ("lrclr", "control", "difference")})
    flat.update({f"verdict.{key}": float(verdict["pass"]) for key, verdict in result["verdicts"].items()})
    return {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not math.isnan(float(v))}


def _cell(summary: dict) -> str:
    mark = " ✓" if summary["beats_chance"] else ""
    return f"{summary['mean']:.3f} [{summary['ci_low']:.3f}, {summary['ci_high']:.3f}] / {summary['chance']:.3f}{mark}"


def render_markdown(result: dict) -> str:
    """The localisation report as Markdown tables (mean [CI] / chance; ✓ where the CI excludes chance)."""
    level = round(100 * result["ci_level"])
    lines = [f"# LRCLR localisation on {result['suite']}", "",
             f"{result['pairs']} (image, finding) pairs with lesion boxes; heatmaps over the {result['patch_grid']} x "
             f"{result['patch_grid']} patch grid of {result['image_size']} px images; λ = {result['local_weight']}. "
             f"Cells: mean [{level} % bootstrap CI] / chance (a uniform heatmap's score); ✓: the CI excludes chance.",
             ""]
    header = "| finding | heatmap | " + " | ".join(METRICS) + " |"
    lines += [header, "|" + "---|" * (2 + len(METRICS))]
    for finding, entry in result["findings"].items():
        label = f"{finding} ({entry['pairs']}, box {entry['box_area_patches']:.2f} patches)"
        for name in HEATMAPS:
            lines.append(f"| {label} | {TITLES[name]} | " + " | ".join(_cell(entry[name][m]) for m in METRICS) + " |")
            label = ""
    lines += ["", "Selected regions (K = heads, rollout per head): how often one touches the finding's boxes, the "
              "ceiling of the text→region heatmap (chance: as many distinct patches at random).", "",
              "| finding | control | lrclr |", "|---|---|---|"]
    for finding, entry in result["findings"].items():
        lines.append(f"| {finding} | " + " | ".join(_cell(entry[f"{arm}_regions"]["regions_hit"])
                                                    for arm in ("control", "lrclr")) + " |")
    lines += ["", "## Zero-shot (global embeddings), macro AUROC", "",
              "| suite | images | lrclr | control | lrclr − control [CI] |", "|---|---|---|---|---|"]
    for suite, values in result["zero_shot"].items():
        lines.append(f"| {suite} | {values['images']} | {values['lrclr']:.3f} | {values['control']:.3f} | "
                     f"{values['difference']:+.3f} [{values['ci_low']:+.3f}, {values['ci_high']:+.3f}] |")
    lines += ["", "Table 1 of the paper: per arm, the mean over findings at each finding's threshold (chosen on the "
              "training collections' validation split, the F1-best there).", "",
              "| suite | arm | " + " | ".join(DETECTION_METRICS) + " |", "|---|---|" + "---|" * len(DETECTION_METRICS)]
    for suite, values in result["zero_shot"].items():
        for arm in ("control", "lrclr"):
            mean = values["table1"][arm]["mean"]
            lines.append(f"| {suite} | {arm} | " + " | ".join(f"{mean[m]:.3f}" for m in DETECTION_METRICS) + " |")
    v = result["verdicts"]
    a, b, c = v["a_text_regions_beat_chance"], v["b_pointing_gain"], v["c_zero_shot_auroc"]
    failing = [f for f, x in a["findings"].items() if not x["pass"]]
    excused = f"; excusable, smaller than one patch: {', '.join(a['excused'])}" if a["excused"] else ""
    lines += ["", "## Pre-registered verdicts (params lrclr.thresholds)", "",
              f"- (a) text→region top-{TOP_K} hit and pointing beat chance on every focal finding: "
              f"**{'pass' if a['pass'] else 'FAIL'}**" + (f" (not beating chance: {', '.join(failing)}{excused})"
                                                         if failing else ""),
              f"- (b) pointing gain of LRCLR's best heatmap ({TITLES[b['best_heatmap']]}) over the control rollout: "
              f"{b['gain']:+.3f} (threshold {b['threshold']}): **{'pass' if b['pass'] else 'FAIL'}**",
              f"- (c) zero-shot macro AUROC lrclr − control, mean over suites: {c['difference']:+.3f} "
              f"(≥ −{c['margin']}): **{'pass' if c['pass'] else 'FAIL'}**", ""]
    return "\n".join(lines)


def main() -> None:
    stage_main(run)


