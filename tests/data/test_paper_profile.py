"""The paper profile (params/paper.yaml) evaluates what RadCLIP evaluates, and the CheXpert sampling it needs.

The reference values below are typed from the papers' text (RadCLIP v2, 001; v1, 000: see
/work/shared/papers/README.md), independently of params/paper.yaml, with the line of the .txt
they come from; ``test_reference_values_are_at_the_cited_lines`` checks them against the text
when the papers are present.
"""

from __future__ import annotations

import csv
import logging
import random
import re
from pathlib import Path

import pytest
from PIL import Image

from radclip.config import ChexpertCollection, Params, ParamsError, load_params, parse_params
from radclip.core.records import InputError
from radclip.data.sources import NORMAL_LABEL, scan_collection

PAPERS = Path("/work/shared/papers")
PAPER_FILES = {"000": "000_9c78cb478e4463fe.txt", "001": "001_ef6cfd1ed5c90145.txt",
               "002": "002_b5233e4a94ec10e5.txt"}

# --------------------------------------------------------------------------- the papers' values

CHEXPERT_CLASSES = ["Pneumothorax", "Pleural Effusion", "Edema", "Atelectasis", "Lung Lesion"]  # 001 l. 186
CHEXPERT_IMAGES = 5000  # 001 l. 186 ("a 5,000-sample evaluation set")
CHEXPERT_PER_CLASS = 1000  # 000 l. 134 ("chestXpert 5*1000")
CRYSTAL_CLEAN_CLASSES = {"Normal", "Pituitary Tumor", "Meningioma", "Glioma"}  # 001 l. 188
IXI_CLASSES = {"Male", "Female"}  # 001 l. 190 ("distinguishes gender from 3D T1 MRI")
COVID_CT_MD_CLASSES = {"Normal", "COVID", "Pneumonia"}  # 001 l. 192
SUITES = ["chexpert", "crystal_clean", "ixi", "covid_ct_md"]  # 001 l. 161-166 (the evaluation dataset)
CLASS_COUNTS = {"chexpert": 5, "crystal_clean": 4, "ixi": 2, "covid_ct_md": 3}  # 001 l. 206 (Table I header)
LR = 1e-4  # 001 l. 110 (cosine annealing starting at 1e-4); 000 l. 102 (2D and 3D modules, AdamW, 1e-4)
ADAPTER_HEADS = 4  # 000 l. 102
DROPOUT = 0.5  # 001 l. 110
IMAGE_SIZE = 224  # 001 l. 168
BACKBONE = "openai/clip-vit-large-patch14"  # 001 l. 110 ("clip-vit-large-patch14")
GPUS = 4  # 001 l. 123 (4 NVIDIA A6000 GPUs)
FOLDS = 5  # 001 l. 176 (five-fold, 70/10/20)
PROBE_EPOCHS, PROBE_LR = 100, 1e-3  # 000 l. 144 (100 epochs, Adam, 1e-3)
LRCLR_LAMBDA = 0.5  # 002 l. 74 ("We use λ = 0.5")
LRCLR_EPOCHS = 20  # 002 l. 41 ("fine-tune the model for 20 epochs")
CHEXPERT_TEST_OBSERVATIONS = 14  # 002 l. 41 ("labeled for the presence of 14 different medical observations")
FIG5_PROMPTS = [  # 001 l. 242 (Fig. 5: correct modality labels and distractors)
    "Chest X-ray Image", "Brain MRI Image", "Chest CT Image", "A Puppy", "A Cat", "A Life Vest",
]

# (paper, line, text the line must contain) for each value above
CITED = [
    ("001", 186, "Pneumothorax, Pleural Effusion, Edema, Atelectasis, and Lung Lesion"),
    ("001", 186, "5,000-sample evaluation set"),
    ("000", 134, "chestXpert 5\\*1000"),
    ("001", 188, "Normal, Pituitary Tumor, Meningioma, and Glioma"),
    ("001", 190, "distinguishes gender from 3D T1 MRI"),
    ("001", 192, "Normal, COVID, and Pneumonia"),
    ("001", 163, "ChestXpert"), ("001", 164, "Crystal Clean"), ("001", 165, "IXI Brain"), ("001", 166, "COVID-CT-MD"),
    ("001", 206, "ChestXpert (5 Classes, 2D)"), ("001", 206, "Crystal Clean (4 Classes, 2D)"),
    ("001", 206, "IXI Brain (2 Classes, 3D)"), ("001", 206, "COVID-CT-MD (3 Classes, 3D)"),
    ("001", 110, "starting at 1e-4"), ("001", 110, "dropout (rate 0.5)"), ("001", 110, "clip-vit-large-patch14"),
    ("000", 102, "4 attention heads"), ("000", 102, "learning rate of 1e-4"),
    ("001", 168, "224×224"),
    ("001", 123, "4 NVIDIA A6000 GPUs"),
    ("001", 176, "five-fold cross-validation"), ("001", 176, "70% training, 10% validation, and 20% testing"),
    ("000", 144, "100 epochs using Adam optimizer at a learning rate of 1e-3"),
    ("001", 242, '"A Puppy," "A Cat," "A Life Vest"'),
    ("002", 74, "We use $\\lambda = 0.5$"), ("002", 41, "fine-tune the model for 20 epochs"),
    ("002", 41, "14 different medical observations"), ("002", 41, "CheXpert test dataset, which consists of 500"),
]


@pytest.fixture(scope="module")
def paper(project_root) -> Params:
    return load_params(project_root / "params.yaml", profile="paper")


def _collection(params: Params, name: str):
    (found,) = [c for c in params.data.collections if c.name == name]
    return found


def _classes(labels: dict[str, str | None]) -> set[str]:
    return {NORMAL_LABEL if condition is None else condition for condition in labels.values()}


@pytest.mark.skipif(not PAPERS.is_dir(), reason="the papers' text is not on this machine")
@pytest.mark.parametrize("paper_id, line, text", CITED)
def test_reference_values_are_at_the_cited_lines(paper_id, line, text):
    lines = (PAPERS / PAPER_FILES[paper_id]).read_text().splitlines()
    assert text in lines[line - 1], f"{paper_id} l. {line}: {lines[line - 1][:200]!r}"


def test_paper_profile_validates_and_runs_the_four_evaluation_sets(paper):
    assert paper.profile == "paper" and not paper.phantoms.enabled
    eval_names = [c.name for c in paper.data.collections if c.role == "eval"]
    lrclr_suites = {paper.lrclr.suite, *paper.lrclr.zero_shot_suites}
    assert sorted(eval_names) == sorted([*SUITES, *lrclr_suites, paper.cml.suite]) and sorted(paper.evaluate.suites) == sorted(SUITES)


def test_paper_profile_runs_lrclr_on_chexperts_test_set_and_nih_boxes(paper):
    test = _collection(paper, paper.lrclr.zero_shot_suites[0])
    assert test.format == "chexpert" and not test.single_label
    assert len(test.observations) == CHEXPERT_TEST_OBSERVATIONS - 1  # "No Finding" is the normal caption
    boxes = _collection(paper, paper.lrclr.suite)
    assert boxes.format == "chestxray14" and boxes.boxed_only and boxes.boxes == "BBox_List_2017.csv"
    assert paper.lrclr.local_weight == LRCLR_LAMBDA and paper.lrclr.train.epochs == LRCLR_EPOCHS
    assert paper.lrclr.train.patience >= paper.lrclr.train.epochs  # both arms train every epoch


def test_chexpert_suite_is_the_papers_five_classes_and_5000_images(paper):
    chexpert = _collection(paper, "chexpert")
    assert chexpert.format == "chexpert" and chexpert.single_label
    assert chexpert.observations == CHEXPERT_CLASSES and len(chexpert.observations) == CLASS_COUNTS["chexpert"]
    assert chexpert.sample_per_class == CHEXPERT_PER_CLASS
    assert chexpert.sample_per_class * len(chexpert.observations) == CHEXPERT_IMAGES
    assert chexpert.index.endswith("/train.csv")  # 5,000 single-label images: valid.csv holds 234 in all
    assert (chexpert.region, chexpert.modality) == ("Chest", "X-ray")


def test_other_suites_have_the_papers_classes(paper):
    crystal = _collection(paper, "crystal_clean")
    ixi = _collection(paper, "ixi")
    covid = _collection(paper, "covid_ct_md")
    assert _classes(crystal.labels) == CRYSTAL_CLEAN_CLASSES and (crystal.region, crystal.modality) == ("Brain", "MRI")
    assert _classes(ixi.labels) == IXI_CLASSES and ixi.label_column == "SEX_ID" and "T1" in ixi.images
    assert _classes(covid.labels) == COVID_CT_MD_CLASSES and (covid.region, covid.modality) == ("Chest", "CT")
    assert set(covid.labels) <= set(covid.class_folders)  # every diagnosis has its folder
    for name, suite in (("crystal_clean", crystal), ("ixi", ixi), ("covid_ct_md", covid)):
        assert len(_classes(suite.labels)) == CLASS_COUNTS[name]


def test_training_and_probe_settings_are_the_papers(paper):
    assert paper.model.pretrained == BACKBONE and paper.curate.image_size == IMAGE_SIZE
    assert {plane.size for plane in paper.curate.volume.values()} == {IMAGE_SIZE}
    assert paper.train_2d.lr == LR and paper.train_adapter.lr == LR
    assert paper.model.adapter.heads == ADAPTER_HEADS and paper.model.adapter.dropout == DROPOUT
    assert paper.model.adapter.reducer == "attention"
    assert paper.train_2d.num_workers == GPUS and paper.train_2d.use_gpu
    assert paper.evaluate.folds == FOLDS and paper.evaluate.probe_method == "torch"
    assert (paper.evaluate.probe_epochs, paper.evaluate.probe_lr) == (PROBE_EPOCHS, PROBE_LR)
    assert paper.evaluate.modality_prompts == FIG5_PROMPTS


def test_every_cited_line_of_the_overlay_exists(project_root):
    text = (project_root / "params" / "paper.yaml").read_text()
    cites = re.findall(r"\b(00[012]) l\. (\d+)(?:-(\d+))?", text)
    assert cites
    if not PAPERS.is_dir():
        pytest.skip("the papers' text is not on this machine")
    lengths = {k: len((PAPERS / f).read_text().splitlines()) for k, f in PAPER_FILES.items()}
    for paper_id, first, last in cites:
        assert 1 <= int(first) <= int(last or first) <= lengths[paper_id], f"{paper_id} l. {first}-{last}"


# --------------------------------------------------------------------------- chexpert sample_per_class

HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Cardiomegaly", "Lung Lesion", "Edema",
          "Atelectasis", "Pneumothorax", "Pleural Effusion", "Support Devices"]
TRAIN = "CheXpert-v1.0-small/train"


def _row(patient: int, view: str = "Frontal", **values: str) -> list[str]:
    values = {k.replace("_", " "): v for k, v in values.items()}
    kind = "frontal" if view == "Frontal" else "lateral"
    path = f"{TRAIN}/patient{patient:05d}/study1/view1_{kind}.jpg"
    return [path, "Male", "60", view, "AP"] + [values.get(column, "") for column in HEADER[5:]]


def _generated_train_csv(eligible_per_class: int = 8) -> list[list[str]]:
    """Per class ``eligible_per_class`` single-positive frontal rows, plus rows the sample must skip."""
    rows: list[list[str]] = []
    patient = 1
    for observation in CHEXPERT_CLASSES:
        other = "Atelectasis" if observation == "Edema" else "Edema"
        for i in range(eligible_per_class):
            # an uncertain observation (negative under U-Zeros) or a positive outside the five keeps a row eligible
            values = {observation: "1.0", other: "-1.0" if i % 2 else "0.0"}
            values["Cardiomegaly"] = "1.0" if i % 3 == 0 else ""
            rows.append(_row(patient, **values))
            patient += 1
    for extra in (
        dict(Edema="1.0", Atelectasis="1.0"),  # two positives
        dict(No_Finding="1.0"),  # none positive
        dict(Cardiomegaly="1.0"),  # positive only outside the observations
    ):
        rows.append(_row(patient, **extra))
        patient += 1
    rows.append(_row(patient, view="Lateral", Edema="1.0"))  # lateral view
    return rows


def _write(base: Path, rows: list[list[str]], name: str = "train.csv") -> None:
    for row in rows:
        image = base / row[0]
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (4, 4), color=7).save(image)
    index = base / "CheXpert-v1.0-small" / name
    index.parent.mkdir(parents=True, exist_ok=True)
    with open(index, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)


def _sampled(tmp_path: Path, per_class: int = 3, seed: int = 0, index: str = "train.csv") -> ChexpertCollection:
    return ChexpertCollection(
        name="cxr", path="cxr", index=f"CheXpert-v1.0-small/{index}", region="Chest", modality="X-ray",
        observations=CHEXPERT_CLASSES, single_label=True, sample_per_class=per_class, sample_seed=seed,
    )


def test_sample_per_class_keeps_a_balanced_single_label_subset(tmp_path, caplog):
    rows = _generated_train_csv()
    _write(tmp_path / "cxr", rows)

    with caplog.at_level(logging.INFO, logger="radclip.data.sources"):
        items = list(scan_collection(_sampled(tmp_path), tmp_path))

    assert all(item.error is None for item in items)
    labels = [item.label for item in items]
    assert {label: labels.count(label) for label in labels} == dict.fromkeys(CHEXPERT_CLASSES, 3)
    assert all(len(item.conditions) == 1 for item in items)
    # 5 x 8 eligible + 3 ineligible frontal rows; the lateral one is counted apart (frontal_only)
    skipped = [r.skipped_unsampled for r in caplog.records if hasattr(r, "skipped_unsampled")]
    assert skipped == [5 * 8 - 5 * 3 + 3]
    # items come in CSV order
    order = {row[0]: i for i, row in enumerate(rows)}
    assert [order[item.rel_path] for item in items] == sorted(order[item.rel_path] for item in items)


def test_sample_is_deterministic_independent_of_row_order_and_follows_the_seed(tmp_path):
    rows = _generated_train_csv(eligible_per_class=20)
    _write(tmp_path / "cxr", rows)
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    _write(tmp_path / "cxr", shuffled, name="shuffled.csv")

    def picked(**kwargs) -> set[str]:
        return {item.rel_path for item in scan_collection(_sampled(tmp_path, **kwargs), tmp_path)}

    first = picked()
    assert len(first) == 15
    assert picked() == first
    assert picked(index="shuffled.csv") == first
    assert picked(seed=1) != first
    assert picked(per_class=20) >= first | picked(seed=1)  # everything eligible


def test_sample_larger_than_a_class_raises_input_error_naming_it(tmp_path):
    rows = _generated_train_csv(eligible_per_class=4)
    rows.append(_row(999, Lung_Lesion="1.0"))  # Lung Lesion: 5 eligible, the others 4
    _write(tmp_path / "cxr", rows)

    assert len(list(scan_collection(_sampled(tmp_path, per_class=4), tmp_path))) == 20
    with pytest.raises(InputError, match=r"sample_per_class 5: too few eligible rows for \{'Pneumothorax': 4"):
        scan_collection(_sampled(tmp_path, per_class=5), tmp_path)


def test_unreadable_rows_stay_error_items_when_sampling(tmp_path):
    rows = _generated_train_csv(eligible_per_class=3)
    rows.append(_row(998, Edema="yes"))
    _write(tmp_path / "cxr", rows)

    items = list(scan_collection(_sampled(tmp_path, per_class=3), tmp_path))

    (bad,) = [item for item in items if item.error]
    assert "Edema: unexpected value 'yes'" in bad.error
    assert len(items) == 5 * 3 + 1


@pytest.mark.parametrize(
    "overrides, message",
    [({"sample_per_class": 10}, "sample_per_class needs single_label: true"),
     ({"sample_per_class": 0, "single_label": True}, "greater than or equal to 1")],
)
def test_bad_sample_options_are_rejected_with_the_key(overrides, message):
    collection = {"name": "c", "format": "chexpert", "path": "x", **overrides}
    with pytest.raises(ParamsError, match=re.escape(message)) as caught:
        parse_params({"data": {"collections": [collection]}})
    assert "data.collections.0" in str(caught.value)


def test_the_paper_profiles_chexpert_collection_samples_a_generated_train_csv(tmp_path, paper):
    update = {"path": str(tmp_path / "cxr"), "sample_per_class": 2}
    collection = _collection(paper, "chexpert").model_copy(update=update)
    _write(tmp_path / "cxr", _generated_train_csv(eligible_per_class=3))

    items = list(scan_collection(collection, tmp_path))

    assert sorted(item.label for item in items) == sorted(CHEXPERT_CLASSES * 2)
    assert all(item.error is None and item.patient_id.startswith("patient") for item in items)
