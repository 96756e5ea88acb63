"""The ablation grid (RadCLIP Table III, widened): {random init, vanilla, fine-tuned} 2D encoder ×
{global average pooling, the pipeline's trained adapter}, plus the fine-tuned encoder with the other
adapter reducers (the paper's literal mean of MHSA(I + PE) among them), each cell over several seeds,
and the pre-registered verdicts.

Encoders: ``random`` is the starting CLIP's architecture with fresh weights (``models/radclip-random``),
``vanilla`` the starting CLIP itself (``models/radclip-init``: the general-domain CLIP of
``pretrain_general``, or real weights), ``finetuned`` the 2D-pretrained one. Each has its own
slice cache. Seed k trains the adapter with ``train_adapter.loop_seed + k`` and runs the probes
with ``evaluate.protocol_seed + k``; average pooling has no training, so only its probes vary.
A cell's number is the mean over seeds; beside it the std over seeds (ddof 1) and the fold std
(the mean over seeds of the probe's std over patient folds).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ENCODERS = ("random", "vanilla", "finetuned")
ENCODER_LABELS = {"random": "Random init", "vanilla": "Vanilla CLIP", "finetuned": "Fine-tuned"}
ADAPTER_REDUCERS = ("attention", "mhsa_mean", "residual_mean")  # the reducers that train (model.adapter.reducer)
REDUCER_LABELS = {"attention": "query over MHSA(I + PE)", "mhsa_mean": "paper's mean of MHSA(I + PE)",
                  "residual_mean": "mean of I + gated MHSA(I + PE)"}
# Per suite, the table's columns: (metric key, header).
TABLE_METRICS = (("probe_accuracy", "Acc"), ("probe_macro_f1", "F1"), ("matching_p1", "P@1"))
SEED_METRICS = ("probe_accuracy_mean", "probe_macro_f1_mean", "matching_p1", "zero_shot_top1",
                "attention_lesion_mass", "attention_lesion_mass_uniform", "attention_lesion_auroc")
FOLD_STD = {"probe_accuracy": "probe_accuracy_std", "probe_macro_f1": "probe_macro_f1_std"}
FIGURE_METRICS = ("probe_accuracy", "probe_macro_f1", "matching_p1")
MEAN_SUITE = "mean_3d"  # each metric averaged over the 3D suites


@dataclass(frozen=True)
class Cell:
    encoder: str  # random | vanilla | finetuned
    pooling: str  # average, or the adapter's reducer
    variant: bool = False  # an adapter other than the pipeline's (the reducer comparison rows)

    @property
    def name(self) -> str:
        if self.pooling == "average":
            return f"{self.encoder}+average"
        return f"{self.encoder}+adapter" + (f"-{self.pooling}" if self.variant else "")

    @property
    def label(self) -> str:
        if self.pooling == "average":
            return "Global average pooling"
        return f"Slice pooling adapter ({REDUCER_LABELS[self.pooling]})"

    @property
    def trains_adapter(self) -> bool:
        return self.pooling != "average"


def grid_cells(reducer: str) -> tuple[Cell, ...]:
    """Table III's 2 × 3 grid with the pipeline's adapter (``reducer``: what ``pretrain_adapter`` trains), plus
    the fine-tuned encoder with each other trainable reducer (the paper's literal formula among them)."""
    if reducer not in ADAPTER_REDUCERS:
        raise ValueError(f"the ablation needs a trainable adapter reducer ({', '.join(ADAPTER_REDUCERS)}), "
                         f"got {reducer!r}")
    grid = tuple(Cell(encoder, pooling) for encoder in ENCODERS for pooling in ("average", reducer))
    return grid + tuple(Cell("finetuned", other, variant=True) for other in ADAPTER_REDUCERS if other != reducer)


def _metric_name(key: str) -> str:
    return key.removesuffix("_mean") if key in ("probe_accuracy_mean", "probe_macro_f1_mean") else key


def aggregate(per_seed: Sequence[dict]) -> dict[str, float]:
    """One cell on one suite: per metric the mean and std over seeds, and the probes' mean fold std."""
    out: dict[str, float] = {"seeds": float(len(per_seed))}
    for key in SEED_METRICS:
        values = [row[key] for row in per_seed if key in row]
        if len(values) != len(per_seed):
            continue
        name = _metric_name(key)
        out[name] = float(np.mean(values))
        out[f"{name}_seed_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    for name, fold_key in FOLD_STD.items():
        if all(fold_key in row for row in per_seed):
            out[f"{name}_fold_std"] = float(np.mean([row[fold_key] for row in per_seed]))
    return out


def mean_over_suites(table: dict[str, dict[str, dict]], suites: Sequence[str]) -> dict[str, dict]:
    """Per cell, every metric (and its stds) averaged over ``suites`` (the ``mean_3d`` row)."""
    means = {}
    for cell, by_suite in table.items():
        rows = [by_suite[s] for s in suites if s in by_suite]
        if rows:
            keys = [k for k in rows[0] if all(k in r for r in rows)]
            means[cell] = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return means


def _check(name: str, value: float, bound: float, holds: bool, rule: str) -> dict:
    return {"name": name, "value": float(value), "threshold": float(bound), "passed": bool(holds), "rule": rule}


def verdicts(
    table: dict[str, dict[str, dict]],
    *,
    suites: Sequence[str],
    chance: dict[str, float],
    focal_suites: Sequence[str],
    global_suites: Sequence[str],
    thresholds: dict[str, float],
    general_zero_shot: dict | None,
) -> dict[str, dict]:
    """The pre-registered criteria (a)–(e) on seed means; each with its value, bound and pass/fail.

    ``table[cell][suite]`` holds :func:`aggregate` rows; ``chance[suite]`` the majority-class rate.
    """
    out: dict[str, dict] = {}

    def acc(cell: str, suite: str) -> float:
        return table[cell][suite]["probe_accuracy"]

    over_random = {s: acc("vanilla+average", s) - acc("random+average", s) for s in suites}
    worst = min(over_random, key=lambda s: over_random[s])
    out["a_general_over_random"] = _check(
        "vanilla+average probe − random+average probe, worst suite", over_random[worst],
        thresholds["general_over_random"],
        over_random[worst] >= thresholds["general_over_random"], f"≥ threshold on every suite (worst: {worst})")
    out["a_general_over_random"]["per_suite"] = over_random
    over_chance = float(np.mean([acc("vanilla+average", s) - chance[s] for s in suites]))
    out["a_general_over_chance"] = _check(
        "vanilla+average probe − chance, mean of the suites", over_chance, thresholds["general_over_chance"],
        over_chance >= thresholds["general_over_chance"], "≥ threshold")
    gain = float(np.mean([table["finetuned+average"][s]["matching_p1"] - table["vanilla+average"][s]["matching_p1"]
                          for s in suites]))
    out["b_matching_gain"] = _check("matching P@1, fine-tuned − vanilla (average pooling), mean of the suites", gain,
                                    thresholds["matching_gain"], gain >= thresholds["matching_gain"], "≥ threshold")
    for suite in focal_suites:
        best, base = table["finetuned+adapter"][suite], table["vanilla+average"][suite]
        gap = best["probe_accuracy"] - base["probe_accuracy"]
        spread = max(best["probe_accuracy_seed_std"], base["probe_accuracy_seed_std"])
        bound = thresholds["focal_seed_stds"] * spread
        out[f"c_focal_gain.{suite}"] = _check(
            f"{suite}: fine-tuned+adapter − vanilla+average probe", gap, bound, gap > bound,
            f"> {thresholds['focal_seed_stds']:g} × the larger seed std ({spread:.4f})")
    for suite in global_suites:
        difference = acc("finetuned+adapter", suite) - acc("finetuned+average", suite)
        out[f"d_global_adapter.{suite}"] = _check(
            f"{suite}: fine-tuned+adapter − fine-tuned+average probe", difference, -thresholds["global_adapter_margin"],
            difference >= -thresholds["global_adapter_margin"], "≥ −margin")
    if general_zero_shot is not None:
        value = general_zero_shot["mean_accuracy"]
        out["e_general_zero_shot"] = _check(
            f"general CLIP zero-shot on held-out pairs (chance {general_zero_shot['chance']:.3f})", value,
            thresholds["general_zero_shot"], value >= thresholds["general_zero_shot"], "≥ threshold")
    return out


def _cell_text(row: dict, metric: str) -> str:
    text = f"{row[metric]:.3f} ± {row[f'{metric}_seed_std']:.3f}"
    if f"{metric}_fold_std" in row:
        text += f" (folds ± {row[f'{metric}_fold_std']:.3f})"
    return text


def table_markdown(table: dict[str, dict[str, dict]], suites: Sequence[str], cells: Sequence[Cell]) -> str:
    """One row per cell; per suite Acc / F1 / P@1 as seed mean ± seed std (fold std in brackets)."""
    header = ["2D encoder", "Slice pooling"] + [f"{suite} {label}" for suite in suites for _, label in TABLE_METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in cells:
        row_cells = [ENCODER_LABELS[cell.encoder], cell.label]
        for suite in suites:
            row = table[cell.name].get(suite)
            row_cells += [_cell_text(row, metric) if row and metric in row else "–" for metric, _ in TABLE_METRICS]
        lines.append("| " + " | ".join(row_cells) + " |")
    return "\n".join(lines) + "\n"


def verdict_markdown(checks: dict[str, dict]) -> str:
    lines = ["", "Pre-registered criteria (params `ablate.thresholds`), on seed means:", "",
             "| criterion | value | rule | verdict |", "|---|---|---|---|"]
    for key, check in checks.items():
        lines.append(f"| {key}: {check['name']} | {check['value']:+.3f} | "
                     f"{check['rule']} ({check['threshold']:+.3f}) | "
                     f"{'pass' if check['passed'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def attention_markdown(means: dict[str, dict], grid: Sequence[Cell]) -> str:
    """Where each adapter cell put its weight, ``means`` averaged over the suites with findings: the mass on
    the finding slices the phantoms recorded (against the uniform share) and the within-volume AUROC.
    Empty without truth."""
    cells = [c for c in grid if "attention_lesion_mass" in means.get(c.name, {})]
    if not cells:
        return ""
    lines = ["", "Attention on the recorded finding slices (mean over the focal 3D suites and seeds):", "",
             "| 2D encoder | Slice pooling | mass on finding slices (uniform) | AUROC, finding vs other slices |",
             "|---|---|---|---|"]
    for cell in cells:
        row = means[cell.name]
        lines.append(f"| {ENCODER_LABELS[cell.encoder]} | {cell.label} | "
                     f"{row['attention_lesion_mass']:.3f} ({row['attention_lesion_mass_uniform']:.3f}) | "
                     f"{row['attention_lesion_auroc']:.3f} |")
    return "\n".join(lines) + "\n"


def write_table(path: Path, rows: list[dict]) -> None:
    columns = ["cell", "encoder", "pooling", "suite", "seed"]
    columns += sorted({key for row in rows for key in row} - set(columns))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
