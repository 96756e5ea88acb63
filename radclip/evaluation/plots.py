"""Evaluation figures as PNGs.

Figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas, never pyplot:
no GUI backend gets loaded, no global figure state is shared, so drawing is thread-safe.
Each ``*_figure`` function validates its input, writes the PNG and returns its path; the
``_``-prefixed builders return the :class:`Figure` so tests can inspect what was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

DPI = 110
LESION_COLOR = "tab:red"
OTHER_SLICE_COLOR = "0.6"
UNIFORM_LINE_COLOR = "0.2"


def confusion_matrix_figure(matrix: np.ndarray, classes: Sequence[str], path: Path, *, title: str) -> Path:
    """``matrix[i, j]`` = count of true class ``i`` predicted as ``j``; cells coloured by row fraction."""
    return _save(_confusion_matrix(matrix, classes, title=title), path)


def slice_attention_figure(
    weights: Sequence[np.ndarray],
    lesion_slices: Sequence[Sequence[int]],
    labels: Sequence[str],
    path: Path,
    *,
    title: str,
) -> Path:
    """One panel per volume: the adapter's weight per slice, lesion slices in red, uniform 1/S dashed."""
    return _save(_slice_attention(weights, lesion_slices, labels, title=title), path)


def prompt_scores_figure(scores: Mapping[str, Mapping[str, float]], path: Path, *, title: str) -> Path:
    """RadCLIP Fig. 5: per image group, the mean softmax probability of each candidate caption."""
    return _save(_prompt_scores(scores, title=title), path)


def ablation_figure(rows: Sequence[Mapping], metrics: Sequence[str], path: Path, *, title: str) -> Path:
    """RadCLIP Table III as grouped bars: one group per metric, one bar per ``encoder + pooling`` row."""
    return _save(_ablation(rows, metrics, title=title), path)


def loss_curves_figure(history: Sequence[Mapping[str, float]], path: Path, *, title: str) -> Path:
    """Train and validation loss per epoch, the best validation epoch marked."""
    return _save(_loss_curves(history, title=title), path)


def localisation_figure(examples: Sequence[Mapping], heatmap_titles: Mapping[str, str], path: Path, *,
                        title: str) -> Path:
    """LRCLR's Fig. 4/5 style: per example (one row) the image with its lesion boxes, then each heatmap
    over the patch grid laid on the image, boxes in red, the LRCLR arm's selected regions outlined.

    An example: ``image`` (H, W), ``boxes`` [(x, y, w, h)] in its pixels, ``label``, ``heatmaps``
    {name: (grid * grid,)} and ``selected`` (patch indices, any order, repeats allowed).
    """
    return _save(_localisation(examples, heatmap_titles, title=title), path)


# --- builders ---------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="tight")
    FigureCanvasAgg(figure)  # attaches itself; savefig then renders with Agg, whatever the rcParams backend
    return figure


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _confusion_matrix(matrix: np.ndarray, classes: Sequence[str], *, title: str) -> Figure:
    counts = np.asarray(matrix)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {counts.shape}")
    if counts.shape[0] != len(classes):
        raise ValueError(
            f"confusion matrix is {counts.shape[0]}x{counts.shape[1]} but {len(classes)} class names given"
        )
    n = len(classes)
    totals = counts.sum(axis=1, keepdims=True).astype(float)
    # Row-normalised so a rare class with few samples is as readable as a frequent one.
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)

    side = max(4.0, 0.55 * n + 2.5)
    figure = _new_figure(side + 1.0, side)
    ax = figure.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    font = max(5.0, 10.0 - 0.25 * n)
    integral = np.issubdtype(counts.dtype, np.integer) or np.all(np.mod(counts, 1) == 0)
    for i in range(n):
        for j in range(n):
            text = f"{int(counts[i, j])}" if integral else f"{counts[i, j]:.3g}"
            ax.text(j, i, text, ha="center", va="center", fontsize=font,
                    color="white" if fractions[i, j] > 0.5 else "black")
    long_names = any(len(str(c)) > 6 for c in classes)
    ax.set_xticks(range(n), [str(c) for c in classes], rotation=40 if long_names else 0,
                  ha="right" if long_names else "center", rotation_mode="anchor")
    ax.set_yticks(range(n), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return figure


def _slice_attention(
    weights: Sequence[np.ndarray], lesion_slices: Sequence[Sequence[int]], labels: Sequence[str], *, title: str,
) -> Figure:
    if not (len(weights) == len(lesion_slices) == len(labels)):
        raise ValueError(f"weights, lesion_slices and labels differ in length: "
                         f"{len(weights)}, {len(lesion_slices)}, {len(labels)}")
    if not weights:
        raise ValueError("no volumes to draw")
    volumes = []
    for w, lesions, label in zip(weights, lesion_slices, labels):
        w = np.asarray(w, dtype=float)
        if w.ndim != 1 or w.size == 0:
            raise ValueError(f"{label}: slice weights must be a non-empty 1-D array, got shape {w.shape}")
        bad = [int(i) for i in lesions if not 0 <= int(i) < w.size]
        if bad:
            raise ValueError(f"{label}: lesion slice index {bad} out of range for {w.size} slices")
        volumes.append((w, {int(i) for i in lesions}, label))

    figure = _new_figure(8.5, 1.6 * len(volumes) + 1.0)
    axes = figure.subplots(len(volumes), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (w, lesion_set, label) in zip(axes, volumes):
        colors = [LESION_COLOR if i in lesion_set else OTHER_SLICE_COLOR for i in range(w.size)]
        ax.bar(np.arange(w.size), w, width=0.85, color=colors)
        # What global average pooling would give: the baseline the adapter departs from.
        ax.axhline(1.0 / w.size, color=UNIFORM_LINE_COLOR, linestyle="--", linewidth=1.0)
        ax.set_title(str(label), loc="left", fontsize=9)
        ax.set_ylabel("weight")
        ax.set_ylim(0.0, max(float(w.max()), 1.0 / w.size) * 1.15)
    axes[-1].set_xlabel("slice index")
    axes[0].legend(
        handles=[Patch(color=LESION_COLOR, label="lesion slice"), Patch(color=OTHER_SLICE_COLOR, label="other slice"),
                 Line2D([], [], color=UNIFORM_LINE_COLOR, linestyle="--", label="uniform (average pooling)")],
        loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,  # outside, so it never hides a bar
    )
    figure.suptitle(title)
    return figure


def _caption_colors(count: int) -> list:
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(i % palette.N) for i in range(count)]


def _prompt_scores(scores: Mapping[str, Mapping[str, float]], *, title: str) -> Figure:
    groups = list(scores)
    if not groups:
        raise ValueError("no image groups to draw")
    captions = list(dict.fromkeys(c for group in groups for c in scores[group]))  # union, first-seen order
    if not captions:
        raise ValueError("no captions to draw")

    figure = _new_figure(max(6.0, 3.5 + 0.3 * len(groups) * len(captions)), 4.5)
    ax = figure.add_subplot()
    x = np.arange(len(groups))
    width = 0.8 / len(captions)
    # One colour per caption (not per group), so a caption is recognisable across groups.
    for k, (caption, color) in enumerate(zip(captions, _caption_colors(len(captions)))):
        heights = [float(scores[g].get(caption, 0.0)) for g in groups]
        bars = ax.bar(x + (k - (len(captions) - 1) / 2) * width, heights, width=width, color=color, label=caption)
        if len(groups) * len(captions) <= 40:
            ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.set_xticks(x, groups)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("image group")
    ax.set_ylabel("mean softmax probability")
    ax.set_title(title)
    ax.legend(title="caption", fontsize=7, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def _row_label(row: Mapping, index: int) -> str:
    if "encoder" in row and "pooling" in row:
        return f"{row['encoder']} + {row['pooling']}"
    return str(row.get("label", f"row {index}"))


def _std_key(metric: str) -> str:
    return f"{metric.removesuffix('_mean')}_std"


def _present(value) -> bool:
    """Neither missing (None) nor NaN: a metric that was actually measured."""
    if value is None:
        return False
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def _ablation(rows: Sequence[Mapping], metrics: Sequence[str], *, title: str) -> Figure:
    if not rows or not metrics:
        raise ValueError("ablation figure needs at least one row and one metric")
    for index, row in enumerate(rows):
        for metric in metrics:
            if not _present(row.get(metric)):
                raise ValueError(f"ablation row {_row_label(row, index)!r} has no value for metric {metric!r}")

    figure = _new_figure(max(6.5, 3.5 + 0.35 * len(rows) * len(metrics)), 4.5)
    ax = figure.add_subplot()
    x = np.arange(len(metrics))
    width = 0.8 / len(rows)
    for index, (row, color) in enumerate(zip(rows, _caption_colors(len(rows)))):
        positions = x + (index - (len(rows) - 1) / 2) * width
        values = [float(row[m]) for m in metrics]
        ax.bar(positions, values, width=width, color=color, label=_row_label(row, index))
        # Error bars only where a std was recorded (e.g. fold std for probe metrics, none for P@1).
        with_std = [(p, v, float(row[_std_key(m)])) for p, v, m in zip(positions, values, metrics)
                    if _present(row.get(_std_key(m)))]
        if with_std:
            px, py, err = zip(*with_std)
            ax.errorbar(px, py, yerr=err, fmt="none", ecolor="black", elinewidth=1.0, capsize=3, label="_nolegend_")
    long_names = any(len(m) > 12 for m in metrics)
    ax.set_xticks(x, list(metrics), rotation=20 if long_names else 0, ha="right" if long_names else "center",
                  rotation_mode="anchor")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("metric")
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def _loss_curves(history: Sequence[Mapping[str, float]], *, title: str) -> Figure:
    if not history:
        raise ValueError("loss history is empty")

    def points(key: str) -> tuple[list[float], list[float]]:
        kept = [(float(r["epoch"]), float(r[key])) for r in history if _present(r.get(key))]
        return ([e for e, _ in kept], [v for _, v in kept])

    train_epochs, train = points("train_loss")
    val_epochs, val = points("val_loss")
    figure = _new_figure(6.5, 4.0)
    ax = figure.add_subplot()
    ax.plot(train_epochs, train, marker="o", markersize=3, label="train loss")
    if val:
        ax.plot(val_epochs, val, marker="o", markersize=3, label="val loss")
        best = int(np.argmin(val))
        best_epoch, best_loss = val_epochs[best], val[best]
        ax.axvline(best_epoch, color="0.5", linestyle=":", linewidth=1.0)
        ax.plot([best_epoch], [best_loss], marker="*", markersize=12, color="tab:red", linestyle="none",
                label="best val")
        ax.annotate(f"best val {best_loss:.4g}\n(epoch {best_epoch:g})", xy=(best_epoch, best_loss),
                    xytext=(8, 12), textcoords="offset points", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return figure


def _localisation(examples: Sequence[Mapping], heatmap_titles: Mapping[str, str], *, title: str) -> Figure:
    if not examples:
        raise ValueError("localisation_figure needs at least one example")
    names = list(heatmap_titles)
    columns = 1 + len(names)
    figure = _new_figure(2.1 * columns, 2.2 * len(examples) + 0.4)
    figure.suptitle(title, fontsize=10)
    for row, example in enumerate(examples):
        image = np.asarray(example["image"], dtype=np.float32)
        size = image.shape[-1]
        for column in range(columns):
            axis = figure.add_subplot(len(examples), columns, row * columns + column + 1)
            axis.imshow(image, cmap="gray", vmin=0, vmax=255, extent=(0, size, size, 0))
            if column:
                name = names[column - 1]
                heat = np.asarray(example["heatmaps"][name], dtype=np.float64)
                grid = math.isqrt(heat.size)
                if grid * grid != heat.size:
                    raise ValueError(f"heatmap {name!r} of {heat.size} values is not a square patch grid")
                axis.imshow(heat.reshape(grid, grid), cmap="inferno", alpha=0.55, extent=(0, size, size, 0),
                            interpolation="nearest")
                if name.startswith("lrclr"):
                    step = size / grid
                    for index in sorted(set(int(i) for i in example["selected"])):
                        axis.add_patch(Rectangle(((index % grid) * step, (index // grid) * step), step, step,
                                                 fill=False, edgecolor="cyan", linewidth=1.2))
                if row == 0:
                    axis.set_title(heatmap_titles[name], fontsize=8)
            else:
                axis.set_ylabel(str(example["label"]), fontsize=8)
                if row == 0:
                    axis.set_title("image, lesion box", fontsize=8)
            for x, y, w, h in example["boxes"]:
                axis.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=LESION_COLOR, linewidth=1.2))
            axis.set_xlim(0, size)
            axis.set_ylim(size, 0)
            axis.set_xticks([])
            axis.set_yticks([])
    return figure
