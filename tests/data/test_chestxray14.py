"""NIH ChestX-ray14 collections and lesion boxes: the scanner on the release's layout, boxes through
curation's resize, and the phantom localisation suite's boxes against what was drawn."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from radclip.config import ChestXray14Collection, Params
from radclip.core.records import InputError
from radclip.data.curate import curate
from radclip.data.phantoms import SCENES, RenderSettings
from radclip.data.phantoms.render import synthesize
from radclip.data.shards import BOX_COLUMNS, read_boxes
from radclip.data.sources import scan_collection
from tests.helpers import tiny_params_dict

ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"  # as distributed


def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(path)


def _release(root: Path, entries: list[str], boxes: list[str]) -> Path:
    """A ChestX-ray14-shaped folder: PNGs spread over two image folders, as the release does."""
    _png(root / "images_001" / "images" / "00000001_000.png", np.full((40, 40), 90))
    _png(root / "images_001" / "images" / "00000001_001.png", np.full((40, 40), 100))
    _png(root / "images_002" / "images" / "00000002_000.png", np.full((40, 40), 110))
    (root / "Data_Entry_2017.csv").write_text("\n".join([ENTRY_HEADER, *entries]) + "\n")
    (root / "BBox_List_2017.csv").write_text("\n".join([BOX_HEADER, *boxes]) + "\n")
    return root


def _collection(**extra) -> ChestXray14Collection:
    fields = {"name": "nih", "path": "nih", "role": "eval", "images": ["images_001/images", "images_002/images"]}
    return ChestXray14Collection(**{**fields, **extra})


ENTRIES = [
    "00000001_000.png,Effusion|Nodule,0,1,58,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,No Finding,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,Infiltration,0,2,81,F,AP,2500,2048,0.168,0.168",
]
BOXES = [
    "00000001_000.png,Nodule,10.5,12.25,4.0,5.0,,,",
    "00000001_000.png,Effusion,2,20,30,12,,,",
    "00000002_000.png,Infiltrate,1,1,8,8,,,",  # the box list's spelling of Infiltration
]


def test_scan_reads_labels_patients_folders_and_boxes_by_position(tmp_path):
    _release(tmp_path / "nih", ENTRIES, BOXES)
    items = {item.rel_path: item for item in scan_collection(_collection(), tmp_path)}
    assert sorted(items) == ["images_001/images/00000001_000.png", "images_001/images/00000001_001.png",
                             "images_002/images/00000002_000.png"]
    first = items["images_001/images/00000001_000.png"]
    assert first.error is None and first.conditions == ("Pleural Effusion", "Nodule")
    assert first.patient_id == "1" and (first.region, first.modality) == ("Chest", "X-ray")
    assert first.boxes == (("Nodule", 10.5, 12.25, 4.0, 5.0), ("Pleural Effusion", 2.0, 20.0, 30.0, 12.0))
    normal = items["images_001/images/00000001_001.png"]
    assert normal.conditions == () and normal.label == "Normal" and normal.boxes == ()
    third = items["images_002/images/00000002_000.png"]
    assert third.conditions == ("Infiltration",) and third.boxes == (("Infiltration", 1.0, 1.0, 8.0, 8.0),)


def test_scan_problems_become_error_items_or_fail_naming_the_file(tmp_path):
    entries = [*ENTRIES[:2], "00000009_000.png,Mass,0,9,40,F,PA,1,1,1,1",
               "00000002_000.png,Atelectasis,0,2,81,F,AP,2500,2048,0.168,0.168"]
    _release(tmp_path / "nih", entries, ["00000002_000.png,Nodule,1,1,8,8,,,"])
    items = {item.rel_path: item for item in scan_collection(_collection(), tmp_path)}
    assert "listed but in none of the image folders" in items["00000009_000.png"].error
    assert "box for 'Nodule' but the image's findings are ['Atelectasis']" in items[
        "images_002/images/00000002_000.png"].error

    _release(tmp_path / "orphan", ENTRIES, [*BOXES, "00000777_000.png,Mass,1,1,8,8,,,"])
    with pytest.raises(InputError, match=r"Data_Entry_2017.csv: the box list names 1 image\(s\) the index lacks.*00000777_000"):
        scan_collection(_collection(path="orphan"), tmp_path)  # at the call, before any item (the module's rule)
    _release(tmp_path / "bad", ENTRIES, ["00000001_000.png,Nodule,10,12,-4,5,,,"])
    with pytest.raises(InputError, match=r"BBox_List_2017.csv: line 2: box .*w, h > 0"):
        list(scan_collection(_collection(path="bad"), tmp_path))
    _release(tmp_path / "short", ENTRIES, ["00000001_000.png,Nodule,10,12,,,,"])
    with pytest.raises(InputError, match="line 2: expected four numbers"):
        list(scan_collection(_collection(path="short"), tmp_path))


def test_boxed_only_keeps_the_images_the_box_list_covers_and_logs_the_rest(tmp_path, caplog):
    _release(tmp_path / "nih", ENTRIES, BOXES[:1])
    with caplog.at_level(logging.INFO, logger="radclip.data.sources"):
        items = list(scan_collection(_collection(boxed_only=True), tmp_path))
    assert [item.rel_path for item in items] == ["images_001/images/00000001_000.png"]
    assert [getattr(r, "skipped_unboxed", None) for r in caplog.records if r.name == "radclip.data.sources"] == [2]


def test_boxes_map_through_curations_resize_onto_the_drawn_rectangle(tmp_path):
    """A non-square image with a bright rectangle at a known box: after curation the box in
    lesion_boxes.csv must enclose the bright region of the curated array (found from the pixels)."""
    height, width = 90, 150
    pixels = np.full((height, width), 20)
    x, y, w, h = 60, 30, 45, 27
    pixels[y:y + h, x:x + w] = 240
    root = tmp_path / "nih"
    _png(root / "images" / "00000001_000.png", pixels)
    (root / "Data_Entry_2017.csv").write_text(f"{ENTRY_HEADER}\n00000001_000.png,Mass,0,1,50,M,PA,{width},{height},1,1\n")
    (root / "BBox_List_2017.csv").write_text(f"{BOX_HEADER}\n00000001_000.png,Mass,{x},{y},{w},{h},,,\n")
    raw = tiny_params_dict(str(tmp_path))
    raw["data"]["collections"] = [{"name": "nih", "format": "chestxray14", "role": "eval", "path": str(root)}]
    params = Params.model_validate(raw)
    summary = curate(params, out_dir=tmp_path / "curated", progress=False)
    assert summary.records == 1 and summary.boxes == 1
    boxes = read_boxes(tmp_path / "curated")
    assert list(boxes.columns) == list(BOX_COLUMNS)
    manifest = pd.read_parquet(tmp_path / "curated" / "manifest.parquet")
    row = manifest.iloc[0]
    assert boxes.iloc[0]["record_id"] == row["record_id"] and boxes.iloc[0]["condition"] == "Mass"
    curated = np.load(tmp_path / "curated" / row["shard"])[row["shard_index"]]
    rows, columns = np.nonzero(curated > 130)  # the rectangle, resized (half-way between the two levels)
    found = (columns.min(), rows.min(), columns.max() + 1 - columns.min(), rows.max() + 1 - rows.min())
    mapped = boxes.iloc[0][["x", "y", "w", "h"]].to_numpy(dtype=float)
    size = params.curate.image_size
    assert mapped == pytest.approx([x * size / width, y * size / height, w * size / width, h * size / height],
                                   abs=1e-4)  # the file keeps four decimals
    assert np.abs(np.asarray(found, dtype=float) - mapped).max() <= 1.0


def test_curated_boxes_are_those_of_the_localisation_suites_focal_images(tiny_curated):
    boxes = read_boxes(tiny_curated.curated_dir)
    manifest = pd.read_parquet(tiny_curated.curated_dir / "manifest.parquet")
    assert list(boxes.columns) == list(BOX_COLUMNS)
    # the tiny phantoms have a localisation suite: its focal images have boxes, nothing else does
    suite = manifest[manifest["collection"] == "phantom_chest_xray_boxes"]
    assert set(boxes["record_id"]) <= set(suite["record_id"])
    focal = suite[suite["conditions"] != ""]
    assert set(focal["record_id"]) == set(boxes["record_id"])
    size = tiny_curated.params.curate.image_size
    assert ((boxes["x"] >= 0) & (boxes["y"] >= 0) & (boxes["x"] + boxes["w"] <= size)
            & (boxes["y"] + boxes["h"] <= size)).all()


FOCAL_DRAWN = ("Consolidation", "Pleural Effusion", "Pneumothorax", "Nodule")  # no anatomy change (adjust)


@pytest.mark.parametrize("finding", FOCAL_DRAWN)
def test_phantom_boxes_enclose_where_the_finding_changed_the_written_image(finding):
    """The same study with and without its finding (same generator state: same anatomy and noise):
    the pixels the finding changed most lie in its boxes, and every box holds some of them."""
    settings = RenderSettings(seed=0, image_size=128, volume_shape=(8, 16, 16), lesion_slices=(2, 3))
    for index in range(4):
        rendered = [synthesize("chest_xray", conditions, kind="2d", rng=np.random.default_rng([5, index]),
                               settings=settings) for conditions in ((finding,), ())]
        change = np.abs(rendered[0].image - rendered[1].image)
        boxes = rendered[0].finding_boxes
        assert boxes and {b[0] for b in boxes} == {finding} and rendered[1].finding_boxes == ()
        inside = np.zeros(change.shape, bool)
        for _, x, y, w, h in boxes:
            assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
            inside[max(0, int(y) - 1):int(y + h) + 1, max(0, int(x) - 1):int(x + w) + 1] = True  # detector blur
            assert change[int(y):int(y + h), int(x):int(x + w)].max() >= 0.25 * change.max()
        strong = change >= 0.3 * change.max()
        assert strong[inside].sum() >= 0.97 * strong.sum()


def test_phantom_suite_lists_boxes_for_focal_findings_only_in_the_release_layout(tiny_curated):
    root = tiny_curated.raw / "eval" / "chest_xray_boxes"
    with open(root / "BBox_List_2017.csv", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    assert ",".join(header) == BOX_HEADER
    with open(root / "Data_Entry_2017.csv", newline="") as handle:
        entries = list(csv.DictReader(handle))
    labels = {e["Image Index"]: e["Finding Labels"] for e in entries}
    per_class = tiny_curated.params.phantoms.suites.chest_xray_boxes
    assert sorted(labels.values()) == sorted(
        [*["Atelectasis", "Consolidation", "Effusion", "Nodule", "Pneumothorax"] * per_class,
         *["No Finding"] * per_class])
    boxed = {row[0] for row in rows}
    assert boxed == {name for name, label in labels.items() if label != "No Finding"}
    assert all(labels[row[0]] == row[1] and row[6:] == ["", "", ""] for row in rows)
    assert {f.name for f in SCENES["chest_xray"].findings} >= {"Edema", "Cardiomegaly"}  # drawn, but no box suite
