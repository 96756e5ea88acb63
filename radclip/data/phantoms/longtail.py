"""The long-tail chest X-ray collection in CXR-LT's layout (CXR-CML, issue 13).

``cxr_lt/train.csv`` lists training images whose findings follow a long tail: five
common ones (8-11 % of the images each), two medium (about 4 %) and five rare
(about 1 % each: Rib Fracture, Mass, Calcified Granuloma, Hiatal Hernia,
Subcutaneous Emphysema), with co-occurring pairs, so that each rare class has
10-25 training images after curation's split. ``cxr_lt/test.csv`` is the
multi-label suite: ``test_per_class`` images of each class, the pairs and twice
as many normals, one image per patient, patients disjoint from training. Both
CSVs have CXR-LT's columns (``dicom_id, subject_id, study_id, ViewPosition,
fpath`` and one 0/1 column per class, ``No Finding`` among them) and the
images sit in MIMIC-CXR-JPG's ``files/p<xx>/p<subject>/s<study>/`` folders, so
the ``cxr_lt`` collection format reads them as it reads the real release.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from radclip.config import Params
from radclip.data.phantoms.plan import STREAM_CXR_LT_PLAN, STREAM_CXR_LT_TEST, STREAM_CXR_LT_TRAIN, _quota
from radclip.data.phantoms.suites import SuitePlan, Table
from radclip.data.phantoms.writers import Job

COMMON = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
MEDIUM = ("Pneumothorax", "Nodule")
RARE = ("Rib Fracture", "Mass", "Calcified Granuloma", "Hiatal Hernia", "Subcutaneous Emphysema")
CLASSES = (*COMMON, *MEDIUM, *RARE)
NORMAL_COLUMN = "No Finding"
# Relative frequency of each label set among the training images; the rare classes' totals (single
# plus pairs) come to 1.1-1.3 % of the images.
TRAIN_WEIGHTS: dict[tuple[str, ...], float] = {
    (): 0.22,
    ("Atelectasis",): 0.11, ("Cardiomegaly",): 0.11, ("Pleural Effusion",): 0.11, ("Edema",): 0.09,
    ("Consolidation",): 0.08, ("Pneumothorax",): 0.04, ("Nodule",): 0.04,
    ("Rib Fracture",): 0.010, ("Mass",): 0.010, ("Calcified Granuloma",): 0.010, ("Hiatal Hernia",): 0.012,
    ("Subcutaneous Emphysema",): 0.008,
    ("Cardiomegaly", "Edema"): 0.04, ("Edema", "Pleural Effusion"): 0.04, ("Cardiomegaly", "Pleural Effusion"): 0.03,
    ("Atelectasis", "Pleural Effusion"): 0.03, ("Consolidation", "Pleural Effusion"): 0.02,
    ("Atelectasis", "Consolidation"): 0.015, ("Pneumothorax", "Subcutaneous Emphysema"): 0.005,
    ("Mass", "Pleural Effusion"): 0.003, ("Nodule", "Calcified Granuloma"): 0.002,
    ("Rib Fracture", "Pneumothorax"): 0.002,
}  # fmt: skip
PAIRS = tuple(labels for labels in TRAIN_WEIGHTS if len(labels) == 2)
COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "fpath", *sorted((*CLASSES, NORMAL_COLUMN)))
FIRST_TRAIN_SUBJECT = 19_000_000  # MIMIC-CXR subject ids are 8 digits starting with 1; ours are ours
FIRST_TEST_SUBJECT = 19_500_000
FIRST_STUDY = 59_000_000


def _dicom_id(seed: int, stream: int, index: int) -> str:
    """A MIMIC-style dicom_id (five dash-separated groups of 8 hex digits), fixed by the study."""
    digest = hashlib.sha256(f"radclip-cxr-lt:{seed}:{stream}:{index}".encode()).hexdigest()
    return "-".join(digest[i:i + 8] for i in range(0, 40, 8))


def _row(seed: int, stream: int, index: int, subject: int, labels: tuple[str, ...], rng: Any) -> tuple[list, str]:
    dicom_id, study = _dicom_id(seed, stream, index), FIRST_STUDY + (stream - STREAM_CXR_LT_TRAIN) * 500_000 + index
    # PNG, not MIMIC's JPEG: a 1-2 pixel calcified granuloma should not depend on JPEG's quantisation.
    rel = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom_id}.png"
    values = {name: int(name in labels) for name in CLASSES} | {NORMAL_COLUMN: int(not labels)}
    view = "PA" if rng.uniform() < 0.6 else "AP"
    return [dicom_id, subject, study, view, rel, *(values[c] for c in COLUMNS[5:])], rel


def _test_labels(per_class: int) -> list[tuple[str, ...]]:
    return ([(c,) for c in CLASSES for _ in range(per_class)] + [()] * (2 * per_class)
            + [pair for pair in PAIRS for _ in range(per_class // 5)])


def plan_longtail(params: Params, out_dir: Path) -> SuitePlan:
    """Jobs and the two CSVs of ``cxr_lt/`` (training collection and multi-label test suite)."""
    ph, seed = params.phantoms, params.phantoms.data_seed
    rng = np.random.default_rng([seed, STREAM_CXR_LT_PLAN])
    root = out_dir / "cxr_lt"
    jobs: list[Job] = []
    tables: dict[str, Table] = {}
    train_labels = _quota(TRAIN_WEIGHTS, ph.cxr_lt.train, rng)
    test_labels = _test_labels(ph.cxr_lt.test_per_class)
    test_labels = [test_labels[i] for i in rng.permutation(len(test_labels))]
    counts: Counter[str] = Counter()
    for split, stream, labels, subjects in (
        ("train", STREAM_CXR_LT_TRAIN, train_labels,
         [FIRST_TRAIN_SUBJECT + i // ph.images_per_patient for i in range(len(train_labels))]),
        ("test", STREAM_CXR_LT_TEST, test_labels, [FIRST_TEST_SUBJECT + i for i in range(len(test_labels))]),
    ):
        rows = []
        for index, (conditions, subject) in enumerate(zip(labels, subjects)):
            row, rel = _row(seed, stream, index, subject, conditions, rng)
            rows.append(row)
            jobs.append(Job(stream, index, "chest_xray", conditions, "2d", "png", str(root / rel), "coronal"))
            counts.update(f"{split}:{c}" for c in conditions or (NORMAL_COLUMN,))
        tables[f"{split}.csv"] = (COLUMNS, rows)
    return SuitePlan("cxr_lt", jobs, tables, dict(sorted(counts.items())), ("files",), parent="")
