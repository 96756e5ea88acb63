"""Scanning adapters: each fixture is written in the dataset's public layout.

Scanning never reads pixels, so image files are tiny and DICOM files are
placeholders (a preamble is enough where the test needs one).
"""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radclip.config import (
    ChexpertCollection,
    CovidCtMdCollection,
    CsvCollection,
    FolderCollection,
    IxiCollection,
    MedmnistCollection,
)
from radclip.core.records import InputError
from radclip.data.loaders import SUPPORTED_TYPES, load_file
from radclip.data.sources import NORMAL_LABEL, normal_key, scan_collection

# --------------------------------------------------------------------------- fixture helpers


def write_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), color=7).save(path)
    return path


def write_dicom_placeholder(path: Path) -> Path:
    """Not a readable DICOM, but it has the preamble scanning looks for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    return path


def write_nifti(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"placeholder: scanning never opens volumes")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def by_rel(items) -> dict:
    return {item.rel_path: item for item in items}


# --------------------------------------------------------------------------- csv


@pytest.fixture
def csv_collection_dir(tmp_path: Path) -> Path:
    base = tmp_path / "raw" / "train"
    write_image(base / "images" / "a.png")
    write_dicom_placeholder(base / "dicom" / "b.dcm")
    write_dicom_placeholder(base / "series" / "ct_01" / "IM0001.dcm")
    write_dicom_placeholder(base / "series" / "ct_01" / "IM0002.dcm")
    write_nifti(base / "volumes" / "c.nii.gz")
    write_image(base / "images" / "normal.jpg")
    write_csv(
        base / "index.csv",
        ["path", "findings", "patient_id", "region", "modality"],
        [
            ["images/a.png", "Edema|Nodule", "p1", "Chest", "X-ray"],
            ["dicom/b.dcm", "Edema", "", "Chest", "X-ray"],
            ["series/ct_01", "Nodule", "p2", "Chest", "CT"],
            ["volumes/c.nii.gz", "Glioma", "p3", "Brain", "MRI"],
            ["./images/normal.jpg", "", "p4", "Chest", "X-ray"],
        ],
    )
    return base


def csv_collection(**overrides) -> CsvCollection:
    values = dict(name="train", path="raw/train", patient_column="patient_id", region_column="region", modality_column="modality")
    return CsvCollection(**(values | overrides))


def test_csv_items_carry_loader_conditions_patient_and_posix_rel_path(tmp_path, csv_collection_dir):
    items = by_rel(scan_collection(csv_collection(), tmp_path))

    assert list(items) == ["images/a.png", "dicom/b.dcm", "series/ct_01", "volumes/c.nii.gz", "images/normal.jpg"]
    assert all(item.error is None for item in items.values()), [i.error for i in items.values()]
    png = items["images/a.png"]
    assert (png.loader, png.conditions, png.label) == ("image", ("Edema", "Nodule"), "Edema|Nodule")
    assert (png.region, png.modality, png.patient_id, png.collection) == ("Chest", "X-ray", "p1", "train")
    assert png.path == str(csv_collection_dir / "images" / "a.png")
    assert items["dicom/b.dcm"].loader == "dicom"
    assert items["dicom/b.dcm"].patient_id is None  # blank cell: taken from the DICOM tags later
    assert items["series/ct_01"].loader == "dicom"  # a folder is a DICOM series
    assert items["volumes/c.nii.gz"].loader == "nifti"
    assert (items["volumes/c.nii.gz"].region, items["volumes/c.nii.gz"].modality) == ("Brain", "MRI")
    normal = items["images/normal.jpg"]
    assert (normal.conditions, normal.label) == ((), NORMAL_LABEL)


def test_files_outside_the_collection_folder_never_show_the_folders_above_it(tmp_path):
    base = tmp_path / "raw" / "train"
    elsewhere = tmp_path / "site-B" / "patient-jane-doe"
    write_image(elsewhere / "scan.png")
    write_image(tmp_path / "raw" / "sibling-ward" / "up.png")
    write_csv(base / "index.csv", ["path", "findings"],
              [[str(elsewhere / "scan.png"), ""], ["../sibling-ward/up.png", ""]])
    items = list(scan_collection(CsvCollection(name="train", path="raw/train", region="Chest", modality="X-ray"),
                                 tmp_path))
    assert [item.error for item in items] == [None, None]
    assert [Path(item.path).resolve() for item in items] == [elsewhere / "scan.png",
                                                            tmp_path / "raw" / "sibling-ward" / "up.png"]
    for item in items:
        assert "site-B" not in item.rel_path and "jane" not in item.rel_path and "sibling" not in item.rel_path
        assert item.rel_path.startswith("outside-") and "/" in item.rel_path
    assert items[0].rel_path.endswith("/scan.png") and items[1].rel_path.endswith("/up.png")
    assert items[0].rel_path.split("/")[0] != items[1].rel_path.split("/")[0]  # two folders, two names


def test_scan_returns_a_lazy_iterator_and_accepts_an_absolute_collection_path(tmp_path, csv_collection_dir):
    scanned = scan_collection(csv_collection(path=str(csv_collection_dir)), Path("/nonexistent-root"))

    assert isinstance(scanned, Iterator) and not isinstance(scanned, list)
    assert next(scanned).rel_path == "images/a.png"


def test_csv_labels_map_raw_values_null_is_normal_and_unknown_value_is_an_error_item(tmp_path):
    base = tmp_path / "ds"
    for name in ("a", "b", "c"):
        write_image(base / f"{name}.png")
    write_csv(
        base / "index.csv",
        ["path", "findings", "patient_id"],
        [["a.png", "edema;no finding", "p1"], ["b.png", "no finding", "p2"], ["c.png", "edema;artifact", "p3"]],
    )
    collection = CsvCollection(
        name="mapped", path="ds", region="Chest", modality="X-ray", label_separator=";",
        labels={"edema": "Edema", "no finding": None},
    )

    items = by_rel(scan_collection(collection, tmp_path))

    assert items["a.png"].conditions == ("Edema",) and items["a.png"].error is None
    assert items["b.png"].label == NORMAL_LABEL and items["b.png"].error is None
    assert "unknown label 'artifact'" in items["c.png"].error


def test_csv_missing_file_and_unsupported_extension_become_error_items_naming_the_file(tmp_path):
    base = tmp_path / "ds"
    (base / "notes").mkdir(parents=True)
    (base / "notes" / "report.txt").write_text("not an image")
    (base / "raw_blob").write_bytes(b"\x00" * 300)  # no extension, no DICOM preamble
    write_dicom_placeholder(base / "1.2.840.113619.2.55.3")  # DICOM named by UID: odd "suffix"
    write_csv(
        base / "index.csv",
        ["path", "findings", "patient_id"],
        [["gone.png", "", "p1"], ["notes/report.txt", "", "p2"], ["raw_blob", "", "p3"],
         ["1.2.840.113619.2.55.3", "", "p4"]],
    )
    collection = CsvCollection(name="broken", path="ds", region="Chest", modality="X-ray")

    items = by_rel(scan_collection(collection, tmp_path))

    assert items["gone.png"].path == str(base / "gone.png")
    assert "not found" in items["gone.png"].error
    assert items["notes/report.txt"].path.endswith("report.txt")
    assert "unsupported file type '.txt'" in items["notes/report.txt"].error
    assert "unsupported file type" in items["raw_blob"].error
    uid_named = items["1.2.840.113619.2.55.3"]
    assert (uid_named.loader, uid_named.error) == ("dicom", None)


def test_csv_bmp_tiff_and_npy_files_are_supported(tmp_path):
    base = tmp_path / "ds"
    for name in ("scan.bmp", "scan.tif", "SCAN2.TIFF"):
        write_image(base / name)
    base.joinpath("volume.npy").write_bytes(b"scanning never opens arrays")
    write_csv(base / "index.csv", ["path", "findings", "patient_id"],
              [["scan.bmp", "", "p1"], ["scan.tif", "", "p2"], ["SCAN2.TIFF", "", "p3"], ["volume.npy", "", "p4"]])
    items = by_rel(scan_collection(CsvCollection(name="more", path="ds", region="Chest", modality="CT"), tmp_path))
    assert {rel: (item.loader, item.error) for rel, item in items.items()} == {
        "scan.bmp": ("image", None), "scan.tif": ("image", None), "SCAN2.TIFF": ("image", None),
        "volume.npy": ("npy", None)}


@pytest.mark.parametrize("name", ["scan.gif", "notes.txt", "raw_blob", "volume.mha"])
def test_scanning_and_load_file_reject_an_unsupported_type_with_the_same_reason(tmp_path, name):
    """Curation (through scanning) and serving (load_file) share one dispatcher: same decision, same words."""
    base = tmp_path / "ds"
    base.mkdir()
    (base / name).write_bytes(b"\x00" * 300)  # no DICOM preamble either
    write_csv(base / "index.csv", ["path", "findings", "patient_id"], [[name, "", "p1"]])
    [item] = scan_collection(CsvCollection(name="odd", path="ds", region="Chest", modality="CT"), tmp_path)
    with pytest.raises(InputError) as served:
        load_file(base / name)
    assert item.error == served.value.reason
    assert served.value.reason.startswith("unsupported file type") and SUPPORTED_TYPES in served.value.reason
    assert served.value.path == item.path == str(base / name)


def test_csv_region_modality_fall_back_to_collection_and_missing_ones_are_error_items(tmp_path):
    base = tmp_path / "ds"
    write_image(base / "a.png")
    write_image(base / "b.png")
    write_csv(base / "index.csv", ["path", "findings", "region"], [["a.png", "Edema", ""], ["b.png", "", "Knee"]])

    with_default = CsvCollection(name="c", path="ds", patient_column=None, region_column="region", modality="X-ray",
                                 region="Chest")
    items = by_rel(scan_collection(with_default, tmp_path))
    assert (items["a.png"].region, items["b.png"].region) == ("Chest", "Knee")
    assert all(item.error is None for item in items.values())

    without_modality = CsvCollection(name="c", path="ds", patient_column=None, region_column="region")
    items = by_rel(scan_collection(without_modality, tmp_path))
    assert "empty caption part: no region or modality" in items["a.png"].error
    assert "empty caption part: no modality" in items["b.png"].error


def test_csv_missing_configured_column_raises_input_error_naming_the_index(tmp_path):
    base = tmp_path / "ds"
    write_csv(base / "index.csv", ["path", "findings"], [["a.png", ""]])

    with pytest.raises(InputError) as caught:
        scan_collection(CsvCollection(name="c", path="ds", patient_column="patient_id"), tmp_path)

    assert caught.value.path == str(base / "index.csv")
    assert "patient_id" in caught.value.reason


# --------------------------------------------------------------------------- missing inputs, every format


@pytest.mark.parametrize(
    "collection, missing",
    [
        (CsvCollection(name="c", path="ds"), "ds/index.csv"),
        (ChexpertCollection(name="c", path="ds"), "ds/CheXpert-v1.0-small/valid.csv"),
        (CovidCtMdCollection(name="c", path="ds"), "ds/Index.csv"),
        (IxiCollection(name="c", path="ds", table="IXI.csv"), "ds/IXI.csv"),
        (MedmnistCollection(name="c", path="ds/pneumoniamnist.npz", class_names=[None, "Pneumonia"]),
         "ds/pneumoniamnist.npz"),
        (FolderCollection(name="c", path="ds", subsets=["Testing"]), "ds/Testing"),
    ],
    ids=["csv", "chexpert", "covid_ct_md", "ixi", "medmnist", "image_folders"],
)
def test_missing_index_or_table_raises_input_error_naming_it(tmp_path, collection, missing):
    (tmp_path / "ds" / "IXI-T1").mkdir(parents=True)

    with pytest.raises(InputError) as caught:
        scan_collection(collection, tmp_path)  # raised at the call, before any item

    assert caught.value.path == str(tmp_path / missing)
    assert "not found" in caught.value.reason


def test_missing_collection_folder_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="collection folder not found") as caught:
        scan_collection(FolderCollection(name="c", path="nowhere"), tmp_path)
    assert caught.value.path == str(tmp_path / "nowhere")


# --------------------------------------------------------------------------- image_folders (Crystal Clean)


@pytest.fixture
def crystal_clean_dir(tmp_path: Path) -> Path:
    base = tmp_path / "brain"
    for subset, prefix in (("Training", "Tr"), ("Testing", "Te")):
        for folder, short in (("glioma", "gl"), ("meningioma", "me"), ("notumor", "no"), ("pituitary", "pi")):
            write_image(base / subset / folder / f"{prefix}-{short}_0010.jpg")
    write_image(base / "Testing" / "unsorted" / "Te-xx_0001.jpg")  # a class folder missing from labels
    (base / "Testing" / "README.txt").write_text("stray file outside any class folder")
    (base / "Testing" / "glioma" / ".DS_Store").write_bytes(b"\0")  # OS metadata: skipped
    (base / "Testing" / "glioma" / "Te-gl_0011.gif").write_bytes(b"GIF89a")
    return base


CRYSTAL_LABELS = {"glioma": "Glioma", "meningioma": "Meningioma", "notumor": None, "pituitary": "Pituitary Tumor"}


def test_image_folders_map_class_folders_and_use_the_file_stem_as_patient(tmp_path, crystal_clean_dir):
    collection = FolderCollection(name="brain", path="brain", subsets=["Testing"], region="Brain", modality="MRI",
                                  labels=CRYSTAL_LABELS)

    items = by_rel(scan_collection(collection, tmp_path))

    good = {rel: item for rel, item in items.items() if item.error is None}
    assert set(good) == {f"Testing/{c}/Te-{s}_0010.jpg" for c, s in
                         (("glioma", "gl"), ("meningioma", "me"), ("notumor", "no"), ("pituitary", "pi"))}
    glioma = good["Testing/glioma/Te-gl_0010.jpg"]
    assert (glioma.conditions, glioma.label, glioma.loader, glioma.expect_kind) == (("Glioma",), "Glioma", "image", "2d")
    assert glioma.patient_id == "Te-gl_0010"
    assert glioma.path == str(crystal_clean_dir / "Testing" / "glioma" / "Te-gl_0010.jpg")
    assert good["Testing/notumor/Te-no_0010.jpg"].label == NORMAL_LABEL
    assert good["Testing/pituitary/Te-pi_0010.jpg"].conditions == ("Pituitary Tumor",)
    assert not any(rel.startswith("Training/") for rel in items)  # only the configured subset


def test_image_folders_unknown_class_stray_file_and_unsupported_type_are_error_items(tmp_path, crystal_clean_dir):
    collection = FolderCollection(name="brain", path="brain", subsets=["Testing"], region="Brain", modality="MRI",
                                  labels=CRYSTAL_LABELS)

    items = by_rel(scan_collection(collection, tmp_path))

    assert "unknown label 'unsorted'" in items["Testing/unsorted/Te-xx_0001.jpg"].error
    assert "not inside a class folder" in items["Testing/README.txt"].error
    assert "unsupported file type '.gif'" in items["Testing/glioma/Te-gl_0011.gif"].error
    assert not any(".DS_Store" in rel for rel in items)


def test_image_folders_without_subsets_read_class_folders_at_the_root(tmp_path, crystal_clean_dir):
    collection = FolderCollection(name="brain", path="brain/Training", region="Brain", modality="MRI",
                                  labels=CRYSTAL_LABELS)

    items = by_rel(scan_collection(collection, tmp_path))

    assert sorted(items) == ["glioma/Tr-gl_0010.jpg", "meningioma/Tr-me_0010.jpg", "notumor/Tr-no_0010.jpg",
                             "pituitary/Tr-pi_0010.jpg"]
    assert all(item.error is None for item in items.values())


# --------------------------------------------------------------------------- chexpert

CHEXPERT_HEADER = [
    "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
    "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
    "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
]


def chexpert_row(path: str, view: str = "Frontal", **observations: str) -> list[str]:
    """One CSV row; observation keyword names use underscores for spaces."""
    values = {name.replace("_", " "): value for name, value in observations.items()}
    row = [path, "Female", "68", view, "AP" if view == "Frontal" else ""]
    return row + [values.get(column, "") for column in CHEXPERT_HEADER[5:]]


def write_chexpert(base: Path, rows: list[list[str]], root: str = ".") -> None:
    for row in rows:
        write_image(base / root / row[0])
    write_csv(base / root / "CheXpert-v1.0-small" / "valid.csv", CHEXPERT_HEADER, rows)


def chexpert(**overrides) -> ChexpertCollection:
    values = dict(name="cxr", path="cxr", region="Chest", modality="X-ray")
    return ChexpertCollection(**(values | overrides))


VALID = "CheXpert-v1.0-small/valid"


@pytest.mark.parametrize(
    "policy, conditions, error",
    [("ones", ("Edema",), None), ("zeros", (), None), ("ignore", (), "uncertain ['Edema'] ignored")],
)
def test_chexpert_uncertain_value_follows_the_policy(tmp_path, policy, conditions, error):
    path = f"{VALID}/patient64541/study1/view1_frontal.jpg"
    write_chexpert(tmp_path / "cxr", [chexpert_row(path, Edema="-1.0", Atelectasis="0.0")])

    (item,) = scan_collection(chexpert(uncertainty=policy), tmp_path)

    assert item.conditions == conditions
    assert (item.error is None) if error is None else (error in item.error)


def test_chexpert_ignored_uncertainty_keeps_the_known_positives(tmp_path):
    path = f"{VALID}/patient64541/study1/view1_frontal.jpg"
    write_chexpert(tmp_path / "cxr", [chexpert_row(path, Edema="-1.0", Cardiomegaly="1.0")])

    (item,) = scan_collection(chexpert(uncertainty="ignore"), tmp_path)

    assert (item.conditions, item.label, item.error) == (("Cardiomegaly",), "Cardiomegaly", None)


def test_chexpert_single_label_with_ignored_uncertainty_elsewhere_is_an_error_item(tmp_path):
    path = f"{VALID}/patient64541/study1/view1_frontal.jpg"
    write_chexpert(tmp_path / "cxr", [chexpert_row(path, Edema="-1.0", Cardiomegaly="1.0")])

    (item,) = scan_collection(chexpert(uncertainty="ignore", single_label=True), tmp_path)

    assert "cannot tell whether Cardiomegaly is the only positive" in item.error


def test_chexpert_multi_label_uses_only_configured_observations_and_reads_patient_from_path(tmp_path):
    rows = [
        chexpert_row(f"{VALID}/patient64541/study1/view1_frontal.jpg", Cardiomegaly="1.0", Edema="1.0",
                     Pneumonia="1.0"),  # Pneumonia is not among the observations
        chexpert_row(f"{VALID}/patient64542/study1/view1_frontal.jpg", No_Finding="1.0", Edema="0.0"),
    ]
    write_chexpert(tmp_path / "cxr", rows)

    first, second = scan_collection(chexpert(), tmp_path)

    assert (first.conditions, first.label) == (("Cardiomegaly", "Edema"), "Cardiomegaly|Edema")
    assert first.rel_path == f"{VALID}/patient64541/study1/view1_frontal.jpg"
    assert first.path == str(tmp_path / "cxr" / first.rel_path)
    assert (first.patient_id, first.loader, first.expect_kind) == ("patient64541", "image", "2d")
    assert (second.conditions, second.label, second.patient_id, second.error) == ((), NORMAL_LABEL, "patient64542", None)


def test_chexpert_single_label_requires_exactly_one_positive(tmp_path):
    rows = [
        chexpert_row(f"{VALID}/patient00001/study1/view1_frontal.jpg", Atelectasis="1.0"),
        chexpert_row(f"{VALID}/patient00002/study1/view1_frontal.jpg", Atelectasis="1.0", Edema="1.0"),
        chexpert_row(f"{VALID}/patient00003/study1/view1_frontal.jpg"),
    ]
    write_chexpert(tmp_path / "cxr", rows)

    one, two, none = scan_collection(chexpert(single_label=True), tmp_path)

    assert (one.label, one.conditions, one.error) == ("Atelectasis", ("Atelectasis",), None)
    assert "expected exactly one positive among" in two.error and "found 2" in two.error
    assert "expected exactly one positive among" in none.error and "found 0" in none.error


def test_chexpert_frontal_only_skips_lateral_views_and_logs_how_many(tmp_path, caplog):
    rows = [
        chexpert_row(f"{VALID}/patient00001/study1/view1_frontal.jpg", Edema="1.0"),
        chexpert_row(f"{VALID}/patient00001/study1/view2_lateral.jpg", view="Lateral", Edema="1.0"),
    ]
    write_chexpert(tmp_path / "cxr", rows)

    with caplog.at_level(logging.INFO, logger="radclip.data.sources"):
        frontal = list(scan_collection(chexpert(), tmp_path))
    everything = list(scan_collection(chexpert(frontal_only=False), tmp_path))

    assert [item.rel_path.rsplit("/", 1)[1] for item in frontal] == ["view1_frontal.jpg"]
    assert [record.skipped_lateral for record in caplog.records] == [1]
    assert len(everything) == 2


def test_chexpert_paths_resolve_under_root_and_missing_image_is_an_error_item(tmp_path):
    base = tmp_path / "cxr"
    rows = [chexpert_row(f"{VALID}/patient00001/study1/view1_frontal.jpg", Edema="1.0"),
            chexpert_row(f"{VALID}/patient00002/study1/view1_frontal.jpg", Edema="1.0")]
    write_chexpert(base, rows, root="downloads")
    (base / "downloads" / rows[1][0]).unlink()

    present, missing = scan_collection(chexpert(index=f"downloads/{VALID}.csv", root="downloads"), tmp_path)

    assert present.rel_path == f"downloads/{VALID}/patient00001/study1/view1_frontal.jpg"
    assert present.error is None
    assert missing.path == str(base / "downloads" / rows[1][0]) and "not found" in missing.error


def test_chexpert_observation_missing_from_the_csv_raises_input_error(tmp_path):
    write_chexpert(tmp_path / "cxr", [chexpert_row(f"{VALID}/patient00001/study1/view1_frontal.jpg")])

    with pytest.raises(InputError, match="Hernia"):
        scan_collection(chexpert(observations=["Edema", "Hernia"]), tmp_path)


# --------------------------------------------------------------------------- ixi


def write_ixi(base: Path, table_rows: list[list[object]], names: list[str]) -> None:
    for name in names:
        write_nifti(base / "IXI-T1" / name)
    write_csv(base / "IXI.csv", ["IXI_ID", "SEX_ID", "HEIGHT", "AGE"], table_rows)


IXI_NAMES = ["IXI002-Guys-0828-T1.nii.gz", "IXI012-HH-1211-T1.nii.gz", "IXI013-HH-1212-T1.nii.gz",
             "IXI014-HH-1236-T1.nii.gz"]


@pytest.mark.parametrize(
    "male, female",
    [(1, 2), ("1.0", "2.0"), ("1", "x2")],  # int column, float column, text column (object dtype)
    ids=["int", "float", "text"],
)
def test_ixi_joins_the_table_on_the_id_and_normalises_label_values(tmp_path, male, female):
    rows = [[2, male, 170, 35.8], [12, female, 160, 38.8], [14, "", 165, 40.1]]  # 13: no row
    write_ixi(tmp_path / "ixi", rows, IXI_NAMES)
    labels = {"1": "Male", "2": "Female", "x2": "Female"}

    items = by_rel(scan_collection(IxiCollection(name="ixi", path="ixi", table="IXI.csv", region="Brain",
                                                 modality="MRI", labels=labels), tmp_path))

    subject2 = items["IXI-T1/IXI002-Guys-0828-T1.nii.gz"]
    assert (subject2.conditions, subject2.patient_id, subject2.loader, subject2.expect_kind) == (
        ("Male",), "IXI002", "nifti", "3d")
    assert items["IXI-T1/IXI012-HH-1211-T1.nii.gz"].label == "Female"
    assert "no row with IXI_ID = 13" in items["IXI-T1/IXI013-HH-1212-T1.nii.gz"].error
    assert "blank 'SEX_ID'" in items["IXI-T1/IXI014-HH-1236-T1.nii.gz"].error


def test_ixi_null_label_is_normal_and_unknown_value_and_odd_files_are_error_items(tmp_path):
    rows = [[2, 0, 1, 1], [12, 1, 1, 1], [14, 7, 1, 1]]
    write_ixi(tmp_path / "ixi", rows, ["IXI002-Guys-0828-T1.nii.gz", "IXI012-HH-1211-T1.nii.gz",
                                       "IXI014-HH-1236-T1.nii.gz", "brain.nii.gz"])
    (tmp_path / "ixi" / "IXI-T1" / "IXI002-Guys-0828-T1.txt").write_text("notes")
    collection = IxiCollection(name="ixi", path="ixi", table="IXI.csv", label_column="SEX_ID", region="Brain",
                               modality="MRI", labels={"0": None, "1": "Glioma"})

    items = by_rel(scan_collection(collection, tmp_path))

    assert items["IXI-T1/IXI002-Guys-0828-T1.nii.gz"].label == NORMAL_LABEL
    assert items["IXI-T1/IXI012-HH-1211-T1.nii.gz"].conditions == ("Glioma",)
    assert "unknown label '7'" in items["IXI-T1/IXI014-HH-1236-T1.nii.gz"].error
    assert "does not match IXI<id>" in items["IXI-T1/brain.nii.gz"].error
    assert "unsupported file type '.txt'" in items["IXI-T1/IXI002-Guys-0828-T1.txt"].error


def test_ixi_excel_table_without_its_reader_package_raises_input_error_naming_it(tmp_path, monkeypatch):
    # xlrd is a declared dependency; an environment without it is simulated (import then fails)
    monkeypatch.setitem(sys.modules, "xlrd", None)
    base = tmp_path / "ixi"
    (base / "IXI-T1").mkdir(parents=True)
    (base / "IXI.xls").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504)  # OLE2 signature

    with pytest.raises(InputError, match="xlrd") as caught:
        scan_collection(IxiCollection(name="ixi", path="ixi"), tmp_path)
    assert caught.value.path == str(base / "IXI.xls")


def test_normal_key_makes_one_key_of_ints_floats_and_text():
    assert {normal_key(1), normal_key(1.0), normal_key("1"), normal_key(" 1.0 "), normal_key(np.int64(1))} == {"1"}
    assert [normal_key(None), normal_key(float("nan")), normal_key(""), normal_key("F")] == [None, None, None, "F"]


# --------------------------------------------------------------------------- covid_ct_md


def test_covid_ct_md_rows_become_dicom_series_items_and_missing_folders_are_error_items(tmp_path):
    base = tmp_path / "ct"
    for class_folder, folder in (("COVID-19 Cases", "P001"), ("CAP Cases", "cap001"), ("Normal Cases", "normal001")):
        for n in (1, 2):
            write_dicom_placeholder(base / class_folder / folder / f"IM{n:04d}.dcm")
    write_csv(
        base / "Index.csv",
        ["Patient ID", "Folder/ID", "Diagnosis", "Gender", "Age"],
        [["1", "P001", "COVID-19", "M", "57"], ["2", "cap001", "CAP", "F", "61"],
         ["3", "normal001", "Normal", "F", "44"], ["4", "P002", "COVID-19", "M", "70"],
         ["5", "flu001", "Influenza", "M", "30"]],
    )
    collection = CovidCtMdCollection(name="ct", path="ct", region="Chest", modality="CT")

    items = list(scan_collection(collection, tmp_path))

    covid, cap, normal, missing, unknown = items
    assert (covid.rel_path, covid.loader, covid.expect_kind, covid.patient_id) == (
        "COVID-19 Cases/P001", "dicom", "3d", "P001")
    assert covid.path == str(base / "COVID-19 Cases" / "P001")
    assert (covid.conditions, covid.error) == (("COVID-19",), None)
    assert cap.conditions == ("Community-Acquired Pneumonia",) and cap.error is None
    assert (normal.label, normal.error) == (NORMAL_LABEL, None)
    assert missing.rel_path == "COVID-19 Cases/P002" and "not found" in missing.error
    assert "no class folder for diagnosis 'Influenza'" in unknown.error
    assert "unknown label 'Influenza'" in unknown.error


# --------------------------------------------------------------------------- medmnist


def write_medmnist(path: Path, labels: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, split_labels in labels.items():
        arrays[f"{split}_images"] = np.zeros((len(split_labels), 28, 28), np.uint8)
        arrays[f"{split}_labels"] = split_labels
    np.savez(path, **arrays)
    return path


def needs_medmnist_reader():
    try:
        from radclip.data.medmnist import list_members  # noqa: F401
    except ImportError:
        pytest.skip("waiting for radclip.data.medmnist (list_members)")


def test_medmnist_members_map_class_indices_to_conditions(tmp_path):
    needs_medmnist_reader()
    write_medmnist(tmp_path / "mnist" / "pneumoniamnist.npz",
                   {"train": np.array([[0], [1]]), "test": np.array([[1]]), "val": np.array([[0]])})
    collection = MedmnistCollection(name="pneu", path="mnist/pneumoniamnist.npz", splits=["train", "test"],
                                    class_names=[None, "Pneumonia"], region="Chest", modality="X-ray")

    items = {item.member: item for item in scan_collection(collection, tmp_path)}

    assert set(items) == {"train:0", "train:1", "test:0"}
    assert items["train:0"].label == NORMAL_LABEL and items["train:1"].conditions == ("Pneumonia",)
    sick = items["train:1"]
    assert (sick.loader, sick.path, sick.rel_path, sick.patient_id) == (
        "npz", str(tmp_path / "mnist" / "pneumoniamnist.npz"), "pneumoniamnist.npz", "pneumoniamnist:train:1")
    assert all(item.error is None for item in items.values())


def test_medmnist_multi_label_uses_every_positive_index(tmp_path):
    needs_medmnist_reader()
    write_medmnist(tmp_path / "chestmnist.npz", {"test": np.array([[1, 0, 1], [0, 0, 0]])})
    collection = MedmnistCollection(name="chest", path="chestmnist.npz", splits=["test"], multi_label=True,
                                    class_names=["Atelectasis", "Cardiomegaly", "Effusion"], region="Chest",
                                    modality="X-ray")

    items = {item.member: item for item in scan_collection(collection, tmp_path)}

    assert items["test:0"].conditions == ("Atelectasis", "Effusion")
    assert items["test:1"].label == NORMAL_LABEL


def test_medmnist_class_index_without_a_name_is_an_error_item(tmp_path):
    needs_medmnist_reader()
    write_medmnist(tmp_path / "organmnist.npz", {"val": np.array([[0], [5]])})
    collection = MedmnistCollection(name="organ", path="organmnist.npz", splits=["val"], class_names=["Liver", "Kidney"],
                                    region="Abdomen", modality="CT")

    items = {item.member: item for item in scan_collection(collection, tmp_path)}

    assert items["val:0"].conditions == ("Liver",) and items["val:0"].error is None
    assert "class index 5 has no entry in class_names" in items["val:1"].error
