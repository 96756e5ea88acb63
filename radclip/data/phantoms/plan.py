"""The generation plan: random streams, the training mix and the training collection's jobs.

Each study has its own generator ``default_rng([seed, stream, index])``, split
into anatomy, finding and noise streams; which study gets which scene,
conditions, format and patient comes from a separate plan stream.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radclip.config import Params
from radclip.core.records import Plane
from radclip.data.phantoms.geometry import Rng
from radclip.data.phantoms.scenes import SCENES
from radclip.data.phantoms.writers import Job

# Random streams: each study's generator is default_rng([seed, stream, index]).
STREAM_PLAN = 0
STREAM_TRAIN_2D = 1
STREAM_TRAIN_3D = 2
STREAM_SUITE_PLAN = 10
STREAM_CHEST_XRAY_5CLASS = 11
STREAM_BRAIN_MRI_4CLASS = 12
STREAM_BRAIN_MRI_3D_2CLASS = 13
STREAM_CHEST_CT_3D_3CLASS = 14
STREAM_BRAIN_MRI_3D_SEX = 15
STREAM_CHEST_XRAY_BOXES = 16
STREAM_CXR_LT_PLAN = 20  # the long-tail collection (longtail.py): its plan, training and test images
STREAM_CXR_LT_TRAIN = 21
STREAM_CXR_LT_TEST = 22

# How the training set is split between scenes (2D images and 3D volumes).
TRAIN_2D_MIX = {"chest_xray": 0.40, "brain_mri": 0.20, "chest_ct": 0.15, "abdomen_ct": 0.12, "knee_mri": 0.13}
TRAIN_3D_MIX = {"brain_mri": 0.40, "chest_ct": 0.40, "abdomen_ct": 0.20}
SAGITTAL_BRAIN_FRACTION = 0.4  # brain volumes acquired sagittally (IXI T1 is sagittal), the rest axial
MONOCHROME1_FRACTION = 0.3  # DICOM radiographs stored inverted, as some CR/DX systems do


def _quota(weights: Mapping[Any, float], n: int, rng: Rng) -> list[Any]:
    """Exactly ``n`` keys in proportion to ``weights`` (largest remainder), shuffled."""
    keys = list(weights)
    share = np.array([weights[k] for k in keys], dtype=float)
    exact = share / share.sum() * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - int(counts.sum())]:
        counts[i] += 1
    ordered = [key for key, count in zip(keys, counts) for _ in range(count)]
    return [ordered[i] for i in rng.permutation(n)]


def _fake_phi(patient_id: str, number: int, study: int) -> tuple[tuple[str, str], ...]:
    """Plausible but fake identifying values, so curation's PHI removal has something to remove."""
    return (
        ("PatientName", f"PHANTOM^{patient_id.replace('-', '')}"),
        ("PatientID", patient_id),
        ("PatientBirthDate", f"{1935 + number % 60:04d}{1 + number % 12:02d}{1 + number % 28:02d}"),
        ("PatientSex", "FM"[number % 2]),
        ("AccessionNumber", f"ACC{number:06d}{study:02d}"),
        ("InstitutionName", "Phantom General Hospital"),
        ("ReferringPhysicianName", "DOE^JANE"),
        ("StudyDate", f"2024{1 + (number + study) % 12:02d}{1 + (number * 7 + study) % 28:02d}"),
        ("PatientAddress", f"{1 + number % 200} Phantom Street, Imaging City"),
        ("OtherPatientIDs", f"MRN{number:08d}"),
    )


@dataclass
class TrainRow:
    path: str
    patient_id: str
    region: str
    modality: str
    findings: str


def _train_items(
    n: int, mix: Mapping[str, float], kind: str, ipp: int, first_patient: int, rng: Rng
) -> list[tuple[int, str, tuple[str, ...]]]:
    """(patient number, scene, conditions) per item: one scene per patient, conditions by quota per scene."""
    n_patients = math.ceil(n / ipp)
    scenes = _quota(mix, n_patients, rng)
    owners = [(first_patient + p, scenes[p]) for p in range(n_patients) for _ in range(ipp)][:n]
    labels: dict[str, list[tuple[str, ...]]] = {}
    for key in mix:
        count = sum(1 for _, scene in owners if scene == key)
        labels[key] = _quota(SCENES[key].label_weights(kind), count, rng)
    return [(patient, scene, labels[scene].pop()) for patient, scene in owners]


def plan_training(params: Params, out_dir: Path) -> tuple[list[Job], list[TrainRow]]:
    """Jobs and index rows of the training collection (``train/``)."""
    ph = params.phantoms
    rng = np.random.default_rng([ph.data_seed, STREAM_PLAN])
    train = out_dir / "train"
    jobs: list[Job] = []
    rows: list[TrainRow] = []
    items_2d = _train_items(ph.train_2d, TRAIN_2D_MIX, "2d", ph.images_per_patient, 0, rng)
    first_3d = math.ceil(ph.train_2d / ph.images_per_patient)
    items_3d = _train_items(ph.train_3d, TRAIN_3D_MIX, "3d", ph.images_per_patient, first_3d, rng)
    for kind, stream, items in (("2d", STREAM_TRAIN_2D, items_2d), ("3d", STREAM_TRAIN_3D, items_3d)):
        n_dicom = round(ph.dicom_fraction * len(items))
        dicom = set(rng.permutation(len(items))[:n_dicom].tolist())
        for index, (patient_number, scene_key, conditions) in enumerate(items):
            scene = SCENES[scene_key]
            patient_id = f"PH-T-{patient_number:06d}"
            item_id = f"{'img' if kind == '2d' else 'vol'}-{index:06d}"
            plane: Plane = scene.plane_2d if kind == "2d" else "axial"
            if "sagittal" in scene.planes_3d and rng.uniform() < SAGITTAL_BRAIN_FRACTION:
                plane = "sagittal"  # 2D brain slices too: the 2D encoder must know sagittal slices
            monochrome1 = scene.signal == "xray" and rng.uniform() < MONOCHROME1_FRACTION
            if index in dicom:
                folder = f"dicom/{patient_id}"
                if kind == "2d":
                    output, rel = "dicom_image", f"{folder}/{item_id}.dcm"
                elif scene.signal == "ct":
                    output, rel = "dicom_series", f"{folder}/{item_id}"
                else:
                    output, rel = "dicom_multiframe", f"{folder}/{item_id}_mf.dcm"
            else:
                output, rel = ("png", f"png/{item_id}.png") if kind == "2d" else ("nifti", f"nifti/{item_id}.nii.gz")
            jobs.append(
                Job(
                    stream=stream,
                    index=index,
                    scene=scene_key,
                    conditions=conditions,
                    kind=kind,  # type: ignore[arg-type]
                    output=output,  # type: ignore[arg-type]
                    path=str(train / rel),
                    plane=plane,
                    patient=_fake_phi(patient_id, patient_number, index) if output.startswith("dicom") else (),
                    uid_seed=f"radclip-phantom:{ph.data_seed}:{stream}:{index}",
                    monochrome1=monochrome1 and output == "dicom_image",
                )
            )
            rows.append(
                TrainRow(
                    path=rel,
                    patient_id="" if output.startswith("dicom") else patient_id,  # DICOM: from the PatientID tag
                    region=scene.region,
                    modality=scene.modality,
                    findings="|".join(conditions),
                )
            )
    return jobs, rows
