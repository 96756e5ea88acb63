"""Evaluation figures: real PNGs, inputs validated, colours meaning what the legend says, no pyplot."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.container import BarContainer, ErrorbarContainer
from PIL import Image

from radclip.evaluation import plots

CONFUSION = np.array([[50, 3, 1], [4, 2, 0], [0, 1, 9]])
CLASSES = ["COVID-19 pneumonia", "normal", "tumour"]
WEIGHTS = [np.array([0.05, 0.1, 0.4, 0.3, 0.1, 0.05]), np.array([0.2, 0.5, 0.2, 0.1])]
LESIONS = [[2, 3], [1]]
LABELS = ["Chest CT with COVID-19", "Brain MRI with tumour"]
SCORES = {
    "Chest X-ray": {"Chest X-ray Image": 0.8, "Brain MRI Image": 0.1, "A Puppy": 0.05, "A Cat": 0.05},
    "Brain MRI": {"Brain MRI Image": 0.7, "Chest X-ray Image": 0.2, "A Life Vest": 0.1},
}
ABLATION_METRICS = ["probe_accuracy_mean", "probe_macro_f1_mean", "matching_p1"]
ABLATION_ROWS = [
    {"encoder": "vanilla", "pooling": "average", "probe_accuracy_mean": 0.6, "probe_accuracy_std": 0.05,
     "probe_macro_f1_mean": 0.55, "probe_macro_f1_std": 0.04, "matching_p1": 0.4},
    {"encoder": "fine-tuned", "pooling": "adapter", "probe_accuracy_mean": 0.8, "probe_accuracy_std": 0.03,
     "probe_macro_f1_mean": 0.75, "probe_macro_f1_std": 0.06, "matching_p1": 0.7},
]
HISTORY = [
    {"epoch": 1, "train_loss": 2.0, "val_loss": 1.9},
    {"epoch": 2, "train_loss": 1.5, "val_loss": None},
    {"epoch": 3, "train_loss": 1.2, "val_loss": 1.1},
    {"epoch": 4, "train_loss": 1.0},
    {"epoch": 5, "train_loss": 0.9, "val_loss": 1.3},
]


def _assert_real_png(path):
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= 300 and image.height >= 200
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 5.0
    packed = (pixels[..., 0].astype(np.int32) << 16) | (pixels[..., 1].astype(np.int32) << 8) | pixels[..., 2]
    assert len(np.unique(packed)) > 10  # several distinct colours, not a flat image


def _bar_containers(ax):
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def test_every_figure_writes_a_non_blank_png_into_new_directories(tmp_path):
    written = [
        plots.confusion_matrix_figure(CONFUSION, CLASSES, tmp_path / "a" / "confusion.png", title="confusion"),
        plots.slice_attention_figure(WEIGHTS, LESIONS, LABELS, tmp_path / "b" / "attention.png", title="attention"),
        plots.prompt_scores_figure(SCORES, tmp_path / "c" / "prompts.png", title="prompts"),
        plots.ablation_figure(ABLATION_ROWS, ABLATION_METRICS, tmp_path / "d" / "ablation.png", title="ablation"),
        plots.loss_curves_figure(HISTORY, tmp_path / "e" / "loss.png", title="loss"),
    ]
    assert [p.name for p in written] == ["confusion.png", "attention.png", "prompts.png", "ablation.png", "loss.png"]
    for path in written:
        _assert_real_png(path)


@pytest.mark.parametrize(
    ("matrix", "classes"),
    [(np.zeros((3, 2)), ["a", "b", "c"]), (np.zeros((2, 2)), ["a", "b", "c"]), (np.zeros(3), ["a", "b", "c"])],
    ids=["non-square", "size-mismatch", "one-dimensional"],
)
def test_confusion_figure_rejects_a_matrix_that_does_not_fit_the_classes(tmp_path, matrix, classes):
    with pytest.raises(ValueError, match="confusion matrix"):
        plots.confusion_matrix_figure(matrix, classes, tmp_path / "bad.png", title="bad")
    assert not (tmp_path / "bad.png").exists()


def test_confusion_cells_are_coloured_by_row_fraction_and_labelled_with_counts():
    ax = plots._confusion_matrix(CONFUSION, CLASSES, title="t").axes[0]
    fractions = ax.images[0].get_array()
    np.testing.assert_allclose(fractions, CONFUSION / CONFUSION.sum(axis=1, keepdims=True))
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(v) for v in CONFUSION.ravel())
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")


def test_attention_figure_rejects_an_out_of_range_lesion_index_naming_the_volume(tmp_path):
    with pytest.raises(ValueError, match="Brain MRI with tumour"):
        plots.slice_attention_figure(WEIGHTS, [[2], [4]], LABELS, tmp_path / "bad.png", title="bad")
    with pytest.raises(ValueError, match="Chest CT with COVID-19"):
        plots.slice_attention_figure(WEIGHTS, [[-1], [1]], LABELS, tmp_path / "bad.png", title="bad")


def test_attention_figure_rejects_sequences_of_different_lengths(tmp_path):
    with pytest.raises(ValueError, match="differ in length"):
        plots.slice_attention_figure(WEIGHTS, LESIONS[:1], LABELS, tmp_path / "bad.png", title="bad")


def test_attention_figure_colours_exactly_the_lesion_slices():
    figure = plots._slice_attention(WEIGHTS, LESIONS, LABELS, title="t")
    lesion, other = to_rgba(plots.LESION_COLOR), to_rgba(plots.OTHER_SLICE_COLOR)
    assert lesion != other
    for ax, weights, lesions, label in zip(figure.axes, WEIGHTS, LESIONS, LABELS):
        (bars,) = _bar_containers(ax)
        assert [p.get_height() for p in bars.patches] == pytest.approx(list(weights))
        colours = [p.get_facecolor() for p in bars.patches]
        assert [i for i, c in enumerate(colours) if c == lesion] == lesions
        assert all(c == other for i, c in enumerate(colours) if i not in lesions)
        uniform = [line for line in ax.lines if line.get_linestyle() == "--"]
        assert uniform and uniform[0].get_ydata()[0] == pytest.approx(1 / len(weights))
        assert ax.get_title(loc="left") == label
    legends = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None]
    assert len(legends) == 1
    assert [t.get_text() for t in legends[0].get_texts()] == ["lesion slice", "other slice", "uniform (average pooling)"]


def test_prompt_figure_keeps_one_colour_per_caption_across_groups():
    ax = plots._prompt_scores(SCORES, title="t").axes[0]
    containers = _bar_containers(ax)
    captions = [c.get_label() for c in containers]
    assert captions == ["Chest X-ray Image", "Brain MRI Image", "A Puppy", "A Cat", "A Life Vest"]
    colours = []
    for container in containers:
        per_group = {p.get_facecolor() for p in container.patches}
        assert len(per_group) == 1 and len(container.patches) == len(SCORES)
        colours.append(per_group.pop())
    assert len(set(colours)) == len(captions)
    heights = {c.get_label(): [p.get_height() for p in c.patches] for c in containers}
    assert heights["A Life Vest"] == pytest.approx([0.0, 0.1])  # missing in the first group -> 0
    assert heights["Chest X-ray Image"] == pytest.approx([0.8, 0.2])
    assert ax.get_ylim() == (0.0, 1.0)


def test_ablation_figure_draws_error_bars_only_where_a_std_exists():
    ax = plots._ablation(ABLATION_ROWS, ABLATION_METRICS, title="t").axes[0]
    bars = _bar_containers(ax)
    assert [c.get_label() for c in bars] == ["vanilla + average", "fine-tuned + adapter"]
    errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(errorbars) == len(ABLATION_ROWS)
    for container, row in zip(errorbars, ABLATION_ROWS):
        _, _, (segments,) = container.lines
        spans = sorted(round(float(s[1][1] - s[0][1]) / 2, 6) for s in segments.get_segments())
        assert spans == sorted([row["probe_accuracy_std"], row["probe_macro_f1_std"]])  # none for matching_p1
    assert [t.get_text() for t in ax.get_xticklabels()] == ABLATION_METRICS


def test_ablation_figure_rejects_a_row_missing_a_metric_naming_both(tmp_path):
    rows = [ABLATION_ROWS[0], {k: v for k, v in ABLATION_ROWS[1].items() if k != "matching_p1"}]
    with pytest.raises(ValueError, match=r"fine-tuned \+ adapter.*matching_p1"):
        plots.ablation_figure(rows, ABLATION_METRICS, tmp_path / "bad.png", title="bad")


def test_loss_curves_skip_missing_val_points_and_mark_the_best_epoch():
    ax = plots._loss_curves(HISTORY, title="t").axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert list(lines["train loss"].get_xdata()) == [1, 2, 3, 4, 5]
    assert list(lines["val loss"].get_xdata()) == [1, 3, 5]
    assert list(lines["best val"].get_xdata()) == [3] and list(lines["best val"].get_ydata()) == [1.1]
    assert any("epoch 3" in t.get_text() for t in ax.texts)


def test_drawing_never_imports_pyplot(tmp_path):
    # The package __init__ is swapped for a bare namespace: it imports torch (seconds), and the
    # property under test is this module's, so only plots.py and its own imports run.
    script = textwrap.dedent(f"""
        import pathlib, sys, types
        import numpy as np
        import radclip
        package = types.ModuleType("radclip.evaluation")
        package.__path__ = [str(pathlib.Path(radclip.__file__).parent / "evaluation")]
        sys.modules["radclip.evaluation"] = package
        import radclip.evaluation.plots as plots
        plots.confusion_matrix_figure(np.eye(2, dtype=int), ["a", "b"], pathlib.Path({str(tmp_path / "c.png")!r}), title="t")
        print("pyplot imported:", "matplotlib.pyplot" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c.png").is_file()
    assert result.stdout.strip().endswith("pyplot imported: False")
