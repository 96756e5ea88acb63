"""CXR-CML through its stage job on the tiny phantoms: four arms that differ only in captions and metric
loss under one MLflow parent, pseudo-labels refitted each epoch, and the long-tail report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import tiny_params
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score

from radclip.config import Params

pytestmark = pytest.mark.slow

CML_TRAIN = {"engine": "local", "epochs": 2, "batch_size": 16, "lr": 1e-3, "patience": 2, "num_workers": 1,
             "max_failures": 0}


def _params(workspace) -> Params:
    raw = tiny_params(workspace)
    return raw.with_values({"cml.train": {**raw.cml.train.model_dump(), **CML_TRAIN}, "cml.seeds": 2,
                            "cml.pca_dims": 8, "evaluate.bootstrap": 20,
                            "train_2d.engine": "local", "train_2d.num_workers": 1})


@pytest.fixture(scope="module")
def stage(tiny_curated, mlflow_store, tmp_path_factory):
    from radclip.jobs import finetune_cml, pretrain_2d

    workspace = tiny_curated.workspace(tmp_path_factory.mktemp("cml"))
    params = _params(workspace)
    pretrain_2d.run(params, progress=False)
    return params, finetune_cml.run(params, progress=False)


def test_four_arms_two_seeds_one_parent_and_the_report(stage):
    from radclip.core.models import RadCLIP
    from radclip.jobs.finetune_cml import arm_model_name
    from radclip.jobs.common import model_dir

    params, report = stage
    assert set(report["arms"]) == {"control", "meta", "gauss", "t"}
    assert all(arm["seeds"] == 2 for arm in report["arms"].values())
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(params.mlflow.experiment).experiment_id],
        filter_string="tags.`cml.arm` != ''")
    assert len(runs) == 8 and len({run.data.tags["mlflow.parentRunId"] for run in runs}) == 1
    metric_runs = {run.data.tags["cml.arm"] for run in runs if "train_metric_loss" in run.data.metrics}
    assert metric_runs == {"gauss", "t"}  # only the mixture arms train with triplets
    assert {run.data.tags["cml.arm"] for run in runs if "nmi" in run.data.metrics} == {"gauss", "t"}
    for arm in report["arms"]:  # seed 0's model is kept, the others' are not
        RadCLIP.from_pretrained(model_dir(params, arm_model_name(arm)))
    assert not (params.resolve(params.paths.tmp) / "finetune_cml").exists()
    reports = params.resolve(params.paths.reports)
    assert json.loads((reports / "longtail.json").read_text())["verdicts"].keys() == report["verdicts"].keys()
    markdown = (reports / "longtail.md").read_text()
    assert "| t |" in markdown and "t-control" in markdown and "Pre-registered verdicts" in markdown
    assert set(report["nmi_per_epoch"]) == {"gauss", "t"} and len(report["nmi_per_epoch"]["t"]) == 2
    assert all(0 <= v <= 1 for v in report["nmi_last_epoch"].values())
    comparison = report["comparisons"]["t-control"]["total"]
    assert comparison["difference"] == pytest.approx(report["arms"]["t"]["total"] - report["arms"]["control"]["total"])
    assert comparison["ci_low"] <= comparison["ci_high"]


def test_rare_classes_come_from_the_collections_training_counts(stage):
    import pandas as pd

    params, report = stage
    manifest = pd.read_parquet(params.resolve(params.paths.curated) / "manifest.parquet")
    train = manifest[(manifest["collection"] == params.cml.collection) & (manifest["split"] == "train")]
    for c in report["classes"]:
        share = sum(c in str(v).split("|") for v in train["conditions"]) / len(train)
        assert report["training_shares"][c] == pytest.approx(share)
        assert (c in report["rare_classes"]) == (share < params.evaluate.rare_fraction)


def test_vectorised_auroc_matches_scikit_learn():
    from radclip.evaluation.longtail import auroc_columns

    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=(60, 5)), 1)  # rounded: ties, which both must average alike
    targets = (rng.uniform(size=(60, 5)) < 0.3).astype(int)
    targets[:, 4] = 0  # one class absent: no AUROC
    ours = auroc_columns(scores, targets)
    assert np.isnan(ours[4])
    np.testing.assert_allclose(ours[:4], [roc_auc_score(targets[:, c], scores[:, c]) for c in range(4)])


def test_an_unknown_arm_and_too_many_components_are_refused(tiny_curated, tmp_path):
    from radclip.training.cml import LongTailDataset, arm_spec, mixture_components

    with pytest.raises(ValueError, match="unknown CXR-CML arm"):
        arm_spec("gaussian")
    params = tiny_curated.params
    dataset = LongTailDataset(params, str(tiny_curated.curated_dir), "train", "t")
    with pytest.raises(ValueError, match="mixture components need more"):
        mixture_components(params.with_values({"cml.components": len(dataset)}), dataset)
