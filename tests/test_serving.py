"""Preprocessing parity (the issue's acceptance test): serving a raw file gives the embedding the
pipeline gives its curated record.

For every combination the phantoms write — PNG/JPEG, 2D DICOM, DICOM series folder, multi-frame
DICOM, NIfTI; CT with and without a window of its own; every region/modality of the training
collection and every evaluation collection — ``Predictor.embed([raw file], Source(collection,
region, modality))`` (the collection, region and modality the manifest row records) must equal,
to cosine >= 0.9999, the model's embedding of the curated record: the array curation stored in
its shard and the display range in its manifest row, through ``encode_image``/``encode_volume``.
The reference never repeats a preprocessing rule: it is what curation wrote.

A negative control shows the comparison can fail: a NIfTI chest CT served without its
region/modality gets no CT window (the old serving bug) and a different embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from radclip.config import Params, load_params
from radclip.core.preprocessing import Preprocessing
from radclip.data.curate import curate
from radclip.data.phantoms import generate
from radclip.data.shards import CuratedDataset
from radclip.serving import Predictor, Source
from radclip.training.build import build_model

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PARITY_COSINE = 0.9999
DIFFERENT_COSINE = 0.99  # the negative control: a wrongly windowed input must fall below this
# A randomly initialised CLIP's embedding is dominated by its class/position embeddings (different
# inputs reach cosine ~0.96 on average, a wrong CT window ~0.99): scaling the vision tower's linear
# weights makes it follow pixel content (~0.72 on average, wrong window <= ~0.96), so cosine 0.9999
# tells a correctly prepared input from a wrongly prepared one.
SHARPEN_VISION = 5.0
TINY_MODEL = {
    "projection_dim": 16,
    "vision": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
               "patch_size": 8},
    "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 32},
    "adapter": {"heads": 2, "max_slices": 8, "dropout": 0.0, "reducer": "attention"},
}
PHANTOMS = {
    "data_seed": 0,
    "train_2d": 60,
    "train_3d": 30,
    "image_size": 48,
    "volume_shape": [16, 32, 32],
    "lesion_slices": [2, 3],
    "dicom_fraction": 0.4,  # enough DICOM (2D, series, multi-frame) for every scene at these counts
    "images_per_patient": 2,
    "workers": 1,
    "suites": {"chest_xray_5class": 1, "brain_mri_4class": 1, "brain_mri_3d_2class": 1, "chest_ct_3d_3class": 1,
               "brain_mri_3d_sex": 1},
}
CURATE = {
    "engine": "serial",
    "workers": 1,
    "chunk_size": 32,
    "image_size": 32,
    "volume": {plane: {"slices": 8, "size": 16} for plane in ("axial", "coronal", "sagittal")},
}

TRAIN = "phantom_train"
# (collection, format, region, modality): every one the phantom writer produces
# (radclip/data/phantoms/plan.py, suites.py): 2D scenes as PNG and 2D DICOM; brain volumes as
# NIfTI and multi-frame DICOM; CT volumes as NIfTI and DICOM series folders; the five suites.
COMBINATIONS = [
    *[(TRAIN, fmt, region, modality)
      for region, modality in (("Chest", "X-ray"), ("Brain", "MRI"), ("Chest", "CT"), ("Abdomen", "CT"),
                               ("Knee", "MRI"))
      for fmt in ("png", "dicom_2d")],
    (TRAIN, "nifti", "Brain", "MRI"),
    (TRAIN, "dicom_multiframe", "Brain", "MRI"),
    (TRAIN, "nifti", "Chest", "CT"),
    (TRAIN, "dicom_series", "Chest", "CT"),
    (TRAIN, "nifti", "Abdomen", "CT"),
    (TRAIN, "dicom_series", "Abdomen", "CT"),
    ("phantom_chest_xray_5class", "jpeg", "Chest", "X-ray"),  # CheXpert layout (JPEG)
    ("phantom_brain_mri_4class", "jpeg", "Brain", "MRI"),  # Crystal Clean layout
    ("phantom_brain_mri_3d_2class", "nifti", "Brain", "MRI"),  # IXI layout
    ("phantom_chest_ct_3d_3class", "dicom_series", "Chest", "CT"),  # COVID-CT-MD layout
    ("phantom_brain_mri_3d_sex", "nifti", "Brain", "MRI"),  # IXI layout, labelled by sex
    ("phantom_chest_xray_boxes", "png", "Chest", "X-ray"),  # ChestX-ray14 layout (localisation suite)
    ("phantom_cxr_lt", "png", "Chest", "X-ray"),  # CXR-LT layout, long-tail training (role finetune)
    ("phantom_cxr_lt_test", "png", "Chest", "X-ray"),  # CXR-LT layout, the long-tail suite
]


@dataclass(frozen=True)
class Record:
    """One curated manifest row, mapped back to its raw file."""

    index: int  # row of the curated manifest
    collection: str
    region: str
    modality: str
    kind: str
    plane: str
    source_path: str
    path: Path  # the raw file or series folder
    fmt: str
    own_window: bool  # the file carries a DICOM window of its own

    @property
    def combination(self) -> tuple[str, str, str, str]:
        return (self.collection, self.fmt, self.region, self.modality)

    def describe(self) -> str:
        window = "own DICOM window" if self.own_window else "no window of its own"
        plane = f", {self.plane}" if self.plane else ""
        return f"{self.path} [{self.collection}: {self.fmt}, {self.region} {self.modality}{plane}, {window}]"


def _format(path: Path, kind: str) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "dicom_series"
    if name.endswith(".nii.gz") or name.endswith(".nii"):
        return "nifti"
    if name.endswith(".png"):
        return "png"
    if name.endswith((".jpg", ".jpeg")):
        return "jpeg"
    if name.endswith(".dcm"):
        return "dicom_2d" if kind == "2d" else "dicom_multiframe"
    return f"other ({path.suffix or 'no extension'})"


def _has_own_window(path: Path, fmt: str) -> bool:
    """Whether the DICOM header carries a window (read with pydicom, not with radclip's loader)."""
    if not fmt.startswith("dicom"):
        return False
    first = min(path.iterdir()) if path.is_dir() else path
    header = pydicom.dcmread(first, stop_before_pixels=True)
    return header.get("WindowCenter") is not None and header.get("WindowWidth") is not None


def _raw_path(root: Path, source_path: str) -> Path:
    """``source_path`` is relative to the collection root; DICOM records end in ``#series-N``
    (``#member`` for archive members): the file or folder is what comes before."""
    relative, *parts = source_path.split("#")
    assert parts in ([], ["series-0"]), f"{source_path}: not one file or one series (parts {parts})"
    return root / relative


def _params(tmp: Path) -> Params:
    raw = load_params(PROJECT_ROOT / "params.yaml").model_dump(by_alias=True)
    raw["paths"] = {name: str(tmp / name) for name in raw["paths"]}
    raw["phantoms"].update(PHANTOMS)
    raw["curate"].update(CURATE)
    raw["model"].update(TINY_MODEL)
    raw["model"]["pretrained"] = None
    for collection in raw["data"]["collections"]:
        assert collection["path"].startswith("data/raw/"), collection  # the phantoms' collections
        collection["path"] = str(tmp / "raw" / collection["path"].removeprefix("data/raw/"))
    return Params.model_validate(raw)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Phantoms written and curated (serially) into tmp, and a tiny model built on the curated contract,
    saved and loaded back for serving."""
    tmp = tmp_path_factory.mktemp("parity")
    params = _params(tmp)
    generate(params)
    curate(params, progress=False)
    curated_dir = params.resolve(params.paths.curated)
    dataset = CuratedDataset(curated_dir)
    vocabulary = sorted(dataset.manifest["caption"].unique())
    model = build_model(params, vocabulary, preprocessing=Preprocessing.read(curated_dir))
    with torch.no_grad():
        for module in model.clip.vision_model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(SHARPEN_VISION)
    predictor = Predictor.from_directory(model.save_pretrained(tmp / "model"))
    roots = {c.name: Path(c.path) for c in params.data.collections}
    records = []
    for index, row in dataset.manifest.iterrows():
        path = _raw_path(roots[row["collection"]], row["source_path"])
        fmt = _format(path, row["kind"])
        records.append(Record(index=int(index), collection=row["collection"], region=row["region"],
                              modality=row["modality"], kind=row["kind"], plane=row["plane"] or "",
                              source_path=row["source_path"], path=path, fmt=fmt,
                              own_window=_has_own_window(path, fmt)))
    return {"params": params, "dataset": dataset, "predictor": predictor, "records": records}


@torch.inference_mode()
def _curated_embedding(pipeline: dict, record: Record) -> np.ndarray:
    """The pipeline's embedding: the curated array and display range, through the model's encoders."""
    array, row = pipeline["dataset"][record.index]
    batch = torch.from_numpy(np.array(array)[None])
    model = pipeline["predictor"].model
    if row["kind"] == "2d":
        return model.encode_image(batch).numpy()[0]
    display = torch.tensor([[row["display_low"], row["display_high"]]], dtype=torch.float32)
    return model.encode_volume(batch, display_range=display).numpy()[0]


def _served_embedding(pipeline: dict, record: Record, origin: Source | None = None) -> np.ndarray:
    if origin is None:
        origin = Source(collection=record.collection, region=record.region, modality=record.modality)
    return pipeline["predictor"].embed([record.path], origin)[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_the_phantoms_write_every_combination_and_no_other(pipeline):
    """The parity cases below are not vacuous: each combination occurs, CT occurs with and without
    a window of its own, and nothing curated falls outside the cases."""
    records = pipeline["records"]
    found = {record.combination for record in records}
    missing = [c for c in COMBINATIONS if c not in found]
    untested = sorted(found - set(COMBINATIONS))
    assert not missing, f"combinations the phantoms did not write: {missing}"
    assert not untested, f"curated combinations no parity case covers: {untested}"
    ct = [record for record in records if record.modality == "CT"]
    assert {record.fmt for record in ct if record.own_window} >= {"dicom_2d", "dicom_series"}
    assert {record.fmt for record in ct if not record.own_window} >= {"png", "nifti"}
    assert {record.plane for record in records if record.fmt in ("nifti", "dicom_multiframe")} >= {"axial", "sagittal"}


@pytest.mark.parametrize("combination", COMBINATIONS, ids=["-".join(c).replace(" ", "_") for c in COMBINATIONS])
def test_serving_the_raw_file_embeds_it_as_the_pipeline_embeds_its_curated_record(pipeline, combination):
    # One example per variant of the combination: plane (axial/sagittal) and own window or not.
    examples: dict[tuple[str, bool], Record] = {}
    for record in pipeline["records"]:
        if record.combination == combination:
            examples.setdefault((record.plane, record.own_window), record)
    assert examples, f"no curated record for {combination}: the phantoms must write it"
    failures = []
    for record in examples.values():
        cosine = _cosine(_served_embedding(pipeline, record), _curated_embedding(pipeline, record))
        if not cosine >= PARITY_COSINE:
            failures.append(f"{record.describe()}: cosine {cosine:.6f}")
    assert not failures, (f"served embedding differs from the curated record's (cosine < {PARITY_COSINE}):\n  "
                          + "\n  ".join(failures))


def test_negative_control_a_nifti_chest_ct_served_without_region_and_modality_differs(pipeline):
    """Without collection/region/modality a NIfTI CT gets no window (NIfTI has none of its own): the
    robust intensity range instead of the lung window, a visibly different embedding. The parity
    comparison above would catch that bug."""
    record = next(r for r in pipeline["records"]
                  if r.collection == TRAIN and r.fmt == "nifti" and (r.region, r.modality) == ("Chest", "CT"))
    curated = _curated_embedding(pipeline, record)
    assert _cosine(_served_embedding(pipeline, record), curated) >= PARITY_COSINE  # with its source: parity
    unwindowed = _cosine(_served_embedding(pipeline, record, Source()), curated)
    assert unwindowed < DIFFERENT_COSINE, f"{record.describe()}: served without a source, cosine {unwindowed:.6f}"
