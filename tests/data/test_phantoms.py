"""Phantom generator: byte-deterministic, laid out exactly as params.yaml's collections
read it, and with findings that show in the pixels (in volumes: in a few slices only)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers import PROJECT_ROOT, tiny_params
from PIL import Image

from radclip.config import Params, load_params
from radclip.data.dicom_write import PHI_TAGS
from radclip.data.phantoms import (
    ANATOMY_TRUTH,
    CHEXPERT_5,
    CHEXPERT_OBSERVATIONS,
    LESION_TRUTH,
    SCENES,
    TRAIN_2D_MIX,
    Job,
    RenderSettings,
    Slab,
    generate,
    image_grid,
    plan_suites,
    plan_training,
    run_job,
    synthesize,
)
from radclip.data.phantoms.brain import HEAD_RANGE, HeadShape
from radclip.data.phantoms.longtail import RARE as RARE_LONGTAIL
from radclip.data.sources import IXI_NAME, scan_collection

IMAGE_SUFFIXES = (".png", ".jpg", ".dcm", ".nii.gz")


def _hashes(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _first_dicom(path: Path) -> Path:
    return sorted(path.iterdir())[0] if path.is_dir() else path


def _raw(params: Params) -> Path:
    return params.resolve(params.paths.raw)


@pytest.fixture(scope="module")
def generated(tiny_curated) -> tuple[Params, Path, dict]:
    """The shared tiny phantoms (conftest.py; curation writes nothing into raw/): params, raw folder, summary."""
    return tiny_curated.params, tiny_curated.raw, tiny_curated.generated


@pytest.fixture(scope="module")
def default_params() -> Params:
    return load_params(PROJECT_ROOT / "params.yaml")


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_for_any_worker_count(generated, tmp_path):
    params, root, _ = generated
    other_workers = 2 if params.phantoms.workers == 1 else 1
    again = tiny_params(tmp_path, phantoms={"workers": other_workers})
    generate(again)
    assert _hashes(_raw(again)) == _hashes(root)


def test_another_seed_draws_other_studies(generated, tmp_path):
    _, root, _ = generated
    other = tiny_params(tmp_path, phantoms={"data_seed": 1})
    generate(other)
    first, second = _hashes(root), _hashes(_raw(other))
    common = [name for name in set(first) & set(second) if name.endswith(IMAGE_SUFFIXES)]
    assert len(common) > 20
    assert sum(first[name] != second[name] for name in common) == len(common)


def test_nifti_gzip_headers_carry_no_timestamp(generated):
    _, root, _ = generated
    volumes = list(root.rglob("*.nii.gz"))
    assert volumes
    for path in volumes:
        header = path.read_bytes()[:10]
        assert header[:2] == b"\x1f\x8b" and header[4:8] == b"\0\0\0\0", path


# --------------------------------------------------------------------------- layout and counts


def test_training_index_matches_params_and_points_to_files(generated):
    params, root, summary = generated
    ph = params.phantoms
    rows = _read_csv(root / "train" / "index.csv")
    assert list(rows[0]) == ["path", "patient_id", "region", "modality", "findings"]
    assert len(rows) == ph.train_2d + ph.train_3d == summary["totals"]["train"]

    dicom = [r for r in rows if r["path"].startswith("dicom/")]
    assert len(dicom) == round(ph.dicom_fraction * ph.train_2d) + round(ph.dicom_fraction * ph.train_3d)
    assert all(r["patient_id"] == "" for r in dicom)  # the id comes from the PatientID tag
    assert all(r["patient_id"].startswith("PH-T-") for r in rows if r not in dicom)

    for row in rows:
        path = root / "train" / row["path"]
        assert path.exists(), row
        if path.is_dir():  # a CT series: one file per slice
            assert len(list(path.iterdir())) == ph.volume_shape[0]
        elif path.suffix == ".png":
            image = Image.open(path)
            assert image.mode == "L" and image.size == (ph.image_size, ph.image_size)
        elif path.name.endswith(".nii.gz"):
            assert nib.load(path).shape == tuple(reversed(ph.volume_shape))  # (columns, rows, slices)
    kinds = Counter(row["path"].split("/")[0] for row in rows)
    assert kinds["png"] + kinds["nifti"] + kinds["dicom"] == len(rows) and kinds["png"] and kinds["nifti"]


def test_patients_hold_images_per_patient_studies(generated):
    params, root, _ = generated
    rows = _read_csv(root / "train" / "index.csv")
    ids = [row["patient_id"] or pydicom.dcmread(_first_dicom(root / "train" / row["path"])).PatientID for row in rows]
    assert max(Counter(ids).values()) <= params.phantoms.images_per_patient
    assert all(re.fullmatch(r"PH-T-\d{6}", pid) for pid in ids)


def test_summary_counts_match_the_files(generated):
    params, root, summary = generated
    assert json.loads((root / "phantoms.json").read_text()) == summary
    rows = _read_csv(root / "train" / "index.csv")
    conditions = Counter(c for row in rows for c in (row["findings"].split("|") if row["findings"] else ["Normal"]))
    assert summary["train"]["by_condition"] == dict(conditions)
    suites = params.phantoms.suites
    assert summary["suites"]["chest_xray_5class"]["total"] == 5 * suites.chest_xray_5class
    assert summary["totals"]["eval"] == (
        5 * suites.chest_xray_5class
        + 4 * suites.brain_mri_4class
        + 2 * suites.brain_mri_3d_2class
        + 3 * suites.chest_ct_3d_3class
        + 2 * suites.brain_mri_3d_sex
        + 6 * suites.chest_xray_boxes  # five focal findings and normals
    )
    readme = (root / "README.txt").read_text()
    assert "index.csv" in readme and "eval/chest_ct_3d_3class/" in readme


def test_configured_collections_scan_without_errors(generated):
    params, root, _ = generated
    for collection in params.data.collections:
        items = list(scan_collection(collection, root))
        assert items, collection.name
        assert [item.error for item in items if item.error] == [], collection.name


# --------------------------------------------------------------------------- evaluation suites


def test_chexpert_suite_has_one_positive_per_image_and_balanced_classes(generated):
    params, root, _ = generated
    suite = root / "eval" / "chest_xray_5class"
    rows = _read_csv(suite / "CheXpert-v1.0-small" / "valid.csv")
    assert list(rows[0])[:5] == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
    positives = []
    for row in rows:
        assert re.fullmatch(r"CheXpert-v1.0-small/valid/patient\d+/study1/view1_frontal.jpg", row["Path"])
        assert (suite / row["Path"]).is_file() and row["Frontal/Lateral"] == "Frontal"
        assert {row[name] for name in CHEXPERT_OBSERVATIONS} <= {"1.0", "0.0", "-1.0", ""}
        hits = [name for name in CHEXPERT_5 if row[name] == "1.0"]
        assert len(hits) == 1 and all(row[name] != "-1.0" for name in CHEXPERT_5)
        positives += hits
    assert Counter(positives) == {name: params.phantoms.suites.chest_xray_5class for name in CHEXPERT_5}


def test_chexpert_rows_carry_uncertain_and_blank_values_like_the_real_file(default_params, tmp_path):
    suite = plan_suites(default_params, tmp_path)[0]
    (header, rows), = suite.tables.values()
    others = [header.index(name) for name in CHEXPERT_OBSERVATIONS if name not in CHEXPERT_5]
    cells = [row[i] for row in rows for i in others]
    assert "-1.0" in cells and "" in cells


def test_brain_suites_are_balanced(generated):
    params, root, _ = generated
    per_class = params.phantoms.suites
    testing = root / "eval" / "brain_mri_4class" / "Testing"
    counts = {folder.name: len(list(folder.glob("Te-*.jpg"))) for folder in testing.iterdir()}
    assert counts == {name: per_class.brain_mri_4class for name in ("glioma", "meningioma", "notumor", "pituitary")}

    ixi = root / "eval" / "brain_mri_3d_2class"
    table = _read_csv(ixi / "IXI.csv")
    assert list(table[0]) == ["IXI_ID", "SEX_ID", "HEIGHT", "WEIGHT", "AGE", "FINDING"]
    n = per_class.brain_mri_3d_2class
    assert Counter(row["FINDING"] for row in table) == {"0": n, "1": n}
    names = sorted(path.name for path in (ixi / "IXI-T1").iterdir())
    ids = sorted(int(IXI_NAME.match(name).group(2)) for name in names)
    assert ids == sorted(int(row["IXI_ID"]) for row in table)


def test_covid_ct_suite_is_balanced_with_phi_filled_series(generated):
    params, root, _ = generated
    suite = root / "eval" / "chest_ct_3d_3class"
    rows = _read_csv(suite / "Index.csv")
    assert list(rows[0]) == ["Folder/ID", "Patient ID", "Diagnosis", "Gender", "Age"]
    n = params.phantoms.suites.chest_ct_3d_3class
    assert Counter(row["Diagnosis"] for row in rows) == {"COVID-19": n, "CAP": n, "Normal": n}
    folders = {"COVID-19": "COVID-19 Cases", "CAP": "CAP Cases", "Normal": "Normal Cases"}
    for row in rows:
        series = suite / folders[row["Diagnosis"]] / row["Folder/ID"]
        files = sorted(series.iterdir())
        assert len(files) == params.phantoms.volume_shape[0]
        ds = pydicom.dcmread(files[0])
        assert ds.Modality == "CT" and ds.PatientID == row["Patient ID"] and ds.PatientID.startswith("PH-E-")


# --------------------------------------------------------------------------- the sex suite (a whole-volume label)

SEX_SUITE = "brain_mri_3d_sex"
SEX_NAMES = {"1": "Male", "2": "Female"}


def test_sex_suite_is_ixi_labelled_by_sex_id_with_no_finding_and_its_anatomy_recorded(generated):
    params, root, _ = generated
    suite = root / "eval" / SEX_SUITE
    table = _read_csv(suite / "IXI.csv")
    assert list(table[0]) == ["IXI_ID", "SEX_ID", "HEIGHT", "WEIGHT", "AGE"]  # the real IXI's columns, no FINDING
    n = params.phantoms.suites.brain_mri_3d_sex
    assert Counter(row["SEX_ID"] for row in table) == {"1": n, "2": n}
    other_ids = {int(row["IXI_ID"]) for row in _read_csv(root / "eval" / "brain_mri_3d_2class" / "IXI.csv")}
    assert not other_ids & {int(row["IXI_ID"]) for row in table}  # one IXI id, one patient

    collection = next(c for c in params.data.collections if c.path.endswith(f"/{SEX_SUITE}"))
    sex_of_id = {int(row["IXI_ID"]): row["SEX_ID"] for row in table}
    items = list(scan_collection(collection, root))
    assert len(items) == 2 * n and not [item.error for item in items if item.error]
    for item in items:  # the curated label is the sex of the table row
        assert list(item.conditions) == [SEX_NAMES[sex_of_id[int(IXI_NAME.match(Path(item.rel_path).name).group(2))]]]

    lesions = [r for r in _read_csv(root / LESION_TRUTH) if r["suite"] == SEX_SUITE]
    anatomy = {r["path"]: r for r in _read_csv(root / ANATOMY_TRUTH) if r["suite"] == SEX_SUITE}
    on_disk = sorted(p.relative_to(suite).as_posix() for p in (suite / "IXI-T1").iterdir())
    assert sorted(r["path"] for r in lesions) == on_disk == sorted(anatomy)
    assert all(r["slices"] == "" for r in lesions)  # no focal finding in any volume
    for rel, row in anatomy.items():
        assert row["SEX_ID"] == sex_of_id[int(IXI_NAME.match(Path(rel).name).group(2))]
        head = HeadShape(float(row["head_scale"]), float(row["head_aspect"]), float(row["head_height"]))
        assert head.semi_axes == (float(row["head_lr_mm"]), float(row["head_ap_mm"]), float(row["head_si_mm"]))


def _best_threshold_accuracy(values: np.ndarray, positive: np.ndarray) -> float:
    """Accuracy of the best single cut "positive above t" (a reference independent of any model)."""
    order = np.argsort(values, kind="stable")
    ranked = positive[order]
    # cut after k values: the first k are called negative, the rest positive
    correct = [np.sum(~ranked[:k]) + np.sum(ranked[k:]) for k in range(len(ranked) + 1)]
    return max(correct) / len(ranked)


def test_sex_suite_label_is_whole_head_size_and_shape_with_overlapping_classes(default_params, tmp_path):
    """At the default size (planned, not drawn): the plan gives every volume no condition and a head
    whose size and shape depend on the sex, male larger and relatively longer, the classes overlapping."""
    (suite,) = [s for s in plan_suites(default_params, tmp_path) if s.name == SEX_SUITE]
    n = default_params.phantoms.suites.brain_mri_3d_sex
    assert len(suite.jobs) == 2 * n and {job.conditions for job in suite.jobs} == {()}
    truth = [suite.anatomy[job.path] for job in suite.jobs]
    for job, row in zip(suite.jobs, truth):
        head = dict(job.traits)["head"]
        assert head == (row["head_lr_mm"], row["head_ap_mm"], row["head_si_mm"])
        assert all(low <= value <= high for value, (low, high) in zip(head, HEAD_RANGE))  # as training heads
    male = np.array([row["SEX_ID"] == "1" for row in truth])
    assert male.sum() == n
    scale = np.array([row["head_scale"] for row in truth])
    aspect = np.array([row["head_aspect"] for row in truth])
    height = np.array([row["head_height"] for row in truth])
    assert scale[male].mean() - scale[~male].mean() > 0.025  # larger
    assert aspect[male].mean() < aspect[~male].mean() - 0.005  # relatively longer (narrower)
    assert abs(height[male].mean() - height[~male].mean()) < 0.01  # not a sex trait
    assert scale[~male].max() > scale[male].min()  # overlap: no perfect cut
    assert 0.7 <= _best_threshold_accuracy(scale, male) <= 0.92


@pytest.mark.parametrize("plane", ["axial", "sagittal"])
def test_sex_head_differs_in_every_slice_through_the_head(plane, default_params):
    """The same study with a female-sized and a male-sized head (same anatomy and noise streams), at
    the default volume geometry: every slice that shows a head differs (in axial volumes: every slice),
    not a focal slab, and nothing is recorded as a finding."""
    ph = default_params.phantoms
    settings = RenderSettings(seed=0, image_size=32, volume_shape=ph.volume_shape, lesion_slices=ph.lesion_slices)
    small, large = HeadShape(0.96, 0.795, 1.0).semi_axes, HeadShape(1.04, 0.783, 1.0).semi_axes
    high = ph.lesion_slices[1]
    for seed in range(3):
        def draw(head, seed=seed):
            rng = np.random.default_rng([7, seed])
            return synthesize("brain_mri", (), kind="3d", rng=rng, settings=settings, plane=plane,
                              traits={"head": head})

        female, male = draw(small), draw(large)
        assert female.finding_slices == male.finding_slices == ()
        slices = len(female.pixels)
        changed = np.abs(male.pixels - female.pixels).reshape(slices, -1).max(axis=1) > 0
        scalp = 0.3  # scalp fat (0.7-0.9) against background noise
        shows_head = (np.maximum(female.pixels, male.pixels) > scalp).reshape(slices, -1).any(axis=1)
        assert shows_head.any() and changed[shows_head].all(), seed  # the slices left alone show no head
        assert changed.sum() >= (slices if plane == "axial" else 0.8 * slices) > high
        assert (male.pixels > scalp).sum() > 1.1 * (female.pixels > scalp).sum()


def test_training_brains_vary_in_head_size_over_the_whole_range_the_sex_suite_uses(default_params, tmp_path):
    heads = np.array([SCENES["brain_mri"].sample(np.random.default_rng([3, k])).head for k in range(400)])
    for axis, (low, high) in enumerate(HEAD_RANGE):
        span = high - low
        assert low <= heads[:, axis].min() < low + 0.05 * span and high - 0.05 * span < heads[:, axis].max() <= high
    _, rows = plan_training(default_params, tmp_path)  # training captions never name a sex
    assert not {c for row in rows for c in row.findings.split("|")} & set(SEX_NAMES.values())


# --------------------------------------------------------------------------- DICOM and NIfTI content


def test_training_dicom_files_carry_fake_phi(generated):
    _, root, _ = generated
    files = [path for path in (root / "train" / "dicom").rglob("*") if path.is_file()]
    assert files
    modalities = Counter()
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword in PHI_TAGS:
            assert keyword in ds, (path, keyword)
        assert ds.PatientID.startswith("PH-T-") and str(ds.PatientName).startswith("PHANTOM^")
        assert ds.PatientBirthDate and ds.InstitutionName and ds.AccessionNumber and "PatientAddress" in ds
        modalities[ds.Modality] += 1
        if ds.Modality == "CT":
            assert float(ds.RescaleIntercept) == -1024.0
    assert {"DX", "CT", "MR"} <= set(modalities)


def test_nifti_affines_put_the_thick_axis_along_the_acquisition_normal(generated):
    _, root, _ = generated
    planes = Counter()
    for path in root.rglob("*.nii.gz"):
        image = nib.load(path)
        zooms = image.header.get_zooms()
        thick = int(np.argmax(zooms))
        assert zooms[thick] > max(z for i, z in enumerate(zooms) if i != thick)
        axis_code = nib.aff2axcodes(image.affine)[thick]
        planes["axial" if axis_code in "SI" else "sagittal" if axis_code in "LR" else "coronal"] += 1
    assert planes["axial"] and planes["sagittal"] and not planes["coronal"]


# --------------------------------------------------------------------------- findings in pixels

SETTINGS_3D = RenderSettings(seed=0, image_size=32, volume_shape=(32, 24, 24), lesion_slices=(2, 4))
CASES_3D = [(key, f.name, plane) for key, scene in SCENES.items() for plane in scene.planes_3d for f in scene.findings
            if not f.diffuse]
CASES_DIFFUSE = [(key, f.name, plane) for key, scene in SCENES.items() for plane in scene.planes_3d
                 for f in scene.findings if f.diffuse]
VISIBLE = {"ct": 100.0, "mr": 0.1, "xray": 0.08}  # smallest change a finding must make somewhere
VISIBLE_BY_CONDITION = {"Liver Lesion": 30.0, "Emphysema": 40.0}  # hypodense by 45-75 HU; lung 45-130 HU darker


@pytest.mark.parametrize(("scene", "condition", "plane"), CASES_3D)
def test_volume_finding_changes_only_a_few_contiguous_slices(scene, condition, plane):
    low, high = SETTINGS_3D.lesion_slices
    threshold = VISIBLE_BY_CONDITION.get(condition, VISIBLE[SCENES[scene].signal])
    for seed in range(4):
        def draw(conditions):
            rng = np.random.default_rng([7, seed])
            return synthesize(scene, conditions, kind="3d", rng=rng, settings=SETTINGS_3D, plane=plane)

        lesion, normal = draw((condition,)), draw(())
        change = np.abs(lesion.pixels - normal.pixels).reshape(lesion.pixels.shape[0], -1).max(axis=1)
        changed = np.nonzero(change)[0].tolist()
        assert low <= len(changed) <= high, (seed, changed)
        assert changed == list(range(changed[0], changed[0] + len(changed)))  # contiguous
        assert tuple(changed) == lesion.finding_slices
        assert change.max() >= threshold, (seed, change.max())


def test_both_3d_training_regions_have_a_diffuse_finding():
    assert {(key, name) for key, name, _ in CASES_DIFFUSE} == {("brain_mri", "Atrophy"), ("chest_ct", "Emphysema")}


@pytest.mark.parametrize(("scene", "condition", "plane"), CASES_DIFFUSE)
def test_diffuse_finding_changes_most_slices_and_records_none(scene, condition, plane):
    """A whole-organ finding is what averaging over slices keeps: at the default volume geometry it shows
    in most slices (all but those beyond the organ; sagittal brains: the outer 25-35 %), the anatomy
    otherwise unchanged, and marks no finding slices (a focal finding marks 2-4)."""
    threshold = VISIBLE_BY_CONDITION.get(condition, VISIBLE[SCENES[scene].signal])
    settings = RenderSettings(seed=0, image_size=64, volume_shape=(32, 64, 64), lesion_slices=(2, 4))
    for seed in range(3):
        def draw(conditions, seed=seed):
            rng = np.random.default_rng([7, seed])
            return synthesize(scene, conditions, kind="3d", rng=rng, settings=settings, plane=plane)

        diseased, normal = draw((condition,)), draw(())
        change = np.abs(diseased.pixels - normal.pixels).reshape(diseased.pixels.shape[0], -1)
        shown = change.max(axis=1) >= threshold
        assert shown.mean() >= 0.6, (seed, shown.astype(int).tolist())
        assert diseased.finding_slices == normal.finding_slices == ()


@pytest.mark.parametrize(("scene", "plane", "output"), [
    ("chest_ct", "axial", "dicom_series"), ("brain_mri", "axial", "nifti"), ("brain_mri", "sagittal", "nifti"),
    ("brain_mri", "sagittal", "dicom_multiframe")])
def test_finding_slices_index_the_volume_as_the_loaders_read_it(scene, plane, output, tmp_path):
    """The lesion truth (slices in stored order) must name the slices that differ once the file
    is read back by the real loaders: DICOM sorted by position, NIfTI reoriented to canonical."""
    from radclip.data.dicom import load_dicom
    from radclip.data.nifti import load_nifti

    settings = RenderSettings(seed=3, image_size=32, volume_shape=(16, 24, 24), lesion_slices=(2, 4))
    condition = SCENES[scene].findings[0].name
    loaded, truth = [], None
    for conditions in ((condition,), ()):
        suffix = {"nifti": ".nii.gz", "dicom_multiframe": ".dcm", "dicom_series": ""}[output]
        path = tmp_path / f"{'lesion' if conditions else 'normal'}{suffix}"
        job = Job(stream=0, index=5, scene=scene, conditions=conditions, kind="3d", output=output, path=str(path),
                  plane=plane, uid_seed=f"t{len(conditions)}")
        slices = run_job(settings, job).finding_slices
        truth = truth or slices
        image = load_nifti(path) if output == "nifti" else load_dicom(path)[0]
        assert image.plane == plane
        loaded.append(image.pixels.astype(np.float32))
    changed = np.nonzero(np.abs(loaded[0] - loaded[1]).reshape(len(loaded[0]), -1).max(axis=1))[0]
    assert tuple(changed.tolist()) == truth and truth


def test_lesion_truth_lists_every_evaluation_volume(generated):
    params, root, _ = generated
    rows = _read_csv(root / LESION_TRUTH)
    volumes = {(r["suite"], r["path"]) for r in rows}
    for suite in ("brain_mri_3d_2class", "chest_ct_3d_3class", "brain_mri_3d_sex"):
        on_disk = [p for p in (root / "eval" / suite).rglob("*") if p.suffixes[-2:] == [".nii", ".gz"]
                   or (p.is_dir() and any(child.suffix == ".dcm" for child in p.iterdir()))]
        assert on_disk and all((suite, p.relative_to(root / "eval" / suite).as_posix()) in volumes for p in on_disk)
    normal = [r for r in rows if not r["slices"]]
    diseased = [r for r in rows if r["slices"]]
    assert normal and diseased
    low, high = params.phantoms.lesion_slices
    assert all(low <= len(r["slices"].split("|")) <= high for r in diseased)


CASES_2D = [(key, f.name) for key, scene in SCENES.items() for f in scene.findings]


@pytest.mark.parametrize(("scene_key", "condition"), CASES_2D)
def test_2d_finding_is_visible_on_the_same_anatomy(scene_key, condition):
    """Render one slice twice from the same anatomy, with and without the finding."""
    scene, finding = SCENES[scene_key], SCENES[scene_key].finding(condition)
    threshold = VISIBLE_BY_CONDITION.get(condition, VISIBLE[scene.signal])
    for seed in range(3):
        rng = np.random.default_rng([11, seed])
        anatomy = scene.sample(rng)
        with_finding = finding.adjust(anatomy, rng) if finding.adjust else anatomy
        depth_range = finding.depth or scene.slice_range  # a diffuse finding: anywhere in the scene's range
        depth = float(np.mean(depth_range(with_finding, 2))) if depth_range else 0.0
        grid = image_grid(scene, 96, depth)
        before = scene.render(anatomy, grid, np.random.default_rng(1))
        after = scene.render(with_finding, grid, np.random.default_rng(1))
        slab = Slab(2, depth) if scene.slice_range else None
        finding.draw(after, grid, with_finding, finding.place(with_finding, slab, rng))
        assert np.count_nonzero(np.abs(after - before) >= threshold) >= 3, seed


@pytest.mark.parametrize("condition", RARE_LONGTAIL)
def test_long_tail_rare_findings_show_at_the_curated_size(default_params, condition):
    """The long-tail collection's rare findings, drawn at the curated size (64 px: 6.25 mm a pixel), change
    several pixels clearly: rare must mean few examples, never sub-pixel."""
    scene, finding = SCENES["chest_xray"], SCENES["chest_xray"].finding(condition)
    size = default_params.curate.image_size
    for seed in range(5):
        rng = np.random.default_rng([13, seed])
        anatomy = scene.sample(rng)
        grid = image_grid(scene, size, 0.0)
        before = scene.render(anatomy, grid, np.random.default_rng(1))
        after = scene.render(anatomy, grid, np.random.default_rng(1))
        finding.draw(after, grid, anatomy, finding.place(anatomy, None, rng))
        change = np.abs(after - before)
        assert change.max() >= 2 * VISIBLE["xray"], seed
        assert np.count_nonzero(change >= 0.5 * change.max()) >= 4, seed  # its core spans pixels, not a speck


# --------------------------------------------------------------------------- plan at the default sizes


def test_training_plan_mixes_scenes_with_a_long_tail(default_params, tmp_path):
    ph = default_params.phantoms
    jobs, rows = plan_training(default_params, tmp_path)
    assert len(jobs) == len(rows) == ph.train_2d + ph.train_3d
    scenes_2d = Counter(f"{job.scene}" for job in jobs if job.kind == "2d")
    for key, share in TRAIN_2D_MIX.items():  # one scene per patient: shares hold to a patient
        assert abs(scenes_2d[key] - share * ph.train_2d) <= ph.images_per_patient
    assert {"brain_mri", "chest_ct", "abdomen_ct"} <= set(scenes_2d)  # 2D slices of CT/MRI too

    conditions = Counter(c for row in rows for c in row.findings.split("|") if c)
    for rare in ("Pneumothorax", "Meniscal Tear", "Kidney Cyst"):
        assert 0 < conditions[rare] < 0.3 * conditions["Edema"]
    multi_label = sum("|" in row.findings for row in rows) / len(rows)
    assert 0.01 < multi_label < 0.15

    outputs = Counter(job.output for job in jobs)
    assert {"png", "nifti", "dicom_image", "dicom_series", "dicom_multiframe"} <= set(outputs)
    assert any(job.monochrome1 for job in jobs)
    assert {job.plane for job in jobs if job.kind == "3d"} == {"axial", "sagittal"}
    patients_2d = {row.patient_id or dict(job.patient)["PatientID"] for job, row in zip(jobs, rows) if job.kind == "2d"}
    patients_3d = {row.patient_id or dict(job.patient)["PatientID"] for job, row in zip(jobs, rows) if job.kind == "3d"}
    assert not patients_2d & patients_3d


def test_suite_patients_and_random_streams_never_overlap_training(default_params, tmp_path):
    jobs, rows = plan_training(default_params, tmp_path)
    suite_jobs = [job for suite in plan_suites(default_params, tmp_path) for job in suite.jobs]
    train_ids = {row.patient_id or dict(job.patient)["PatientID"] for job, row in zip(jobs, rows)}
    suite_ids = {dict(job.patient)["PatientID"] for job in suite_jobs if job.patient}
    assert suite_ids and not train_ids & suite_ids
    assert {job.stream for job in suite_jobs}.isdisjoint({job.stream for job in jobs})


# --------------------------------------------------------------------------- disabled / safety


def test_disabled_writes_only_a_readme(tmp_path):
    params = tiny_params(tmp_path, phantoms={"enabled": False})
    root = _raw(params)
    root.mkdir(parents=True)
    (root / "stale.png").write_bytes(b"from an earlier run")
    summary = generate(params)
    assert [path.name for path in root.iterdir()] == ["README.txt"]
    assert "disabled" in (root / "README.txt").read_text()
    assert summary["enabled"] is False


def test_refuses_to_empty_a_project_folder(tmp_path):
    (tmp_path / "params.yaml").write_text("profile: default\n")
    with pytest.raises(ValueError, match="refusing"):
        generate(tiny_params(tmp_path / "other"), tmp_path)
    assert (tmp_path / "params.yaml").exists()
