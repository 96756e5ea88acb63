"""LRCLR through its stage jobs on the tiny phantoms: two arms that differ only in λ, one MLflow parent, the
local loss not satisfiable by copying the text (the shortcut check), and the localisation stage's reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_params
from mlflow.tracking import MlflowClient

from radclip.config import Params

pytestmark = pytest.mark.slow

LRCLR_TRAIN = {"engine": "local", "epochs": 6, "batch_size": 16, "lr": 2e-3, "patience": 6, "num_workers": 1,
               "max_failures": 0}


def _params(workspace) -> Params:
    raw = tiny_params(workspace)
    return raw.with_values({"lrclr.train": {**raw.lrclr.train.model_dump(), **LRCLR_TRAIN},
                            "lrclr.cross_modal": {"width": 32, "layers": 1, "heads": 4, "dropout": 0.0},
                            "train_2d.engine": "local", "train_2d.num_workers": 1})


@pytest.fixture(scope="module")
def arms(tiny_curated, mlflow_store, tmp_path_factory):
    from radclip.jobs import pretrain_2d, pretrain_lrclr

    workspace = tiny_curated.workspace(tmp_path_factory.mktemp("lrclr"))
    params = _params(workspace)
    pretrain_2d.run(params, progress=False)
    return params, pretrain_lrclr.run(params, progress=False)


def test_the_arms_train_alike_but_for_lambda_under_one_parent_run(arms):
    from radclip.core.models import RadCLIP
    from radclip.jobs.pretrain_lrclr import arm_params

    params, results = arms
    assert set(results) == {"lrclr", "control"}
    assert len(results["lrclr"].history) == len(results["control"].history) == LRCLR_TRAIN["epochs"]
    differing = {key for key, value in arm_params(params, "control").model_dump().items()
                 if value != params.model_dump()[key]}
    assert differing == {"lrclr"}
    assert arm_params(params, "control").lrclr.model_copy(update={"local_weight": 0.5}) == params.lrclr
    client = MlflowClient()
    runs = {arm: client.get_run(result.mlflow_run_id) for arm, result in results.items()}
    parents = {run.data.tags["mlflow.parentRunId"] for run in runs.values()}
    assert len(parents) == 1
    assert {run.data.tags["lrclr.arm"] for run in runs.values()} == {"lrclr", "control"}
    assert "val_local_loss" in runs["lrclr"].data.metrics and "val_local_loss" not in runs["control"].data.metrics
    assert RadCLIP.from_pretrained(results["lrclr"].model_dir).cross_modal is not None
    assert RadCLIP.from_pretrained(results["control"].model_dir).cross_modal is None
    report = json.loads((params.resolve(params.paths.reports) / "pretrain_lrclr.json").read_text())
    assert report["local_weight"] == 0.5 and set(report["arms"]) == {"lrclr", "control"}
    losses = [h["train_local_loss"] for h in results["lrclr"].history]
    assert losses[-1] < losses[0]  # the cross-modal transformer learns


def _shuffled_pairs(captions: list[str]) -> np.ndarray:
    """For each image another whose caption differs (a deterministic cyclic search)."""
    out = []
    for i, caption in enumerate(captions):
        j = next(k % len(captions) for k in range(i + 1, i + len(captions)) if captions[k % len(captions)] != caption)
        out.append(j)
    return np.array(out)


def test_the_local_loss_needs_the_right_image_not_a_copy_of_the_text(arms):
    """v_l sees the caption it is contrasted with, so the local loss could be met by copying the text.
    After training, giving each caption another image's regions must raise it: the image matters."""
    from radclip.core.losses import ClipLoss
    from radclip.core.models import RadCLIP
    from radclip.training.loop import ImageCaptionDataset

    params, results = arms
    model = RadCLIP.from_pretrained(results["lrclr"].model_dir).eval()
    data = ImageCaptionDataset(str(params.resolve(params.paths.curated)), "train")
    images = torch.stack([data[i][0] for i in range(len(data))])
    captions = [data.captions[c] for c in data.caption_ids]
    ids = torch.tensor(np.array(data.caption_ids))
    loss = ClipLoss()
    with torch.no_grad():
        regions = model.encode_regions(images)
        right = model.local_features(regions, captions)
        other = _shuffled_pairs(captions)
        regions.cls_token, regions.regions = regions.cls_token[other], regions.regions[other]
        wrong = model.local_features(regions, captions)
        scale = model.logit_scale_exp()
        right_loss = float(loss(right.image, right.text, scale, ids))
        wrong_loss = float(loss(wrong.image, wrong.text, scale, ids))
    print(f"local loss, right images {right_loss:.3f}, other images {wrong_loss:.3f}")
    assert wrong_loss > right_loss + 0.1, (right_loss, wrong_loss)


def test_localise_scores_three_heatmaps_per_finding_and_writes_its_reports(arms):
    from radclip.jobs import localise

    params, _ = arms
    result = localise.run(params, progress=False)
    reports = params.resolve(params.paths.reports)
    assert json.loads((reports / "localisation.json").read_text())["verdicts"].keys() == {
        "a_text_regions_beat_chance", "b_pointing_gain", "c_zero_shot_auroc"}
    findings = result["findings"]
    assert set(findings) <= {"Atelectasis", "Consolidation", "Pleural Effusion", "Pneumothorax", "Nodule"}
    assert len(findings) >= 4  # every focal finding of the suite that got a box at the tiny size
    for entry in findings.values():
        for heatmap in ("control_rollout", "lrclr_rollout", "lrclr_text_regions"):
            for metric in ("pointing", "top2", "auroc", "iou"):
                summary = entry[heatmap][metric]
                assert 0 <= summary["chance"] <= 1 and summary["n"] >= 1
    assert set(result["zero_shot"]) == set(params.lrclr.zero_shot_suites)
    for values in result["zero_shot"].values():  # the paper's Table 1 per arm, thresholds from the val split
        assert set(values["table1"]) == {"lrclr", "control"}
        for table in values["table1"].values():
            assert set(table["mean"]) == {"specificity", "precision", "recall", "f1", "auc"}
            assert set(table["per_class"]) == set(values["findings"])
    markdown = (reports / "localisation.md").read_text()
    assert "Pre-registered verdicts" in markdown and "text → regions" in markdown and "Table 1" in markdown
    assert (reports / "localisation.png").stat().st_size > 10_000
