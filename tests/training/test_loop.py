"""radclip.training.loop: the early-stopping rule of the training loop (the loop itself runs in
tests/training/test_fit.py, on Ray workers and in-process)."""

from __future__ import annotations

from radclip.training.loop import update_early_stopping


def test_early_stopping_counts_epochs_without_improvement():
    state = {"epoch": 0, "best_val": None, "best_epoch": -1, "bad_epochs": 0, "stopped_early": False}
    assert update_early_stopping(state, 0, 1.0, patience=2)
    assert update_early_stopping(state, 1, 0.8, patience=2)
    assert not update_early_stopping(state, 2, 0.9, patience=2) and not state["stopped_early"]
    assert not update_early_stopping(state, 3, 0.8, patience=2)  # equal is no improvement
    assert state["stopped_early"] and state["best_epoch"] == 1 and state["epoch"] == 4
