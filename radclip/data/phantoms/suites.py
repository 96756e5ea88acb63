"""The held-out evaluation suites, each planned in its public dataset's layout:
CheXpert (chest X-ray, 5 classes), Crystal Clean brain tumour MRI (4 classes),
IXI T1 volumes (normal vs glioma), COVID-CT-MD (chest CT series, 3 classes) and
IXI T1 volumes labelled by sex, the real IXI task, and chest X-rays with lesion
boxes in NIH ChestX-ray14's layout (the localisation suite).

All but the last are focal-finding tasks: a lesion in a few slices, where
attention pooling should beat averaging. In the sex suite the label is a
whole-volume property: head size and shape (:func:`~radclip.data.phantoms.brain.sample_sex_head`),
drawn by the plan and recorded in ``SuitePlan.anatomy``, with no focal finding.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radclip.config import Params
from radclip.core.records import Plane
from radclip.data.phantoms.brain import HEAD_TRUTH_COLUMNS, sample_sex_head
from radclip.data.phantoms.geometry import Rng
from radclip.data.phantoms.plan import (
    SAGITTAL_BRAIN_FRACTION,
    STREAM_BRAIN_MRI_3D_2CLASS,
    STREAM_BRAIN_MRI_3D_SEX,
    STREAM_BRAIN_MRI_4CLASS,
    STREAM_CHEST_CT_3D_3CLASS,
    STREAM_CHEST_XRAY_5CLASS,
    STREAM_CHEST_XRAY_BOXES,
    STREAM_SUITE_PLAN,
    _fake_phi,
)
from radclip.data.phantoms.scenes import SCENES
from radclip.data.phantoms.writers import Job

CHEXPERT_OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)  # fmt: skip
CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS)
CHEXPERT_5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
CHEXPERT_FIRST_PATIENT = 64541  # the real validation set's first patient folder
BRAIN_4 = {  # class folder -> (condition, file name prefix)
    "glioma": ("Glioma", "gl"),
    "meningioma": ("Meningioma", "me"),
    "notumor": (None, "no"),
    "pituitary": ("Pituitary Tumor", "pi"),
}
IXI_SITES = ("Guys", "HH", "IOP")
IXI_SEX = ("1", "2")  # IXI SEX_ID: 1 male, 2 female
# Per SEX_ID: height (cm) and weight (kg) as (mean, sd), for a plausible table (read by nothing).
IXI_BODY = {"1": ((177.0, 7.0), (80.0, 12.0)), "2": ((164.0, 6.5), (66.0, 11.0))}
ANATOMY_COLUMNS = ("SEX_ID", *HEAD_TRUTH_COLUMNS)  # per volume in SuitePlan.anatomy
COVID_CLASSES = {
    "COVID-19": ("COVID-19 Cases", "P", ("COVID-19",)),
    "CAP": ("CAP Cases", "cap", ("Community-Acquired Pneumonia",)),
    "Normal": ("Normal Cases", "normal", ()),
}

# NIH ChestX-ray14 (Data_Entry_2017.csv, BBox_List_2017.csv): its label names for the phantom chest
# X-ray's focal findings, the ones drawn at one place (a box can enclose them). Edema (bilateral haze)
# and Cardiomegaly (the heart's size, drawn as anatomy) have no box here.
CHESTXRAY14_LABELS = {
    "Atelectasis": "Atelectasis",
    "Consolidation": "Consolidation",
    "Pleural Effusion": "Effusion",
    "Pneumothorax": "Pneumothorax",
    "Nodule": "Nodule",
}
CHESTXRAY14_NORMAL = "No Finding"
CHESTXRAY14_FIRST_PATIENT = 30_001  # beyond the real release's 30,805 patients would clash; ids are ours
# The real files' headers, bracketed names and trailing empty columns as distributed (unquoted commas
# split "OriginalImage[Width,Height]" and "Bbox [x,y,w,h]" into several columns).
CHESTXRAY14_ENTRY_COLUMNS = (
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
)  # fmt: skip
CHESTXRAY14_BOX_COLUMNS = ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]", "", "", "")

Table = tuple[Sequence[str], list[list[Any]]]  # (header, rows) of one CSV


@dataclass
class SuitePlan:
    name: str
    jobs: list[Job]
    tables: dict[str, Table]  # relative path -> (header, rows)
    counts: dict[str, int]
    folders: tuple[str, ...] = ()  # created even when empty, so a zero-size suite still scans
    # Job path -> whole-volume anatomy the plan chose (ANATOMY_COLUMNS): the truth of suites whose
    # label is no focal finding.
    anatomy: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Where the suite's lesion-box table goes (relative to the suite), filled in from what the
    # renderer drew; None: the suite has none. ``box_names``: job path -> the image name the table uses.
    box_table: str | None = None
    box_names: dict[str, str] = field(default_factory=dict)
    parent: str = "eval"  # the folder under the phantom root that holds the suite's folder

    @property
    def location(self) -> Path:
        """The suite's folder relative to the phantom root."""
        return Path(self.parent) / self.name


def _shuffled_classes(classes: Sequence[Any], per_class: int, rng: Rng) -> list[Any]:
    """Each class ``per_class`` times, in random order (so ids and file order say nothing)."""
    ordered = [c for c in classes for _ in range(per_class)]
    return [ordered[i] for i in rng.permutation(len(ordered))]


def _chexpert_row(rel_path: str, positive: str, rng: Rng) -> list[Any]:
    """One valid.csv row: the positive, 0.0/blank for the other four, and the other
    observations as a radiologist's labeller would leave them (some uncertain)."""
    values: dict[str, str] = {name: "" for name in CHEXPERT_OBSERVATIONS}
    values["No Finding"] = "" if rng.uniform() < 0.5 else "0.0"
    for name in CHEXPERT_5:
        values[name] = "1.0" if name == positive else ("0.0" if rng.uniform() < 0.5 else "")
    if positive in ("Atelectasis", "Consolidation", "Edema"):
        values["Lung Opacity"] = "1.0" if rng.uniform() < 0.7 else "-1.0"
    if positive == "Consolidation" and rng.uniform() < 0.4:
        values["Pneumonia"] = "-1.0"
    if positive == "Cardiomegaly":
        values["Enlarged Cardiomediastinum"] = "1.0" if rng.uniform() < 0.5 else "-1.0"
    elif rng.uniform() < 0.15:
        values["Enlarged Cardiomediastinum"] = "-1.0"
    if rng.uniform() < 0.1:
        values["Pleural Other"] = "0.0"
    sex = "Male" if rng.uniform() < 0.5 else "Female"
    view = "AP" if rng.uniform() < 0.6 else "PA"
    return [rel_path, sex, int(rng.integers(18, 91)), "Frontal", view, *(values[n] for n in CHEXPERT_OBSERVATIONS)]


def _plan_chest_xray_5class(params: Params, root: Path, rng: Rng) -> SuitePlan:
    per_class = params.phantoms.suites.chest_xray_5class
    jobs, rows = [], []
    for index, condition in enumerate(_shuffled_classes(CHEXPERT_5, per_class, rng)):
        rel = f"CheXpert-v1.0-small/valid/patient{CHEXPERT_FIRST_PATIENT + index}/study1/view1_frontal.jpg"
        path = str(root / rel)
        jobs.append(Job(STREAM_CHEST_XRAY_5CLASS, index, "chest_xray", (condition,), "2d", "jpeg", path, "coronal"))
        rows.append(_chexpert_row(rel, condition, rng))
    table: dict[str, Table] = {"CheXpert-v1.0-small/valid.csv": (CHEXPERT_COLUMNS, rows)}
    counts = {c: per_class for c in CHEXPERT_5}
    return SuitePlan("chest_xray_5class", jobs, table, counts, ("CheXpert-v1.0-small/valid",))


def _plan_brain_mri_4class(params: Params, root: Path, rng: Rng) -> SuitePlan:
    per_class = params.phantoms.suites.brain_mri_4class
    jobs: list[Job] = []
    numbers: Counter[str] = Counter()
    for index, folder in enumerate(_shuffled_classes(list(BRAIN_4), per_class, rng)):
        condition, short = BRAIN_4[folder]
        numbers[folder] += 1
        path = root / "Testing" / folder / f"Te-{short}_{numbers[folder]:04d}.jpg"
        conditions = (condition,) if condition else ()
        jobs.append(Job(STREAM_BRAIN_MRI_4CLASS, index, "brain_mri", conditions, "2d", "jpeg", str(path)))
    folders = tuple(f"Testing/{folder}" for folder in BRAIN_4)
    return SuitePlan("brain_mri_4class", jobs, {}, {folder: per_class for folder in BRAIN_4}, folders)


def _plan_brain_mri_3d_2class(params: Params, root: Path, rng: Rng) -> SuitePlan:
    per_class = params.phantoms.suites.brain_mri_3d_2class
    jobs, rows = [], []
    for index, finding in enumerate(_shuffled_classes((0, 1), per_class, rng)):
        ixi_id = index + 2  # IXI ids start at 002
        site, number = IXI_SITES[int(rng.integers(len(IXI_SITES)))], int(rng.integers(0, 10000))
        name = f"IXI{ixi_id:03d}-{site}-{number:04d}-T1.nii.gz"
        plane: Plane = "sagittal" if rng.uniform() < SAGITTAL_BRAIN_FRACTION else "axial"
        conditions = ("Glioma",) if finding else ()
        path = str(root / "IXI-T1" / name)
        jobs.append(Job(STREAM_BRAIN_MRI_3D_2CLASS, index, "brain_mri", conditions, "3d", "nifti", path, plane))
        height = round(float(rng.normal(170, 9)), 1)
        weight, age = round(float(rng.normal(72, 12)), 1), round(float(rng.uniform(20, 86)), 2)
        rows.append([ixi_id, int(rng.integers(1, 3)), height, weight, age, finding])
    table: dict[str, Table] = {"IXI.csv": (("IXI_ID", "SEX_ID", "HEIGHT", "WEIGHT", "AGE", "FINDING"), rows)}
    return SuitePlan("brain_mri_3d_2class", jobs, table, {"0": per_class, "1": per_class}, ("IXI-T1",))


def _plan_chest_ct_3d_3class(params: Params, root: Path, rng: Rng) -> SuitePlan:
    ph, per_class = params.phantoms, params.phantoms.suites.chest_ct_3d_3class
    jobs, rows = [], []
    numbers: Counter[str] = Counter()
    for index, diagnosis in enumerate(_shuffled_classes(list(COVID_CLASSES), per_class, rng)):
        class_folder, prefix, conditions = COVID_CLASSES[diagnosis]
        numbers[diagnosis] += 1
        folder = f"{prefix}{numbers[diagnosis]:03d}"
        patient_id = f"PH-E-CT-{index + 1:04d}"
        jobs.append(
            Job(
                STREAM_CHEST_CT_3D_3CLASS, index, "chest_ct", conditions, "3d", "dicom_series",
                str(root / class_folder / folder), "axial",
                patient=_fake_phi(patient_id, 500000 + index, 0),
                uid_seed=f"radclip-phantom:{ph.data_seed}:{STREAM_CHEST_CT_3D_3CLASS}:{index}",
            )
        )  # fmt: skip
        rows.append([folder, patient_id, diagnosis, "MF"[int(rng.integers(2))], int(rng.integers(20, 90))])
    table: dict[str, Table] = {"Index.csv": (("Folder/ID", "Patient ID", "Diagnosis", "Gender", "Age"), rows)}
    folders = tuple(class_folder for class_folder, _, _ in COVID_CLASSES.values())
    return SuitePlan("chest_ct_3d_3class", jobs, table, {c: per_class for c in COVID_CLASSES}, folders)


def _plan_brain_mri_3d_sex(params: Params, root: Path, rng: Rng) -> SuitePlan:
    """IXI T1 volumes labelled by SEX_ID, as the real IXI task: no finding in any volume; the
    head's size and shape, chosen here per patient, carry the sex into every slice."""
    suites = params.phantoms.suites
    per_class = suites.brain_mri_3d_sex
    first_id = 2 + 2 * suites.brain_mri_3d_2class  # IXI ids continue after the other IXI suite's
    jobs, rows = [], []
    anatomy: dict[str, dict[str, Any]] = {}
    for index, sex_id in enumerate(_shuffled_classes(IXI_SEX, per_class, rng)):
        ixi_id = first_id + index
        site, number = IXI_SITES[int(rng.integers(len(IXI_SITES)))], int(rng.integers(0, 10000))
        name = f"IXI{ixi_id:03d}-{site}-{number:04d}-T1.nii.gz"
        plane: Plane = "sagittal" if rng.uniform() < SAGITTAL_BRAIN_FRACTION else "axial"
        head = sample_sex_head(sex_id, rng)
        path = str(root / "IXI-T1" / name)
        traits = (("head", head.semi_axes),)
        jobs.append(Job(STREAM_BRAIN_MRI_3D_SEX, index, "brain_mri", (), "3d", "nifti", path, plane, traits=traits))
        anatomy[path] = {"SEX_ID": sex_id, **head.truth()}
        (height_mean, height_sd), (weight_mean, weight_sd) = IXI_BODY[sex_id]
        height = round(float(rng.normal(height_mean, height_sd)), 1)
        weight, age = round(float(rng.normal(weight_mean, weight_sd)), 1), round(float(rng.uniform(20, 86)), 2)
        rows.append([ixi_id, int(sex_id), height, weight, age])
    table: dict[str, Table] = {"IXI.csv": (("IXI_ID", "SEX_ID", "HEIGHT", "WEIGHT", "AGE"), rows)}
    counts = {sex_id: per_class for sex_id in IXI_SEX}
    return SuitePlan("brain_mri_3d_sex", jobs, table, counts, ("IXI-T1",), anatomy)


def _plan_chest_xray_boxes(params: Params, root: Path, rng: Rng) -> SuitePlan:
    """Frontal chest X-rays in NIH ChestX-ray14's layout, ``per_class`` of each focal finding and as
    many normals, one image per patient; the boxes are written after rendering (``box_table``)."""
    per_class = params.phantoms.suites.chest_xray_boxes
    size = params.phantoms.image_size
    spacing = round(SCENES["chest_xray"].fov_mm / size, 4)
    jobs, rows, names = [], [], {}
    for index, condition in enumerate(_shuffled_classes([*CHESTXRAY14_LABELS, None], per_class, rng)):
        patient = CHESTXRAY14_FIRST_PATIENT + index
        name = f"{patient:08d}_000.png"
        path = str(root / "images" / name)
        conditions = (condition,) if condition else ()
        jobs.append(Job(STREAM_CHEST_XRAY_BOXES, index, "chest_xray", conditions, "2d", "png", path, "coronal"))
        label = CHESTXRAY14_LABELS[condition] if condition else CHESTXRAY14_NORMAL
        sex, view = "MF"[int(rng.integers(2))], "PA" if rng.uniform() < 0.6 else "AP"
        rows.append([name, label, 0, patient, int(rng.integers(18, 91)), sex, view, size, size, spacing, spacing])
        names[path] = name
    table: dict[str, Table] = {"Data_Entry_2017.csv": (CHESTXRAY14_ENTRY_COLUMNS, rows)}
    counts = {**dict.fromkeys(CHESTXRAY14_LABELS.values(), per_class), CHESTXRAY14_NORMAL: per_class}
    return SuitePlan("chest_xray_boxes", jobs, table, counts, ("images",), box_table="BBox_List_2017.csv",
                     box_names=names)


def box_rows(
    suite: SuitePlan, boxes: Mapping[str, Sequence[tuple[str, float, float, float, float]]]
) -> list[list[Any]]:
    """BBox_List_2017.csv rows of a suite from the renderer's boxes (job path -> its LesionBoxes),
    in the suite's image order, coordinates in pixels of the written image."""
    rows: list[list[Any]] = []
    for job in suite.jobs:
        for finding, x, y, w, h in boxes[job.path]:
            rows.append([suite.box_names[job.path], CHESTXRAY14_LABELS[finding], x, y, w, h, "", "", ""])
    return rows


def plan_suites(params: Params, out_dir: Path) -> list[SuitePlan]:
    """The held-out evaluation suites, each in its public dataset's layout."""
    seed = params.phantoms.data_seed
    planners = (  # a suite's plan stream is its place here: append new suites at the end
        ("chest_xray_5class", _plan_chest_xray_5class),
        ("brain_mri_4class", _plan_brain_mri_4class),
        ("brain_mri_3d_2class", _plan_brain_mri_3d_2class),
        ("chest_ct_3d_3class", _plan_chest_ct_3d_3class),
        ("brain_mri_3d_sex", _plan_brain_mri_3d_sex),
        ("chest_xray_boxes", _plan_chest_xray_boxes),
    )
    return [
        planner(params, out_dir / "eval" / name, np.random.default_rng([seed, STREAM_SUITE_PLAN, number]))
        for number, (name, planner) in enumerate(planners)
    ]
