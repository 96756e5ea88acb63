"""Training behaviour through the stage jobs (radclip.jobs.<stage>.run): Ray Train on 2 CPU workers learns,
resumes exactly after a killed worker, matches a single process, logs lineage to MLflow, and the adapter stage
trains only the adapter; then evaluation and the ablation of the trained models."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers import assert_resumed_like_uninterrupted, tiny_params
from mlflow.tracking import MlflowClient

from radclip.config import Params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def curated(tiny_curated, mlflow_store, tmp_path_factory):
    """This module's workspace: the shared tiny curated phantoms (read only) under raw/ and curated/,
    models, reports and scratch of its own, and an MLflow store of its own."""
    return tiny_curated.workspace(tmp_path_factory.mktemp("training"))


def _params(tmp: Path, **train_2d) -> Params:
    return tiny_params(tmp, train_2d=train_2d) if train_2d else tiny_params(tmp)


@pytest.fixture(scope="module")
def ray_run(curated):
    from radclip.jobs import pretrain_2d

    return pretrain_2d.run(_params(curated, engine="ray", num_workers=2), progress=False)


def _training_split_loss(model, params: Params, stage: str) -> float:
    """InfoNCE of ``model`` (eval mode, one batch) on the training split, measured outside the training
    loop: the tiny phantoms' validation split holds a handful of records, so its loss is noise."""
    import torch

    from radclip.core.losses import ClipLoss
    from radclip.jobs.common import slice_cache_dir
    from radclip.training.loop import ImageCaptionDataset

    model.eval()
    with torch.no_grad():
        if stage == "2d":
            images = ImageCaptionDataset(str(params.resolve(params.paths.curated)), "train")
            features = model.encode_image(torch.stack([images[i][0] for i in range(len(images))]))
            captions, ids = images.captions, torch.as_tensor(images.caption_ids)
        else:
            from radclip.data.slice_cache import SliceCacheDataset

            volumes = SliceCacheDataset(slice_cache_dir(params), query="role == 'train' and split == 'train'")
            slices, masks, ids = (torch.stack([torch.as_tensor(volumes[i][k]) for i in range(len(volumes))])
                                  for k in range(3))
            features, captions = model.pool_slices(slices, masks), volumes.captions
        texts = model.encode_text(list(captions))[ids]
        return float(ClipLoss()(features, texts, model.logit_scale_exp(), ids))


def test_two_ray_workers_lower_the_loss(curated, ray_run):
    from radclip.core.models import RadCLIP
    from radclip.jobs.common import MODEL_INIT, model_dir

    history = ray_run.history
    assert len(history) == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    params = _params(curated, engine="ray", num_workers=2)
    start = RadCLIP.from_pretrained(model_dir(params, MODEL_INIT))
    trained = RadCLIP.from_pretrained(ray_run.model_dir)  # the best-validation epoch's weights
    assert _training_split_loss(trained, params, "2d") < _training_split_loss(start, params, "2d")
    assert ray_run.workers == 2


def test_run_carries_lineage_and_per_epoch_metrics(ray_run):
    run = MlflowClient().get_run(ray_run.mlflow_run_id)
    tags = run.data.tags
    for key in ("git.commit", "data.curated_hash", "params.digest", "radclip.stage"):
        assert key in tags
    assert tags["ray.workers"] == "2" and tags["radclip.stage"] == "pretrain_2d"
    assert run.data.params["train_2d.num_workers"] == "2"
    assert run.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val_loss")]
    assert steps == [0, 1, 2]
    assert {"lr", "temperature", "pairs_per_second", "train_loss"} <= set(run.data.metrics)
    # the model is the run's LoggedModel, and the curated data's preprocessing contract travels with it
    saved = f"artifacts/{Path(ray_run.model_dir).name}"  # the saved directory, under the pyfunc's artifacts
    artifacts = {Path(a.path).name for a in MlflowClient().list_logged_model_artifacts(ray_run.mlflow_model_id, saved)}
    assert {"config.json", "preprocessing.json"} <= artifacts
    effective = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "params")}
    assert "params/pretrain_2d.yaml" in effective


def test_saved_model_holds_the_best_epoch_weights(ray_run):
    from radclip.core.models import RadCLIP

    model = RadCLIP.from_pretrained(ray_run.model_dir)
    assert ray_run.best_epoch == int(np.argmin([h["val_loss"] for h in ray_run.history]))
    assert model.encode_text(["Normal Chest CT"]).shape[-1] == 64


def test_resume_after_a_killed_worker_ends_at_the_same_metrics(curated, ray_run):
    from radclip.jobs import pretrain_2d

    resumed = pretrain_2d.run(_params(curated, engine="ray", num_workers=2), progress=False, fail_at=(1, 1))
    assert_resumed_like_uninterrupted(resumed, ray_run)


def test_single_process_matches_two_workers_at_equal_global_batch(curated, ray_run):
    from radclip.jobs import pretrain_2d

    local = pretrain_2d.run(_params(curated, engine="local"), progress=False)
    for ray_epoch, local_epoch in zip(ray_run.history, local.history, strict=True):
        assert local_epoch["val_loss"] == pytest.approx(ray_epoch["val_loss"], rel=1e-4)


@pytest.fixture(scope="module")
def adapter_run(curated, ray_run):
    from radclip.jobs import embed_slices, pretrain_adapter

    params = _params(curated)
    info = embed_slices.run(params, progress=False)
    assert info["count"] > 0
    return pretrain_adapter.run(params, progress=False)


def test_adapter_stage_trains_only_the_adapter(curated, adapter_run, ray_run):
    from radclip.core.models import RadCLIP
    from radclip.training.loop import fresh_adapter

    result = adapter_run
    params = _params(curated)
    # one training batch per epoch and a validation split of a volume or two: both losses are noise; the
    # trained adapter must fit the training volumes better than the fresh one it started from
    before, after = RadCLIP.from_pretrained(ray_run.model_dir), RadCLIP.from_pretrained(result.model_dir)
    fresh_adapter(before, params, params.train_adapter.loop_seed)
    assert _training_split_loss(after, params, "adapter") < _training_split_loss(before, params, "adapter")
    for (name, p_before), (_, p_after) in zip(before.clip.named_parameters(), after.clip.named_parameters()):
        assert np.array_equal(p_before.detach().numpy(), p_after.detach().numpy()), f"{name} changed"
    changed = [
        name
        for (name, a), (_, b) in zip(before.adapter.named_parameters(), after.adapter.named_parameters())
        if not np.array_equal(a.detach().numpy(), b.detach().numpy())
    ]
    assert changed, "the adapter did not train"


def test_ray_workers_stop_when_the_driver_asks_and_fits_in_one_session_share_its_ray(curated):
    """The sweep's pruner lives in the driver: it sees each epoch the workers reported and its stop reaches them
    before the next epoch starts. A job that fits several times (arms, seeds) starts Ray once: every fit joins
    the session, which outlives them all and ends with it; in-process fits start no Ray at all."""
    import ray

    from radclip.io.ray_train import trainer_session
    from radclip.jobs.common import vocabulary
    from radclip.training.fit import fit

    params = _params(curated, engine="ray", num_workers=2, epochs=20, patience=20)
    jobs = []
    with trainer_session(params, params.train_2d):
        for k in range(2):
            seen: list[int] = []

            def prune_after_first_epoch(metrics: dict, seen: list[int] = seen) -> bool:
                seen.append(int(metrics["epoch"]))
                return True

            result = fit(params, "2d", data_dir=params.resolve(params.paths.curated), vocabulary=vocabulary(params),
                         out_dir=curated / f"stopped-{k}", on_epoch=prune_after_first_epoch)
            assert result.stopped_by_callback and seen == [0]
            assert [int(epoch["epoch"]) for epoch in result.history] == [0]  # stopped right after that epoch
            assert ray.is_initialized(), "a fit shut down the session it joined"
            jobs.append(ray.get_runtime_context().get_job_id())
    assert jobs[0] == jobs[1]  # one driver connection: Ray was not restarted between the fits
    assert not ray.is_initialized()
    with trainer_session(params, _params(curated, engine="local").train_2d):
        assert not ray.is_initialized()


def test_a_crashing_run_ends_failed(curated):
    from radclip.training.fit import fit

    params = _params(curated, engine="local")
    with pytest.raises(Exception):
        fit(params, "2d", data_dir=curated / "does-not-exist", vocabulary=["Normal Chest CT"], out_dir=curated / "x")
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(params.mlflow.experiment).experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert runs[0].info.status == "FAILED"


def _experiment_runs(params: Params, filter_string: str) -> list:
    client = MlflowClient()
    return client.search_runs([client.get_experiment_by_name(params.mlflow.experiment).experiment_id], filter_string)


@pytest.fixture(scope="module")
def evaluation(curated, adapter_run):
    """The pipeline's evaluate stage on the pipeline's final model (the adapter run's)."""
    from radclip.jobs import evaluate
    from radclip.jobs.common import MODEL_FINAL, model_dir

    params = _params(curated)
    assert Path(adapter_run.model_dir) == model_dir(params, MODEL_FINAL)  # the pipeline's model is evaluated
    return evaluate.run(params, progress=False)


def test_evaluate_scores_every_suite_and_logs_a_run(curated, adapter_run, evaluation):
    import json

    from radclip.evaluation.evaluate import FIGURES_DIR, suite_names

    params = _params(curated)
    results = evaluation
    suites = set(suite_names(params))  # evaluate.suites: the evaluation collections but the localisation and
    # long-tail suites (scored by their own stages)
    assert suites == {c.name for c in params.data.collections if c.role == "eval"} - {params.lrclr.suite,
                                                                                        params.cml.suite}
    assert set(results) == suites
    assert {results[s]["kind"] for s in suites} == {"2d", "3d"}
    # 3D suites whose volumes carry a focal finding (the sex suite's label is the whole head: none)
    focal = {s for s in suites if results[s]["kind"] == "3d" and s != "phantom_brain_mri_3d_sex"}
    for suite, metrics in results.items():
        assert 0.0 <= metrics["probe_accuracy_mean"] <= 1.0 and 0.0 <= metrics["matching_p1"] <= 1.0
        assert metrics["records"] > 0
        # bootstrap intervals bracket the point estimate; prompt-pair AUROC per condition
        for name in ("matching_p1", "zero_shot_top1"):
            assert metrics[f"{name}_ci_low"] <= metrics[name] <= metrics[f"{name}_ci_high"]
        assert 0.0 <= metrics["multilabel_auroc_macro"] <= 1.0
        assert any(key.startswith("multilabel_auroc.") for key in metrics)
        # phantom volumes: how the adapter's weights find the recorded finding slices
        if suite in focal:
            assert 0.0 < metrics["attention_lesion_mass_uniform"] < 1.0
            assert 0.0 <= metrics["attention_lesion_auroc"] <= 1.0
        else:
            assert "attention_lesion_mass" not in metrics, suite
    # ... and each equals its value recomputed by another path (numpy / scikit-learn on the suite's features)
    for suite, metrics in results.items():
        reference = _reference_metrics(params, Path(adapter_run.model_dir), suite)
        for name, value in reference.items():
            assert metrics[name] == pytest.approx(value, abs=1e-6), (suite, name, metrics[name], value)
    report = json.loads((params.resolve(params.paths.reports) / "evaluate.json").read_text())
    assert set(report) == suites  # headline numbers only: per-fold and per-class values stay in MLflow
    assert all("matching_p1" in metrics and not any("_fold" in k or "." in k for k in metrics)
               for metrics in report.values())
    assert (params.resolve(params.paths.reports) / "params" / "evaluate.yaml").is_file()
    run = _experiment_runs(params, "tags.`radclip.stage` = 'evaluate'")[0]
    assert any(key.endswith(".probe_accuracy_mean") for key in run.data.metrics)
    # figures: a confusion matrix per suite, attention over slices per 3D suite, Fig. 5 prompt scores
    figures = params.resolve(params.paths.reports) / FIGURES_DIR
    expected = {f"confusion_{s}.png" for s in suites} | {"modality_prompts.png"}
    expected |= {f"attention_{s}.png" for s in focal}
    assert expected <= {p.name for p in figures.iterdir()}
    logged = {Path(a.path).name for a in MlflowClient().list_artifacts(run.info.run_id, "figures")}
    assert expected <= logged


@pytest.mark.filterwarnings("ignore:Operation with range is deprecated")  # MLflow's own pandas comparison
def test_the_trained_model_is_logged_once_evaluated_and_registered_as_that_logged_model(
        curated, ray_run, adapter_run, evaluation, tmp_path):
    """MLflow 3 lineage: the training run logs the model as a LoggedModel with its data as input, the pipeline's
    evaluation links its metrics to that model, and `register` registers that very model (no second copy)."""
    import json

    from radclip.core.models import RadCLIP
    from radclip.io import mlflow_registry as registry
    from radclip.io import mlflow_tracking as tracking

    params = _params(curated).with_values({"registry.model_name": "radclip-lineage-test"})
    client = MlflowClient()
    experiment = client.get_experiment_by_name(params.mlflow.experiment).experiment_id
    for result, data in ((ray_run, "curated"), (adapter_run, "finetuned")):  # the 2D stage, then the adapter's
        logged = client.get_logged_model(result.mlflow_model_id)
        assert logged.source_run_id == result.mlflow_run_id
        # the digest names the weights MLflow holds (later tests of this module retrain into the same folder)
        held = tracking.download_model(params, f"models:/{result.mlflow_model_id}", tmp_path / data)
        assert logged.tags[tracking.TAG_MODEL_DIGEST] == tracking.model_digest(held)
        assert {m.key: m.value for m in logged.metrics}["best_val_loss"] == pytest.approx(result.best_val_loss)
        inputs = client.get_run(result.mlflow_run_id).inputs
        assert [d.dataset.name for d in inputs.dataset_inputs] == [data]  # the curated data / the slice cache
        assert [m.model_id for m in inputs.model_inputs] == [result.mlflow_model_id]
        assert not client.list_artifacts(result.mlflow_run_id, "model")  # no second copy as run artifacts
    assert tracking.find_logged_model(params, adapter_run.model_dir).model_id == adapter_run.mlflow_model_id

    evaluation_run = _experiment_runs(params, "tags.`radclip.stage` = 'evaluate'")[0]
    assert evaluation_run.data.tags["model.id"] == adapter_run.mlflow_model_id
    model = client.get_logged_model(adapter_run.mlflow_model_id)
    assert model.tags[tracking.TAG_EVALUATION_RUN] == evaluation_run.info.run_id
    linked = {m.key: (m.value, m.run_id) for m in model.metrics if m.run_id == evaluation_run.info.run_id}
    for suite, metrics in evaluation.items():
        assert linked[f"{suite}.probe_accuracy_mean"] == (pytest.approx(metrics["probe_accuracy_mean"]),
                                                          evaluation_run.info.run_id)
    assert [d.dataset.name for d in evaluation_run.inputs.dataset_inputs] == ["curated"]

    models_before = len(mlflow.search_logged_models(experiment_ids=[experiment], output_format="list"))
    report = json.loads((params.resolve(params.paths.reports) / "evaluate.json").read_text())
    gated = params.with_values({"registry.gate_metrics": [f"{next(iter(report))}.probe_accuracy_mean"]})
    decision = registry.register(gated, model_dir=Path(adapter_run.model_dir), evaluation=report)
    version = client.get_model_version("radclip-lineage-test", str(decision.version))
    assert version.source == f"models:/{adapter_run.mlflow_model_id}"
    assert version.run_id == adapter_run.mlflow_run_id  # the run that trained it, not the register run
    assert version.tags["training.run_id"] == adapter_run.mlflow_run_id
    assert version.tags["evaluation.run_id"] == evaluation_run.info.run_id
    assert version.tags["model.id"] == adapter_run.mlflow_model_id
    training_tags = client.get_run(adapter_run.mlflow_run_id).data.tags
    assert all(version.tags[key] == training_tags[key] for key in registry.LINEAGE_TAGS)
    assert len(mlflow.search_logged_models(experiment_ids=[experiment], output_format="list")) == models_before
    served = RadCLIP.from_pretrained(tracking.download_model(params, "models:/radclip-lineage-test@champion",
                                                             tmp_path))
    for (name, a), (_, b) in zip(RadCLIP.from_pretrained(adapter_run.model_dir).state_dict().items(),
                                 served.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), name


def _reference_metrics(params: Params, model_dir: Path, suite: str) -> dict[str, float]:
    """Headline metrics of one suite computed apart from the evaluate job and (but for the probe) radclip.core.metrics.

    Features: 2D records encoded here from their curated shard arrays; 3D records through the model's slice
    cache and its adapter (volume_features, as the pipeline does: the cache is what the adapter was scored on).
    Matching P@1 by argmax, prompt-pair AUROC and the adapter weights' AUROC on the finding slices with
    scikit-learn, the uniform share of the finding slices by hand from the phantoms' lesion truth. The
    probe (a trained model, its arithmetic checked by hand cases in tests/core/test_metrics.py) is re-run on
    these features with the suite's settings: the job must hand it the right features, labels and patients.
    """
    import pandas as pd
    import torch
    from sklearn.metrics import roc_auc_score

    from radclip.core.metrics import linear_probe
    from radclip.core.models import RadCLIP
    from radclip.data.phantoms import LESION_TRUTH
    from radclip.evaluation.features import volume_features
    from radclip.jobs.embed_slices import cache_for

    model = RadCLIP.from_pretrained(model_dir).eval()
    curated = params.resolve(params.paths.curated)
    manifest = pd.read_parquet(curated / "manifest.parquet")
    rows = manifest[manifest["collection"] == suite].reset_index(drop=True)
    kind = rows["kind"].iloc[0]
    out: dict[str, float] = {"records": float(len(rows))}
    with torch.no_grad():
        if kind == "2d":
            arrays = np.stack([np.load(curated / r.shard, mmap_mode="r")[r.shard_index] for r in rows.itertuples()])
            features = model.encode_image(torch.from_numpy(arrays)).numpy().astype(np.float64)
            labels, captions, conditions = (rows[c].to_numpy() for c in ("label", "caption", "conditions"))
            patients = rows["patient_hash"].to_numpy()
        else:
            volumes = volume_features(model, cache_for(params, model, progress=False), suite)
            features = volumes.features.astype(np.float64)
            labels, captions, conditions, patients = (volumes.labels, volumes.captions, volumes.conditions,
                                                      volumes.patients)
        candidates = sorted(set(captions))
        text = model.encode_text(candidates).numpy().astype(np.float64)
        region, modality = rows["region"].iloc[0], rows["modality"].iloc[0]
        names = sorted({c for value in conditions for c in value.split("|") if c})
        template = next(c for c in params.data.collections if c.name == suite).caption or params.data.caption
        positive = model.encode_text([template.template.format(region=region, modality=modality, condition=c)
                                      for c in names]).numpy().astype(np.float64)
        negative = model.encode_text([template.normal.format(region=region, modality=modality)]).numpy()[0]

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    similarity = unit(features) @ unit(text).T
    assert all(np.sum(row == row.max()) == 1 for row in similarity)  # no ties: argmax is the top-1 hit
    truth = np.array([candidates.index(c) for c in captions])
    out["matching_p1"] = float(np.mean(similarity.argmax(axis=1) == truth))
    # AUROC ranks: the logit scale and the sigmoid of the softmax over [positive, normal] drop out
    gap = unit(features) @ unit(positive).T - (unit(features) @ unit(negative))[:, None]
    aurocs = []
    for c, name in enumerate(names):
        target = np.array([name in value.split("|") for value in conditions])
        if 0 < target.sum() < len(target):
            aurocs.append(roc_auc_score(target, gap[:, c]))
    out["multilabel_auroc_macro"] = float(np.mean(aurocs))
    probe = linear_probe(features.astype(np.float32), labels, patients, n_folds=params.evaluate.folds,
                         epochs=params.evaluate.probe_epochs, lr=params.evaluate.probe_lr,
                         seed=params.evaluate.protocol_seed, method=params.evaluate.probe_method)
    out["probe_accuracy_mean"] = float(probe.accuracy_mean)
    if kind == "3d":
        table = pd.read_csv(params.resolve(params.paths.raw) / LESION_TRUTH, dtype=str, keep_default_na=False)
        folder = Path(next(c.path for c in params.data.collections if c.name == suite)).name
        finding_slices = {r.path: [int(s) for s in r.slices.split("|")] for r in table.itertuples()
                          if r.suite == folder and r.slices}
        raw_slices = params.phantoms.volume_shape[0]
        shares, weight_aurocs = [], []
        for k, source in enumerate(volumes.source_paths):
            slices = finding_slices.get(source.split("#")[0])
            if labels[k] == "Normal" or not slices:
                continue
            valid = int(volumes.slice_counts[k])
            # curation resamples raw_slices slices to valid: raw slice i lies at curated (i + 0.5) * valid / raw_slices
            marked = np.zeros(valid, dtype=bool)
            marked[[min(valid - 1, int((i + 0.5) * valid / raw_slices)) for i in slices]] = True
            shares.append(marked.mean())
            if not marked.all():
                weight_aurocs.append(roc_auc_score(marked, volumes.attention[k, :valid]))
        if shares:  # none in a suite without focal findings (the sex suite): no attention metrics
            out["attention_lesion_mass_uniform"] = float(np.mean(shares))
            out["attention_lesion_auroc"] = float(np.mean(weight_aurocs))
    return out


@pytest.mark.filterwarnings("ignore:Operation with range is deprecated")  # MLflow's own pandas comparison
def test_evaluate_loads_a_registered_model_by_alias(curated, adapter_run, tmp_path):
    from radclip.core.models import RadCLIP
    from radclip.io import mlflow_pyfunc
    from radclip.io import mlflow_tracking as tracking

    params = _params(curated)
    with tracking.start_run(params, stage="register"):
        info = mlflow_pyfunc.log_model(Path(adapter_run.model_dir), registered_model_name="radclip-evaluate-test")
    MlflowClient().set_registered_model_alias("radclip-evaluate-test", "champion", info.registered_model_version)
    local = tracking.download_model(params, "models:/radclip-evaluate-test@champion", tmp_path)
    original, downloaded = RadCLIP.from_pretrained(adapter_run.model_dir), RadCLIP.from_pretrained(local)
    for (name, a), (_, b) in zip(original.state_dict().items(), downloaded.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), name
    assert downloaded.preprocessing == original.preprocessing and downloaded.preprocessing is not None
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        tracking.download_model(params, "models:/no-such-model@champion", tmp_path / "missing")


@pytest.fixture(scope="module")
def ablation(curated, adapter_run):
    from radclip.jobs import ablate, embed_slices

    params = _params(curated).with_values({"ablate.seeds": 2, "ablate.global_suites": ["phantom_brain_mri_3d_sex"]})
    for encoder in ("vanilla", "random"):  # init_model (run by pretrain_2d) saved both starting encoders
        embed_slices.run(params, encoder=encoder, progress=False)
    return params, ablate.run(params, progress=False)


def test_ablation_logs_one_child_run_per_cell_with_its_seed_fits(ablation):
    from radclip.evaluation.ablation import grid_cells

    params, summary = ablation
    parent = summary["mlflow_run_id"]
    children = _experiment_runs(params, f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(r.data.tags["mlflow.runName"] for r in children) == sorted(
        ["random+average", "random+adapter", "vanilla+average", "vanilla+adapter", "finetuned+average",
         "finetuned+adapter", "finetuned+adapter-mhsa_mean", "finetuned+adapter-residual_mean"]) == sorted(
        c.name for c in grid_cells(params.model.adapter.reducer))
    assert all(r.info.status == "FINISHED" and any(k.endswith(".probe_accuracy_seed_std") for k in r.data.metrics)
               for r in children)
    for child in children:  # every adapter cell trained one adapter per seed, nested under the cell's run
        fits = _experiment_runs(params, f"tags.`mlflow.parentRunId` = '{child.info.run_id}'")
        expected = 0 if child.data.tags["mlflow.runName"].endswith("+average") else 2
        assert sorted(int(f.data.tags["ablation.seed"]) for f in fits) == list(range(expected))
    artifacts = {Path(a.path).name for a in MlflowClient().list_artifacts(parent, "ablation")}
    assert {"ablation.md", "ablation.csv", "ablation.json", "ablation.png"} <= artifacts


def test_ablation_reports_seed_means_stds_and_the_verdicts(ablation):
    import json
    import statistics

    import pandas as pd

    params, summary = ablation
    reports = params.resolve(params.paths.reports)
    per_seed = pd.read_csv(reports / "ablation.csv")
    written = json.loads((reports / "ablation.json").read_text())
    assert written["seeds"] == 2 and set(per_seed["seed"]) == {0, 1}
    # Each cell's number is the mean over seeds, its spread the sample std (independent recomputation).
    for (cell, suite), group in per_seed.groupby(["cell", "suite"]):
        row = written["cells"][cell][suite]
        assert row["probe_accuracy"] == pytest.approx(group["probe_accuracy_mean"].mean())
        assert row["probe_accuracy_seed_std"] == pytest.approx(statistics.stdev(group["probe_accuracy_mean"]))
        assert row["probe_accuracy_fold_std"] == pytest.approx(group["probe_accuracy_std"].mean())
    # Average pooling has no training, yet its probes see other folds per seed: the seeds differ somewhere.
    assert per_seed.groupby(["cell", "suite"])["probe_accuracy_mean"].nunique().max() == 2
    # 2D suites do not depend on the pooling: an encoder's cells carry the same numbers.
    images = per_seed[per_seed["suite"].isin([s for s in per_seed["suite"].unique()
                                              if s not in written["focal_suites"] + written["global_suites"]])]
    by_encoder = images.groupby(["encoder", "suite", "seed"])["probe_accuracy_mean"].nunique()
    assert len(by_encoder) and (by_encoder == 1).all()
    checks = written["thresholds"]
    assert {"a_general_over_random", "a_general_over_chance", "b_matching_gain"} <= set(checks)
    assert {f"c_focal_gain.{s}" for s in written["focal_suites"]} <= set(checks)
    assert written["global_suites"] == ["phantom_brain_mri_3d_sex"] and "d_global_adapter.phantom_brain_mri_3d_sex" in checks
    cells = written["cells"]
    for suite in written["focal_suites"]:
        check = checks[f"c_focal_gain.{suite}"]
        best, base = cells["finetuned+adapter"][suite], cells["vanilla+average"][suite]
        assert check["value"] == pytest.approx(best["probe_accuracy"] - base["probe_accuracy"])
        bound = 2.0 * max(best["probe_accuracy_seed_std"], base["probe_accuracy_seed_std"])
        assert check["passed"] == (check["value"] > bound)
    assert written["all_passed"] == all(c["passed"] for c in checks.values())
    table = [line for line in (reports / "ablation.md").read_text().splitlines() if line.startswith("| ")]
    assert sum("pass" in line or "FAIL" in line for line in table) == len(checks)
    # where each cell looked, over the focal suites (the global one has no finding slices to score)
    attention = (reports / "ablation.md").read_text().split("Attention on the recorded finding slices")[1]
    assert sum(line.startswith("| ") for line in attention.splitlines()) == 1 + len(cells)  # the header and a row each
    # average pooling puts exactly the uniform share on the recorded finding slices and cannot rank them
    volumes = per_seed[per_seed["pooling"] == "average"].dropna(subset=["attention_lesion_mass"])
    assert len(volumes) and np.allclose(volumes["attention_lesion_mass"], volumes["attention_lesion_mass_uniform"])
    assert np.allclose(volumes["attention_lesion_auroc"], 0.5)


def test_the_epoch_line_says_losses_throughput_and_time_left_at_the_pace_after_start_up():
    from radclip.training.fit import epoch_line

    metrics = {"epoch": 2, "train_loss": 2.41, "val_loss": 2.33, "pairs_per_second": 212.4}
    # 3 epochs done in 100 s, the last two in 40 s: 27 epochs left at 20 s each = 9 min (start-up excluded)
    assert epoch_line("pretrain_2d", metrics, 30, 100.0, 40.0) == (
        "pretrain_2d epoch 3/30: train 2.4100, val 2.3300, 212 pairs/s, ≤ 9m00s left")
    first = epoch_line("pretrain_2d", {**metrics, "epoch": 0}, 30, 12.0)
    assert first.startswith("pretrain_2d epoch 1/30:") and first.endswith("≤ 5m48s left")  # 29 × 12 s
    lrclr = epoch_line("pretrain_lrclr", {**metrics, "val_local_loss": 1.5}, 4, 30.0, 20.0)
    assert "val 2.3300, local 1.5000" in lrclr and lrclr.endswith("≤ 0m10s left")


def test_ray_report_lines_are_dropped_from_the_console_and_nothing_else():
    import logging

    from radclip.io.ray_train import _QuietRayFileLoggers

    def record(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "Reporting training result 1", None, None)

    quiet = _QuietRayFileLoggers()
    ray_file = "/venv/site-packages/ray/train/v2/_internal/execution/context.py"  # Ray names it by __file__
    assert not quiet.filter(record(ray_file, logging.INFO))
    assert quiet.filter(record(ray_file, logging.WARNING))  # its warnings still show
    assert quiet.filter(record("ray.train", logging.INFO)) and quiet.filter(record("radclip.training", logging.INFO))
