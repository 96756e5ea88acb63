"""The ablation grid (RadCLIP Table III): {vanilla, fine-tuned} 2D encoder × {average pooling, trained adapter}.

The vanilla encoder is the starting weights of 2D pretraining (``models/radclip-init``);
each encoder has its own slice cache and its own adapter trained on that cache
(``pretrain_adapter@vanilla`` / ``@finetuned``). Global average pooling needs no
training: the mean of a volume's slice embeddings. Every cell is evaluated with the
same protocol as the ``evaluate`` stage, each as an MLflow child run under one parent
run that also logs the table (Markdown + CSV) and its bar chart.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

ENCODERS = ("vanilla", "finetuned")
POOLINGS = ("average", "adapter")
ENCODER_LABELS = {"vanilla": "Vanilla CLIP", "finetuned": "Fine-tuned"}
POOLING_LABELS = {"average": "Global average pooling", "adapter": "Slice pooling adapter"}
# Per 3D suite, the Table III columns: (metric key, header).
TABLE_METRICS = (("probe_accuracy", "Acc"), ("probe_macro_f1", "F1"), ("matching_p1", "P@1"))
FIGURE_METRICS = ("probe_accuracy_mean", "probe_macro_f1_mean", "matching_p1")
MEAN_SUITE = "mean_3d"  # each metric (and its fold std) averaged over the 3D suites


@dataclass(frozen=True)
class Cell:
    encoder: str  # "vanilla" | "finetuned"
    pooling: str  # "average" | "adapter"

    @property
    def name(self) -> str:
        return f"{self.encoder}+{self.pooling}"


CELLS = tuple(Cell(encoder, pooling) for encoder in ENCODERS for pooling in POOLINGS)


def ordering(rows: list[dict], suite: str, metric: str = "probe_accuracy") -> dict:
    """Table III's claim on one suite: fine-tuned + adapter beats vanilla + average pooling
    by more than the larger of their fold standard deviations."""
    by_cell = {row["cell"]: row for row in rows if row["suite"] == suite}
    best, worst = by_cell["finetuned+adapter"], by_cell["vanilla+average"]
    gap = best[f"{metric}_mean"] - worst[f"{metric}_mean"]
    spread = max(best[f"{metric}_std"], worst[f"{metric}_std"])
    return {"gap": gap, "fold_std": spread, "holds": bool(gap > spread)}


def _cell_text(row: dict, metric: str) -> str:
    if f"{metric}_mean" in row:
        return f"{row[f'{metric}_mean']:.3f} ± {row[f'{metric}_std']:.3f}"
    return f"{row[metric]:.3f}"


def table_markdown(rows: list[dict], suites: list[str]) -> str:
    """Paper Table III layout: one row per cell, per 3D suite Acc / F1 (mean ± std over folds) and P@1."""
    header = ["2D encoder", "Slice pooling"] + [f"{suite} {label}" for suite in suites for _, label in TABLE_METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in CELLS:
        cells = [ENCODER_LABELS[cell.encoder], POOLING_LABELS[cell.pooling]]
        for suite in suites:
            row = next(r for r in rows if r["cell"] == cell.name and r["suite"] == suite)
            cells += [_cell_text(row, metric) for metric, _ in TABLE_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def attention_markdown(rows: list[dict]) -> str:
    """Where each cell's pooling put its weight, on the 3D suites' mean row: the mass on the finding
    slices the phantoms recorded (against what average pooling puts there) and the within-volume
    AUROC of the weights. Empty without recorded finding slices (real data)."""
    means = {row["cell"]: row for row in rows if row["suite"] == MEAN_SUITE and "attention_lesion_mass" in row}
    if not means:
        return ""
    lines = ["", "Attention on the recorded finding slices (mean over the 3D suites):", "",
             "| 2D encoder | Slice pooling | mass on finding slices (uniform) | AUROC, finding vs other slices |",
             "|---|---|---|---|"]
    for cell in CELLS:
        row = means[cell.name]
        lines.append(f"| {ENCODER_LABELS[cell.encoder]} | {POOLING_LABELS[cell.pooling]} | "
                     f"{row['attention_lesion_mass']:.3f} ({row['attention_lesion_mass_uniform']:.3f}) | "
                     f"{row['attention_lesion_auroc']:.3f} |")
    return "\n".join(lines) + "\n"


def write_table(path: Path, rows: list[dict]) -> None:
    columns = ["label", "cell", "encoder", "pooling", "suite", "kind"]
    columns += sorted({key for row in rows for key in row} - set(columns))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def summary_metric(key: str) -> bool:
    """Metrics of the grid summary and the mean rows: folds' mean and std, matching P@1, and the
    attention on the recorded finding slices (phantom suites)."""
    return key.endswith(("_mean", "_std")) or key == "matching_p1" or key.startswith("attention_lesion")


def mean_rows(rows: list[dict], volume_suites: list[str]) -> list[dict]:
    """Per cell, a ``mean_3d`` row: each metric (and its fold std, and where the phantoms recorded the
    finding slices, the attention on them) averaged over the 3D suites."""
    means = []
    for cell in CELLS if volume_suites else ():
        selected = [r for r in rows if r["cell"] == cell.name and r["suite"] in volume_suites]
        keys = [k for k in selected[0] if summary_metric(k) and all(k in r for r in selected)]
        means.append({"label": f"{MEAN_SUITE}: {cell.name}", "cell": cell.name, "encoder": cell.encoder,
                      "pooling": cell.pooling, "suite": MEAN_SUITE, "kind": "3d",
                      **{k: sum(r[k] for r in selected) / len(selected) for k in keys}})
    return means
