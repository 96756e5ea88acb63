"""radclip.evaluation.evaluate: evaluation refuses records shared with training (the suite metrics of a
trained model: tests/training/test_fit.py, which trains one; behaviour: tests/evaluation/test_model_behaviour.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from radclip.evaluation.evaluate import LeakageError, check_no_leakage


def test_evaluation_refuses_records_shared_with_training(tiny_curated, tmp_path):
    source = tiny_curated.curated_dir / "manifest.parquet"
    check_no_leakage(source.parent)  # curation keeps them apart
    manifest = pd.read_parquet(source)
    evaluation = manifest.index[manifest["role"] == "eval"][0]
    manifest.loc[evaluation, "patient_hash"] = manifest.loc[manifest["role"] == "train", "patient_hash"].iloc[0]
    manifest.to_parquet(tmp_path / "manifest.parquet")
    with pytest.raises(LeakageError, match=manifest.loc[evaluation, "source_path"]):
        check_no_leakage(tmp_path)
