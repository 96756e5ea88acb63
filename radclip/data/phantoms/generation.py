"""``generate``: plan, draw and write the whole phantom collection (training set,
evaluation suites, tables, lesion and anatomy truth, summary and README) to ``paths.raw``."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from radclip.config import Params
from radclip.data.phantoms.longtail import plan_longtail
from radclip.data.phantoms.plan import TrainRow, plan_training
from radclip.data.phantoms.render import RenderSettings
from radclip.data.phantoms.suites import ANATOMY_COLUMNS, CHESTXRAY14_BOX_COLUMNS, SuitePlan, box_rows, plan_suites
from radclip.data.phantoms.writers import Job, JobTruth, run_job


def _reset_dir(out_dir: Path) -> None:
    """Empty ``out_dir`` for a clean rerun, refusing folders that are plainly not ours."""
    out_dir = out_dir.resolve()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise NotADirectoryError(f"{out_dir}: phantoms output must be a folder")
        ours_to_empty = not (
            (out_dir / ".git").exists()
            or (out_dir / "params.yaml").exists()
            or out_dir == Path.home()
            or Path.cwd().resolve().is_relative_to(out_dir)  # a typo must not delete the working tree
        )
        if not ours_to_empty:
            raise ValueError(f"{out_dir}: refusing to empty what looks like a project, home or working folder")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)


def _write_table(path: Path, header: Sequence[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _run_all(jobs: list[Job], settings: RenderSettings, workers: int) -> dict[str, JobTruth]:
    """Run every job; returns where each study's findings were drawn, by path."""
    run = partial(run_job, settings)
    if workers <= 1 or len(jobs) < 2:
        return {truth.path: truth for truth in map(run, jobs)}
    # Heavy jobs (volumes) first so the pool does not end on one long straggler.
    ordered = sorted(jobs, key=lambda j: j.kind != "3d")
    with ProcessPoolExecutor(max_workers=workers) as pool:
        truths = pool.map(run, ordered, chunksize=max(1, min(16, len(ordered) // (8 * workers))))
        return {truth.path: truth for truth in truths}


LESION_TRUTH = "lesion_slices.csv"  # under paths.raw: where each evaluation volume's finding was drawn


def _write_lesion_truth(out_dir: Path, suites: list[SuitePlan], truths: dict[str, JobTruth]) -> None:
    """Ground truth the real datasets lack: the stored slices of each evaluation volume's finding
    (path relative to its suite, as curation records ``source_path``), for the attention plots."""
    rows = []
    for suite in suites:
        root = out_dir / suite.location
        for job in suite.jobs:
            if job.kind == "3d":
                slices = truths[job.path].finding_slices
                rel = Path(job.path).relative_to(root).as_posix()
                rows.append([suite.name, rel, job.plane, "|".join(map(str, slices))])
    _write_table(out_dir / LESION_TRUTH, ("suite", "path", "plane", "slices"), rows)


ANATOMY_TRUTH = "anatomy_truth.csv"  # under paths.raw: the whole-volume anatomy behind a label (sex suite)


def _write_anatomy_truth(out_dir: Path, suites: list[SuitePlan]) -> None:
    """Ground truth of labels that are no focal finding: per volume of such a suite, the anatomy
    parameters the plan chose (``ANATOMY_COLUMNS``; path relative to its suite)."""
    rows = []
    for suite in suites:
        root = out_dir / suite.location
        for job in suite.jobs:
            if job.path in suite.anatomy:
                values = suite.anatomy[job.path]
                rel = Path(job.path).relative_to(root).as_posix()
                rows.append([suite.name, rel, job.plane, *(values[c] for c in ANATOMY_COLUMNS)])
    _write_table(out_dir / ANATOMY_TRUTH, ("suite", "path", "plane", *ANATOMY_COLUMNS), rows)


def _summary(params: Params, train_rows: list[TrainRow], train_jobs: list[Job], suites: list[SuitePlan]) -> dict:
    by_scene: dict[str, dict[str, int]] = {}
    by_condition: Counter = Counter()
    for row in train_rows:
        label = f"{row.region} {row.modality}"
        counts = by_scene.setdefault(label, {})
        for condition in row.findings.split("|") if row.findings else ["Normal"]:
            counts[condition] = counts.get(condition, 0) + 1
            by_condition[condition] += 1
    outputs = Counter(job.output for job in train_jobs)
    train = {
        "images_2d": sum(1 for j in train_jobs if j.kind == "2d"),
        "volumes_3d": sum(1 for j in train_jobs if j.kind == "3d"),
        "patients": len({r.patient_id or dict(j.patient)["PatientID"] for j, r in zip(train_jobs, train_rows)}),
        "multi_label": sum(1 for r in train_rows if "|" in r.findings),
        "outputs": dict(sorted(outputs.items())),
        "by_scene": {k: dict(sorted(v.items())) for k, v in sorted(by_scene.items())},
        "by_condition": dict(sorted(by_condition.items())),
    }
    suite_counts = {s.name: {"total": len(s.jobs), "per_class": s.counts} for s in suites}
    totals = {"train": len(train_jobs), "eval": sum(len(s.jobs) for s in suites)}
    return {
        "enabled": True, "seed": params.phantoms.data_seed, "totals": totals, "train": train, "suites": suite_counts
    }


README = """\
RadCLIP phantom data (synthetic; written by `radclip phantoms`, radclip/data/phantoms.py)
=====================================================================================
Deterministic synthetic radiology studies in real formats and public dataset layouts.
Seed {seed}; regenerate rather than edit: the whole folder is replaced on every run.

train/                                   training collection (format: csv)
  index.csv                              path,patient_id,region,modality,findings
                                         (path relative to train/; findings joined by "|", empty =
                                         normal; patient_id empty for DICOM rows: read PatientID)
  png/img-NNNNNN.png                     2D images, 8-bit (CT through a window, MR rescaled)
  nifti/vol-NNNNNN.nii.gz                volumes (int16; CT in HU; axial or sagittal affines)
  dicom/<patient>/img-NNNNNN.dcm         2D DICOM (DX, some MONOCHROME1; CT/MR slices)
  dicom/<patient>/vol-NNNNNN/            CT series, one file per slice (names not in slice order)
  dicom/<patient>/vol-NNNNNN_mf.dcm      enhanced multi-frame MR volumes
eval/chest_xray_5class/                  CheXpert layout: CheXpert-v1.0-small/valid.csv + JPEGs
eval/brain_mri_4class/                   Crystal Clean layout: Testing/<class>/Te-xx_NNNN.jpg
eval/brain_mri_3d_2class/                IXI layout: IXI-T1/IXI<id>-<site>-<n>-T1.nii.gz + IXI.csv
                                         (FINDING 0 normal, 1 glioma)
eval/chest_ct_3d_3class/                 COVID-CT-MD layout: <class> Cases/<folder>/ DICOM series
                                         + Index.csv
eval/brain_mri_3d_sex/                   IXI layout labelled by SEX_ID (1 male, 2 female), no finding:
                                         head size and shape differ by sex (anatomy_truth.csv)
eval/chest_xray_boxes/                   NIH ChestX-ray14 layout: images/NNNNNNNN_000.png,
                                         Data_Entry_2017.csv, BBox_List_2017.csv (x, y, w, h in pixels
                                         around where each focal finding was drawn; a localisation suite)
cxr_lt/                                  CXR-LT layout, long-tailed multi-label chest X-rays (format: cxr_lt):
  train.csv, test.csv                    dicom_id,subject_id,study_id,ViewPosition,fpath + a 0/1 column
                                         per class (No Finding among them); train: rare findings about
                                         1 % each; test: the multi-label suite, its own patients
  files/p19/p<subject>/s<study>/<id>.png the images (MIMIC-CXR-JPG's folders)
lesion_slices.csv                        per evaluation volume: the slices its finding was drawn into
anatomy_truth.csv                        per sex-suite volume: SEX_ID, head scale/aspect/height, semi-axes
phantoms.json                            counts per region/modality/condition and per suite

DICOM headers carry fake PHI (names, ids, dates, addresses) on purpose: curation must remove it.
In volumes every finding spans {lesion_min}-{lesion_max} contiguous slices; the rest is anatomy and noise.
"""

DISABLED_README = """\
Phantom data is disabled (phantoms.enabled: false in params): this folder is intentionally empty.
Point data.collections at real datasets instead.
"""


def generate(params: Params, out_dir: Path | None = None) -> dict:
    """Write the phantom collection (training set and evaluation suites) to ``out_dir``.

    ``out_dir`` defaults to ``paths.raw``; it is emptied first, so reruns are
    clean. Returns the summary also written to ``phantoms.json``.
    """
    out_dir = Path(out_dir) if out_dir is not None else params.resolve(params.paths.raw)
    _reset_dir(out_dir)
    ph = params.phantoms
    if not ph.enabled:
        (out_dir / "README.txt").write_text(DISABLED_README)
        return {"enabled": False, "totals": {"train": 0, "eval": 0}}

    settings = RenderSettings(ph.data_seed, ph.image_size, ph.volume_shape, ph.lesion_slices)
    train_jobs, train_rows = plan_training(params, out_dir)
    suites = plan_suites(params, out_dir)
    longtail = plan_longtail(params, out_dir)
    truths = _run_all(train_jobs + [job for suite in (*suites, longtail) for job in suite.jobs], settings,
                      ph.workers)

    header = ("path", "patient_id", "region", "modality", "findings")
    _write_table(out_dir / "train" / "index.csv", header, [[getattr(r, h) for h in header] for r in train_rows])
    for suite in (*suites, longtail):
        for folder in suite.folders:
            (out_dir / suite.location / folder).mkdir(parents=True, exist_ok=True)
        for rel, (columns, rows) in suite.tables.items():
            _write_table(out_dir / suite.location / rel, columns, rows)
        if suite.box_table is not None:
            boxes = {job.path: truths[job.path].finding_boxes for job in suite.jobs}
            _write_table(out_dir / suite.location / suite.box_table, CHESTXRAY14_BOX_COLUMNS,
                         box_rows(suite, boxes))
    _write_lesion_truth(out_dir, suites, truths)
    _write_anatomy_truth(out_dir, suites)
    summary = _summary(params, train_rows, train_jobs, suites)
    summary["cxr_lt"] = {"total": len(longtail.jobs), "per_class": longtail.counts}
    (out_dir / "phantoms.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    low, high = ph.lesion_slices
    (out_dir / "README.txt").write_text(README.format(seed=ph.data_seed, lesion_min=low, lesion_max=high))
    return summary
