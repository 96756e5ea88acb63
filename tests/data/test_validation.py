"""Curated-data validation: a clean dataset passes; each kind of corruption fails its own check."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radclip.config import Params
from radclip.data.captions import make_caption
from radclip.data.validation import (
    DATA_DOCS_DIR,
    CuratedDataError,
    ValidationFailed,
    validate_curated,
)

IMAGE_SIZE = 8
AXIAL = (4, 8)  # slices, size
CORONAL = (3, 6)
CT_CAPTION = {"template": "{modality} of the {region} showing {condition}", "normal": "{modality} of the {region} without findings"}


def tiny_params(**validate) -> Params:
    return Params.model_validate(
        {
            "data": {
                "collections": [
                    {"name": "train_set", "format": "csv", "path": "raw/train"},
                    {"name": "xray_suite", "format": "chexpert", "role": "eval", "path": "raw/xray",
                     "region": "Chest", "modality": "X-ray"},
                    {"name": "ct_suite", "format": "covid_ct_md", "role": "eval", "path": "raw/ct",
                     "region": "Chest", "modality": "CT", "caption": CT_CAPTION},
                ]  # fmt: skip
            },
            "curate": {
                "image_size": IMAGE_SIZE,
                "volume": {
                    "axial": {"slices": AXIAL[0], "size": AXIAL[1]},
                    "coronal": {"slices": CORONAL[0], "size": CORONAL[1]},
                    "sagittal": {"slices": AXIAL[0], "size": AXIAL[1]},
                },
            },
            "validate": {"min_class_count": 3, "max_quarantine_rate": 0.2, "fail_on_violation": True, **validate},
        }
    )


def patient_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def statistics(array: np.ndarray) -> dict:
    values = array.astype(np.float64)
    return {"mean": values.mean(), "std": values.std(), "min": values.min(), "max": values.max()}


def write_curated(directory: Path, params: Params, *, quarantined: int = 2) -> pd.DataFrame:
    """A small curated dataset consistent with ``params``: 2D train + 2D suite + 3D suite."""
    rng = np.random.default_rng(0)
    template = params.data.caption
    ct_template = next(c for c in params.data.collections if c.name == "ct_suite").caption
    rows: list[dict] = []
    images_2d: list[np.ndarray] = []

    def add_2d(collection, role, split, patient, region, modality, conditions, label):
        image = rng.integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        rows.append(
            dict(collection=collection, role=role, kind="2d", split=split, region=region, modality=modality,
                 conditions="|".join(conditions), label=label, plane="", patient_hash=patient_hash(patient),
                 caption=make_caption(template, region, modality, conditions),
                 shard="shards/2d-00000.npy", shard_index=len(images_2d), slices=1,
                 height=IMAGE_SIZE, width=IMAGE_SIZE, **statistics(image))
        )  # fmt: skip
        images_2d.append(image)

    for i, (conditions, split) in enumerate(
        [(["Edema"], "train"), (["Edema"], "train"), (["Edema", "Nodule"], "val"), (["Nodule"], "train"),
         (["Nodule"], "test"), ([], "train"), ([], "train"), ([], "val")]
    ):  # fmt: skip
        add_2d("train_set", "train", split, f"train-p{i}", "Chest", "X-ray", conditions, "|".join(conditions))
    for i, label in enumerate(["Edema"] * 3 + ["Normal"] * 3):
        add_2d("xray_suite", "eval", "eval", f"xray-p{i}", "Chest", "X-ray", [] if label == "Normal" else [label], label)

    volumes: dict[str, list[np.ndarray]] = {"axial": [], "coronal": []}
    for i, (label, plane) in enumerate([("COVID-19", "axial")] * 3 + [("Normal", "axial")] * 2 + [("Normal", "coronal")]):
        slices, size = AXIAL if plane == "axial" else CORONAL
        raw = rng.normal(100.0, 40.0, size=(slices, size, size))
        volume = ((raw - raw.mean()) / raw.std()).astype(np.float16)
        conditions = [] if label == "Normal" else [label]
        rows.append(
            dict(collection="ct_suite", role="eval", kind="3d", split="eval", region="Chest", modality="CT",
                 conditions="|".join(conditions), label=label, plane=plane, patient_hash=patient_hash(f"ct-p{i}"),
                 caption=make_caption(ct_template, "Chest", "CT", conditions),
                 shard=f"shards/3d-{plane}-00000.npy", shard_index=len(volumes[plane]), slices=slices,
                 height=size, width=size, **statistics(volume))
        )  # fmt: skip
        volumes[plane].append(volume)

    manifest = pd.DataFrame(rows)
    manifest.insert(0, "record_id", [f"rec-{i:03d}" for i in range(len(manifest))])
    manifest["source_path"] = [f"files/{rid}.png" for rid in manifest["record_id"]]
    manifest["content_hash"] = [hashlib.sha256(rid.encode()).hexdigest() for rid in manifest["record_id"]]

    (directory / "shards").mkdir(parents=True, exist_ok=True)
    np.save(directory / "shards/2d-00000.npy", np.stack(images_2d))
    for plane, stack in volumes.items():
        np.save(directory / f"shards/3d-{plane}-00000.npy", np.stack(stack))
    manifest.to_parquet(directory / "manifest.parquet", index=False)
    pd.DataFrame(
        {"collection": ["train_set"] * quarantined, "source_path": [f"bad/{i}.png" for i in range(quarantined)],
         "reason": ["unreadable image"] * quarantined, "stage": ["load"] * quarantined}
    ).to_parquet(directory / "quarantine.parquet", index=False)  # fmt: skip
    summary = {"items": len(manifest) + quarantined, "records": len(manifest), "quarantined": quarantined,
               "duplicates": 0, "quarantine_rate": quarantined / (len(manifest) + quarantined)}  # fmt: skip
    (directory / "summary.json").write_text(json.dumps(summary))
    return manifest


@pytest.fixture
def params() -> Params:
    return tiny_params()


@pytest.fixture
def curated(tmp_path: Path, params: Params) -> tuple[Path, pd.DataFrame]:
    directory = tmp_path / "curated"
    return directory, write_curated(directory, params)


def rewrite_manifest(directory: Path, manifest: pd.DataFrame) -> None:
    manifest.to_parquet(directory / "manifest.parquet", index=False)


def validate(params: Params, directory: Path, tmp_path: Path, *, data_docs: bool = False):
    """The report, failed or not (the raising path has tests of its own); Data Docs only where a test reads them."""
    return validate_curated(params, curated_dir=directory, report_dir=tmp_path / "report", fail_on_violation=False,
                            data_docs=data_docs)


def only_failures(report) -> set[str]:
    return {check.name for check in report.failed}


# --------------------------------------------------------------------------- clean data


def test_clean_dataset_passes_and_writes_json_markdown_and_metrics(params, curated, tmp_path):
    directory, manifest = curated
    report = validate(params, directory, tmp_path)

    assert report.success, [(c.name, c.message) for c in report.failed]
    assert not [c for c in report.checks if c.skipped]
    names = {check.name for check in report.checks}
    assert {"manifest.columns", "manifest.not_null", "manifest.record_id_unique", "shapes.2d", "shapes.3d",
            "statistics.finite", "statistics.zscore_3d", "classes.min_count", "patients.single_split",
            "quarantine.rate", "shards.files", "shards.shapes", "shards.values",
            "captions.template[train_set]", "captions.template[xray_suite]", "captions.template[ct_suite]"} <= names  # fmt: skip

    document = json.loads(report.report_json.read_text())
    assert document["success"] is True and document["records"] == len(manifest)
    assert all(check["status"] == "pass" for check in document["checks"])
    metrics = json.loads(report.metrics_json.read_text())
    assert metrics == {"success": True, "n_checks": len(report.checks), "n_failed": 0,
                       "records": len(manifest), "quarantine_rate": pytest.approx(2 / (len(manifest) + 2))}  # fmt: skip
    assert "PASSED" in report.report_md.read_text()


def test_the_suites_run_through_checkpoints_that_write_data_docs_beside_the_report(params, curated, tmp_path):
    """GE's own Data Docs (HTML) of the run: an index, each suite, each frame's validation result with its
    verdict; a later run into the same folder replaces them (only that run's results are shown)."""
    directory, manifest = curated
    report = validate(params, directory, tmp_path / "clean", data_docs=True)
    index = report.report_md.parent / DATA_DOCS_DIR / "index.html"
    assert index.is_file() and report.success
    docs = index.parent
    frames = {"manifest", "class_counts", "patient_splits", "quarantine"}
    assert {p.stem for p in (docs / "expectations" / "radclip").glob("*.html")} == frames
    pages = {page.parent.parent.parent.name: page for page in (docs / "validations" / "radclip").rglob("*.html")}
    assert set(pages) == frames
    assert all("Succeeded" in page.read_text() for page in pages.values())
    every_page = "".join(page.read_text() for page in docs.rglob("*.html"))
    assert "logo-long.png?d=" not in every_page and "static/images/logo-long.png" in every_page  # no view counter
    assert (docs / ".gitignore").read_text().splitlines()[-1] == "*"  # re-rendered each run: kept out of git

    bad = manifest.index[manifest["collection"] == "ct_suite"][0]
    manifest.loc[bad, "caption"] = "Chest CT with COVID-19"
    rewrite_manifest(directory, manifest)
    failed = validate(params, directory, tmp_path / "clean", data_docs=True)  # the same report folder
    assert not failed.success
    pages = {page.parent.parent.parent.name: page for page in (docs / "validations" / "radclip").rglob("*.html")}
    assert set(pages) == frames  # the clean run's pages are gone: one result per frame
    manifest_page = pages["manifest"].read_text()
    assert "Failed" in manifest_page and "Chest CT with COVID-19" in manifest_page  # the offending value


def test_report_defaults_to_reports_validation_under_the_project_root(params, curated, tmp_path, monkeypatch):
    directory, _ = curated
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    relocated = params.model_copy(update={"paths": params.paths.model_copy(update={"curated": str(directory)})})
    report = validate_curated(relocated)  # passes, so fail_on_violation does not raise
    assert report.report_md == tmp_path / "reports" / "validation" / "report.md"
    assert report.report_md.is_file() and report.success


# --------------------------------------------------------------------------- corruptions, one check each


def test_caption_not_matching_its_collection_template_fails_that_collections_caption_check(params, curated, tmp_path):
    directory, manifest = curated
    # A default-template caption in the CT suite, whose template differs.
    bad = manifest.index[manifest["collection"] == "ct_suite"][0]
    manifest.loc[bad, "caption"] = "Chest CT with COVID-19"
    rewrite_manifest(directory, manifest)

    report = validate(params, directory, tmp_path)
    assert only_failures(report) == {"captions.template[ct_suite]"}
    check = report.check("captions.template[ct_suite]")
    assert check.record_ids == [manifest.loc[bad, "record_id"]]
    assert "Chest CT with COVID-19" in check.message and "1 of 6" in check.message
    markdown = report.report_md.read_text()
    assert "captions.template[ct_suite]" in markdown and "**FAIL**" in markdown


def test_2d_image_of_the_wrong_size_fails_the_2d_shape_check(params, curated, tmp_path):
    directory, manifest = curated
    manifest.loc[0, ["height", "width"]] = [16, 16]
    rewrite_manifest(directory, manifest)

    report = validate(params, directory, tmp_path)
    # The shard (8x8) now disagrees with the manifest too: the shard check says so as well.
    assert only_failures(report) == {"shapes.2d", "shards.shapes"}
    check = report.check("shapes.2d")
    assert check.record_ids == ["rec-000"] and f"not in [{IMAGE_SIZE}]" in check.message


def test_3d_volume_with_slices_of_another_plane_fails_the_3d_shape_check(params, curated, tmp_path):
    directory, manifest = curated
    coronal = manifest.index[manifest["plane"] == "coronal"][0]
    manifest.loc[coronal, "plane"] = "axial"  # 3 slices of 6x6 is not the axial shape (4 of 8x8)
    rewrite_manifest(directory, manifest)

    report = validate(params, directory, tmp_path)
    assert "shapes.3d" in only_failures(report)
    assert report.check("shapes.3d").record_ids == [manifest.loc[coronal, "record_id"]]


def test_nan_statistic_fails_the_finite_statistics_check(params, curated, tmp_path):
    directory, manifest = curated
    manifest.loc[3, "std"] = np.nan
    rewrite_manifest(directory, manifest)

    report = validate(params, directory, tmp_path)
    assert only_failures(report) == {"statistics.finite"}  # not also a shard-statistics mismatch
    check = report.check("statistics.finite")
    assert check.record_ids == ["rec-003"] and "std: 1 of" in check.message and "null or NaN" in check.message
    json.loads(report.report_json.read_text())  # NaN never leaks into the JSON as a bare token


def test_volume_that_is_not_z_scored_fails_the_3d_intensity_band(params, curated, tmp_path):
    directory, manifest = curated
    volume = manifest.index[manifest["kind"] == "3d"][0]
    manifest.loc[volume, "std"] = 40.0
    rewrite_manifest(directory, manifest)

    report = validate(params, directory, tmp_path)
    assert "statistics.zscore_3d" in only_failures(report)


def test_patient_in_train_and_eval_fails_the_single_split_check(params, curated, tmp_path):
    directory, manifest = curated
    train_patient = manifest.loc[0, "patient_hash"]
    suite_row = manifest.index[manifest["collection"] == "xray_suite"][0]
    manifest.loc[suite_row, "patient_hash"] = train_patient  # evaluation leakage
    rewrite_manifest(directory, manifest)

    report = validate(params, directory, tmp_path)
    assert only_failures(report) == {"patients.single_split"}
    check = report.check("patients.single_split")
    assert check.message == f"1 patient(s) in several splits: {train_patient} in eval|train (train_set|xray_suite)"
    assert set(check.record_ids) == {"rec-000", manifest.loc[suite_row, "record_id"]}
    assert check.observed == {"patients": len(manifest) - 1, "in_several_splits": 1}


def test_class_below_min_count_fails_the_class_count_check(params, curated, tmp_path):
    directory, manifest = curated
    manifest = manifest.drop(index=manifest.index[manifest["label"] == "COVID-19"][0])
    rewrite_manifest(directory, manifest)

    report = validate(params, directory, tmp_path)
    assert only_failures(report) == {"classes.min_count"}
    check = report.check("classes.min_count")
    assert check.message == "1 class(es) with fewer than 3 records: ct_suite/COVID-19: 2"


def test_training_condition_below_min_count_fails_the_class_count_check(tmp_path):
    params = tiny_params(min_class_count=4)  # train_set has Edema 3, Nodule 3, normal 3
    directory = tmp_path / "curated"
    write_curated(directory, params)
    report = validate(params, directory, tmp_path)
    assert only_failures(report) == {"classes.min_count"}
    assert "train_set/Edema: 3" in report.check("classes.min_count").message


def test_quarantine_rate_above_threshold_fails_the_quarantine_check_with_top_reasons(params, tmp_path):
    directory = tmp_path / "curated"
    write_curated(directory, params, quarantined=10)  # 10 / 30 inputs
    report = validate(params, directory, tmp_path)
    assert only_failures(report) == {"quarantine.rate"}
    check = report.check("quarantine.rate")
    assert check.observed == pytest.approx(10 / 30) and "unreadable image (10)" in check.message
    assert json.loads(report.metrics_json.read_text())["quarantine_rate"] == pytest.approx(10 / 30)


def test_quarantine_rate_is_computed_from_the_quarantine_table_without_summary(params, tmp_path):
    directory = tmp_path / "curated"
    write_curated(directory, params, quarantined=10)
    (directory / "summary.json").unlink()
    report = validate(params, directory, tmp_path)
    assert report.check("quarantine.rate").observed == pytest.approx(10 / 30)


def test_missing_shard_file_fails_the_shard_files_check(params, curated, tmp_path):
    directory, manifest = curated
    (directory / "shards/3d-coronal-00000.npy").unlink()

    report = validate(params, directory, tmp_path)
    assert only_failures(report) == {"shards.files"}
    check = report.check("shards.files")
    assert "shards/3d-coronal-00000.npy: file missing" in check.message


def test_shard_with_a_wrong_shape_fails_the_shard_shape_check(params, curated, tmp_path):
    directory, manifest = curated
    np.save(directory / "shards/2d-00000.npy", np.zeros((14, IMAGE_SIZE, IMAGE_SIZE + 1), dtype=np.uint8))

    report = validate(params, directory, tmp_path)
    assert "shards.shapes" in only_failures(report)
    check = report.check("shards.shapes")
    assert "stored shape (8, 9), manifest says (8, 8)" in check.message


def test_shard_of_the_wrong_dtype_fails_the_shard_files_check(params, curated, tmp_path):
    directory, _ = curated
    path = directory / "shards/3d-axial-00000.npy"
    np.save(path, np.load(path).astype(np.float32))

    report = validate(params, directory, tmp_path)
    assert only_failures(report) == {"shards.files"}
    assert "float32 of rank 4, expected float16" in report.check("shards.files").message


def test_shard_index_past_the_end_and_swapped_records_fail_the_shard_checks(params, curated, tmp_path):
    directory, manifest = curated
    manifest.loc[0, "shard_index"] = 99
    manifest.loc[[1, 2], "shard_index"] = [2, 1]  # records read each other's pixels
    rewrite_manifest(directory, manifest)

    report = validate(params, directory, tmp_path)
    assert {"shards.shapes", "shards.values"} <= only_failures(report)
    assert "shard_index 99 outside 0..13" in report.check("shards.shapes").message
    assert set(report.check("shards.values").record_ids) == {"rec-001", "rec-002"}


def test_non_finite_voxels_fail_the_shard_values_check(params, curated, tmp_path):
    directory, _ = curated
    path = directory / "shards/3d-axial-00000.npy"
    volumes = np.load(path)
    volumes[1, 0, 0, 0] = np.inf
    np.save(path, volumes)

    report = validate(params, directory, tmp_path)
    assert only_failures(report) == {"shards.values"}
    assert "non-finite values" in report.check("shards.values").message


def test_null_caption_fails_the_not_null_check(params, curated, tmp_path):
    directory, manifest = curated
    manifest["caption"] = manifest["caption"].astype(object)
    manifest.loc[2, "caption"] = None
    rewrite_manifest(directory, manifest)

    report = validate(params, directory, tmp_path)
    assert only_failures(report) == {"manifest.not_null"}
    check = report.check("manifest.not_null")
    assert check.record_ids == ["rec-002"] and check.message.startswith("caption: 1 of 20 row(s) null or NaN")


def test_duplicate_record_id_fails_the_uniqueness_check(params, curated, tmp_path):
    directory, manifest = curated
    manifest.loc[1, "record_id"] = manifest.loc[0, "record_id"]
    rewrite_manifest(directory, manifest)

    report = validate(params, directory, tmp_path)
    assert only_failures(report) == {"manifest.record_id_unique"}
    assert report.check("manifest.record_id_unique").record_ids == ["rec-000"]


def test_missing_column_fails_the_columns_check_and_skips_checks_that_need_it(params, curated, tmp_path):
    directory, manifest = curated
    rewrite_manifest(directory, manifest.drop(columns=["patient_hash"]))

    report = validate(params, directory, tmp_path)
    assert "manifest.columns" in only_failures(report)
    assert "missing column(s): patient_hash" in report.check("manifest.columns").message
    assert report.check("patients.single_split").status == "skip"
    assert not report.success


def test_unknown_collection_and_a_configured_collection_without_records_fail_the_manifest_checks(params, curated, tmp_path):
    directory, manifest = curated
    manifest.loc[manifest["collection"] == "xray_suite", "collection"] = "renamed_suite"
    rewrite_manifest(directory, manifest)

    report = validate(params, directory, tmp_path)
    assert {"manifest.values", "manifest.collections_present"} <= only_failures(report)
    assert "xray_suite" in report.check("manifest.collections_present").message


# --------------------------------------------------------------------------- stage behaviour and errors


def test_validation_failed_is_raised_naming_checks_and_report_when_fail_on_violation(params, curated, tmp_path):
    directory, manifest = curated
    manifest.loc[0, "caption"] = "something else entirely"
    rewrite_manifest(directory, manifest)

    assert params.validate_.fail_on_violation
    with pytest.raises(ValidationFailed) as failure:
        validate_curated(params, curated_dir=directory, report_dir=tmp_path / "report")
    message = str(failure.value)
    assert "captions.template[train_set]" in message and str(tmp_path / "report" / "report.md") in message
    assert failure.value.report.report_json.is_file()  # written before raising


def test_failed_report_is_returned_without_raising_when_fail_on_violation_is_off(curated, tmp_path):
    directory, manifest = curated
    manifest.loc[0, "caption"] = "something else entirely"
    rewrite_manifest(directory, manifest)

    report = validate_curated(tiny_params(fail_on_violation=False), curated_dir=directory, report_dir=tmp_path / "r")
    assert not report.success and json.loads(report.metrics_json.read_text())["n_failed"] == 1


def test_missing_manifest_raises_an_error_naming_the_file_and_still_writes_a_report(params, tmp_path):
    with pytest.raises(CuratedDataError, match=r"curated/manifest\.parquet: manifest not found"):
        validate(params, tmp_path / "curated", tmp_path)  # even with fail_on_violation off
    assert issubclass(CuratedDataError, ValidationFailed)  # the CLI's one except clause catches it
    assert json.loads((tmp_path / "report" / "report.json").read_text())["success"] is False


def test_unreadable_manifest_raises_an_error_naming_the_file(params, tmp_path):
    (tmp_path / "curated").mkdir()
    (tmp_path / "curated" / "manifest.parquet").write_text("not parquet")
    with pytest.raises(CuratedDataError, match=r"manifest\.parquet: not a readable Parquet manifest"):
        validate(params, tmp_path / "curated", tmp_path)
