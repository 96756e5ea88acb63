"""CXR-CML's data (issue 13): the ``cxr_lt`` collection format on files in the real CXR-LT layout, the
long-tail phantom collection at the default sizes, and the meta-label caption style."""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import PROJECT_ROOT, tiny_params
from PIL import Image

from radclip.config import CaptionTemplate, CxrLtCollection, load_params
from radclip.core.records import InputError
from radclip.data.captions import caption_pattern, make_caption
from radclip.data.curate import assign_split, salted_hash
from radclip.data.phantoms.longtail import CLASSES, RARE, plan_longtail
from radclip.data.phantoms.plan import plan_training
from radclip.data.sources import scan_collection

# The header of CXR-LT 2023's train.csv, a subset of its 26 classes in its (alphabetical) order.
HEADER = ("dicom_id,subject_id,study_id,ViewPosition,fpath,Atelectasis,Calcification of the Aorta,Cardiomegaly,"
          "Fracture,Hernia,No Finding,Subcutaneous Emphysema")
ROWS = [  # (dicom_id, subject, study, view, values of the 7 classes in header order)
    ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "10000032", "50414267", "PA", "1,0,0,0,0,0,0"),
    ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "10000032", "53189527", "AP", "0,1,1,0,0,0,0"),
    ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "10000764", "57375967", "AP", "0,0,0,0,0,1,0"),
    ("68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714", "10000764", "57375967", "LATERAL", "1,0,0,0,0,0,0"),
    ("096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "10000898", "50771383", "PA", "0,0,0,1,0,1,0"),  # conflict
    ("8959e402-2175d68d-edba5a6c-520a1e3a-e49c2b4e", "10000935", "50578979", "PA", "0,0,0,0,2,0,0"),  # bad value
    ("f27ba7cd-44486c2b-29f3e890-f2b9f30e-7e1d0b5c", "10000980", "51967283", "PA", "0,0,0,0,0,0,1"),  # no file
]


def _fpath(subject: str, study: str, dicom: str) -> str:
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"


def _release(tmp: Path, *, with_fpath: bool = True) -> Path:
    """train.csv and JPEGs in the released layout under ``tmp`` (the last row's image missing)."""
    header = HEADER if with_fpath else HEADER.replace(",fpath", "")
    lines = [header]
    for dicom, subject, study, view, values in ROWS:
        rel = _fpath(subject, study, dicom)
        lines.append(",".join([dicom, subject, study, view, *([rel] if with_fpath else []), values]))
        if dicom != ROWS[-1][0]:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp / rel)
    (tmp / "train.csv").write_text("\n".join(lines) + "\n")
    return tmp


def _collection(tmp: Path, **fields) -> CxrLtCollection:
    return CxrLtCollection(name="cxr_lt", path=str(tmp), **fields)


def test_cxr_lt_reads_the_released_layout(tmp_path, caplog):
    root = _release(tmp_path)
    with caplog.at_level(logging.INFO, logger="radclip.data.sources"):
        items = {Path(i.rel_path).stem: i for i in scan_collection(_collection(root), tmp_path)}
    assert len(items) == len(ROWS) - 1  # the lateral row is skipped by design ...
    assert [r.__dict__.get("skipped_lateral") for r in caplog.records if "frontal_only" in r.getMessage()] == [1]
    first, second, normal = (items[ROWS[i][0]] for i in range(3))
    assert (first.conditions, first.patient_id, first.error) == (("Atelectasis",), "10000032", None)
    assert second.conditions == ("Calcification of the Aorta", "Cardiomegaly") and second.error is None
    assert normal.conditions == () and normal.label == "Normal" and normal.error is None
    assert (first.region, first.modality, first.expect_kind) == ("Chest", "X-ray", "2d")
    assert Path(first.path) == root / _fpath(*ROWS[0][1:3], ROWS[0][0])
    assert "'No Finding' is 1 beside" in items[ROWS[4][0]].error  # ... the bad rows are error items
    assert "column 'Hernia': '2' is not 0 or 1" in items[ROWS[5][0]].error
    assert "not found" in items[ROWS[6][0]].error or "missing" in items[ROWS[6][0]].error


def test_cxr_lt_builds_mimic_paths_from_the_ids_and_renames_classes(tmp_path):
    root = _release(tmp_path, with_fpath=False)
    collection = _collection(root, path_column=None, frontal_only=False,
                             labels={"Fracture": "Rib Fracture", "Hernia": "Hiatal Hernia"})
    items = {Path(i.rel_path).stem: i for i in scan_collection(collection, tmp_path)}
    assert len(items) == len(ROWS)  # frontal_only off: the lateral row too
    assert items[ROWS[0][0]].rel_path == _fpath(*ROWS[0][1:3], ROWS[0][0])
    assert items[ROWS[3][0]].error is None and items[ROWS[3][0]].conditions == ("Atelectasis",)
    assert items[ROWS[4][0]].conditions == ("Rib Fracture",)


@pytest.mark.parametrize(("fields", "message"), [
    ({"classes": ["Atelectasis", "Pneumonia"]}, "missing column(s) ['Pneumonia']"),
    ({"labels": {"Pneumonia": "Pneumonia"}}, "labels name column(s) ['Pneumonia']"),
    ({"index": "development.csv"}, "index file not found"),
])
def test_cxr_lt_refuses_an_unusable_collection_naming_the_file(tmp_path, fields, message):
    root = _release(tmp_path)
    with pytest.raises(InputError) as error:
        scan_collection(_collection(root, **fields), tmp_path)
    assert message in str(error.value) and str(root) in str(error.value)


# --------------------------------------------------------------------------- the long-tail phantoms


def test_longtail_phantoms_have_rare_classes_counted_in_the_training_split(tmp_path):
    """At the default sizes: each rare class has 10-25 images in curation's train split and 0.5-1.5 % of the
    chest X-ray training images (both collections); the suite has >= 20 positives per rare class and its
    own patients."""
    default_params = load_params(PROJECT_ROOT / "params.yaml")
    plan = plan_longtail(default_params, tmp_path)
    header, train_rows = plan.tables["train.csv"]
    _, test_rows = plan.tables["test.csv"]
    column = {name: i for i, name in enumerate(header)}
    salt, split = default_params.curate.salt, default_params.curate.split

    def in_train(row) -> bool:
        return assign_split(salted_hash(salt, str(row[column["subject_id"]])), "finetune", split) == "train"

    train_split = [row for row in train_rows if in_train(row)]
    counts = Counter(c for row in train_split for c in CLASSES if row[column[c]] == 1)
    jobs, rows = plan_training(default_params, tmp_path)  # phantom_train's chest X-rays in the train split
    general_xray = sum(1 for job, row in zip(jobs, rows) if job.scene == "chest_xray" and assign_split(
        salted_hash(salt, row.patient_id or dict(job.patient)["PatientID"]), "train", split) == "train")
    for rare in RARE:
        assert 10 <= counts[rare] <= 25, (rare, counts[rare], general_xray)
        assert 0.005 <= counts[rare] / (len(train_split) + general_xray) <= 0.015, rare
    assert min(counts[c] for c in CLASSES if c not in RARE) > 2.5 * max(counts[r] for r in RARE)
    assert sum(1 for row in train_rows if sum(row[column[c]] for c in CLASSES) > 1) > 0.1 * len(train_rows)

    test_positives = Counter(c for row in test_rows for c in CLASSES if row[column[c]] == 1)
    assert len(CLASSES) == 12 and min(test_positives[c] for c in RARE) >= 20
    test_subjects = [row[column["subject_id"]] for row in test_rows]
    assert len(set(test_subjects)) == len(test_rows)  # one image per patient
    assert not set(test_subjects) & {row[column["subject_id"]] for row in train_rows}
    assert all(row[column["No Finding"]] == int(not any(row[column[c]] for c in CLASSES)) for row in test_rows)


def test_longtail_collections_scan_as_configured(generated_tiny):
    params, root = generated_tiny
    for name in ("phantom_cxr_lt", "phantom_cxr_lt_test"):
        collection = next(c for c in params.data.collections if c.name == name)
        items = list(scan_collection(collection, root))
        assert items and all(item.error is None for item in items), name
        assert all(Path(item.path).is_file() and item.patient_id for item in items)
    roles = {c.name: c.role for c in params.data.collections}
    assert (roles["phantom_cxr_lt"], roles["phantom_cxr_lt_test"]) == ("finetune", "eval")


@pytest.fixture(scope="module")
def generated_tiny(tmp_path_factory):
    from radclip.data.phantoms import generate

    tmp = tmp_path_factory.mktemp("cxr_lt")
    params = tiny_params(tmp)
    generate(params)
    return params, tmp


# --------------------------------------------------------------------------- meta-label captions


def test_meta_captions_build_as_specified():
    meta = CaptionTemplate(style="meta")
    assert make_caption(meta, "Chest", "X-ray", ["Edema", "Pleural Effusion"]) == (
        "Chest X-ray: edema is present, pleural effusion is present")
    assert make_caption(meta, "Chest", "X-ray", []) == "Chest X-ray: no finding"
    assert make_caption(meta, "Chest", "CT", ["COVID-19"]) == "Chest CT: COVID-19 is present"  # an acronym stays
    for caption in ("Chest X-ray: edema is present, pleural effusion is present", "Chest X-ray: no finding"):
        assert re.match(caption_pattern(meta), caption)
    assert not re.match(caption_pattern(meta), "Chest X-ray with Edema")
    # The default style is unchanged, and a field given beside a style wins over its preset.
    assert make_caption(CaptionTemplate(), "Chest", "X-ray", ["Edema", "Nodule"]) == "Chest X-ray with Edema and Nodule"
    own = CaptionTemplate.model_validate({"style": "meta", "joiner": " and "})
    assert make_caption(own, "Chest", "X-ray", ["Edema", "Nodule"]) == (
        "Chest X-ray: edema is present and nodule is present")
    with pytest.raises(ValueError, match="must contain"):
        CaptionTemplate(style="meta", finding="present")
