"""The one typed params schema, read once and shared by DVC stages and the CLI.

``params.yaml`` holds the embedded default. Its ``profile`` key names an overlay
in ``params/<profile>.yaml`` (for example ``paper``) that is deep-merged on top,
so ``dvc exp run -S profile=paper`` or ``radclip --profile paper ...`` switch the
whole pipeline. Unknown or ill-typed keys are rejected with the key's dotted path.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PARAMS_FILE = "params.yaml"
PROFILES_DIR = "params"


class ParamsError(ValueError):
    """params.yaml (or a profile overlay) is missing, malformed or has a bad key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- paths / ray


class Paths(Strict):
    raw: str = "data/raw"
    general: str = "data/general"  # pretrain_general's generated corpus (WebDataset tar shards)
    curated: str = "data/curated"
    reports: str = "reports"
    models: str = "models"  # trained models (HF-style directories), DVC outputs
    slice_cache: str = "data/slice_cache"  # per-slice embeddings of every volume (embed_slices)
    tmp: str = ".tmp"  # Ray session files, scratch; keeps ~/.ray and /tmp clean
    sweeps: str = "sweeps"  # Optuna journal storage (kept across runs: a re-run continues the study)


class RayParams(Strict):
    address: str | None = None  # None: start a local Ray; "auto" or "ray://host:10001": join a cluster
    num_cpus: int | None = Field(default=None, ge=1)  # local Ray only; None: all cores
    # This machine's address as the cluster knows it, for machines with several interfaces; None: Ray's guess.
    node_ip_address: str | None = None
    # Ray Train's checkpoints and resume: a folder every node mounts or an object-store URI (s3://bucket/prefix);
    # None: paths.tmp/ray-results, refused on a cluster of several nodes (the other nodes could not write it).
    storage_path: str | None = None
    # Where Ray Train places its workers: PACK fills a node first; SPREAD / STRICT_SPREAD one node each.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


# --------------------------------------------------------------------------- captions


# Caption styles: each a preset of CaptionTemplate's fields (the ones a collection sets win).
CAPTION_STYLES: dict[str, dict[str, Any]] = {
    # RadCLIP's "[Region] [Modality] with [Condition]".
    "template": {"template": "{region} {modality} with {condition}", "normal": "Normal {region} {modality}",
                 "joiner": " and ", "finding": "{condition}", "lowercase": False},
    # CXR-CML's meta labels: "Chest X-ray: edema is present, pleural effusion is present".
    "meta": {"template": "{region} {modality}: {condition}", "normal": "{region} {modality}: no finding",
             "joiner": ", ", "finding": "{condition} is present", "lowercase": True},
}


class CaptionTemplate(Strict):
    """``[Region] [Modality] with [Condition]``; the normal case has its own template.

    ``style`` picks a preset (``template`` or ``meta``, see ``CAPTION_STYLES``); fields given beside it
    override the preset's. ``finding`` is one condition's phrase, ``joiner`` joins several into
    ``{condition}``; ``lowercase`` lowers condition names except acronyms (COVID-19 stays)."""

    style: Literal["template", "meta"] = "template"
    template: str = CAPTION_STYLES["template"]["template"]
    normal: str = CAPTION_STYLES["template"]["normal"]
    joiner: str = CAPTION_STYLES["template"]["joiner"]  # between several conditions of a multi-label study
    finding: str = CAPTION_STYLES["template"]["finding"]
    lowercase: bool = False

    @model_validator(mode="before")
    @classmethod
    def _style_defaults(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("style", "template") in CAPTION_STYLES:
            return {**CAPTION_STYLES[value.get("style", "template")], **value}
        return value

    @field_validator("template", "finding")
    @classmethod
    def _needs_condition(cls, value: str) -> str:
        if "{condition}" not in value:
            raise ValueError("caption template and finding must contain {condition}")
        return value


# --------------------------------------------------------------------------- collections


class CollectionBase(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: str
    # train: pretrain_2d and the stages after it; finetune: split like train, but only a fine-tuning stage
    # on top of the 2D model reads it (CXR-CML's long-tail collection); eval: a held-out suite.
    role: Literal["train", "finetune", "eval"] = "train"
    region: str = ""
    modality: str = ""
    caption: CaptionTemplate | None = None  # None: data.caption
    # CT windowing for 2D output and before z-scoring volumes: (center, width) in HU.
    window: tuple[float, float] | None = None
    # Per "{region} {modality}" (e.g. "Chest CT") for collections that mix them; `window` wins.
    # Without either, a CT's own DICOM window is used, else its robust intensity range.
    windows: dict[str, tuple[float, float]] = {}


class CsvCollection(CollectionBase):
    """A CSV listing files (PNG/JPEG/DICOM file or series folder/NIfTI) with labels.

    ``label_column`` holds one label or several separated by ``label_separator``;
    ``labels`` maps raw values to condition names, null meaning normal. Values
    not in ``labels`` are quarantined as unknown, unless ``labels`` is empty,
    in which case raw values are used as condition names.
    """

    format: Literal["csv"] = "csv"
    index: str = "index.csv"
    path_column: str = "path"
    label_column: str = "findings"
    label_separator: str = "|"
    patient_column: str | None = None  # None: from DICOM PatientID, else one patient per file
    region_column: str | None = None
    modality_column: str | None = None
    labels: dict[str, str | None] = {}
    expect_kind: Literal["2d", "3d"] | None = None


class FolderCollection(CollectionBase):
    """One folder per class (Crystal Clean brain tumour MRI style)."""

    format: Literal["image_folders"] = "image_folders"
    subsets: list[str] = []  # e.g. ["Training", "Testing"]; [] = class folders at the root
    labels: dict[str, str | None] = {}  # folder name -> condition (null: normal)


class ChexpertCollection(CollectionBase):
    """CheXpert CSV: Path column plus one column per observation (1, 0, -1, blank)."""

    format: Literal["chexpert"] = "chexpert"
    index: str = "CheXpert-v1.0-small/valid.csv"
    root: str = "."  # what CSV paths are relative to
    observations: list[str] = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    uncertainty: Literal["ones", "zeros", "ignore"] = "zeros"  # U-Ones / U-Zeros / drop the label
    single_label: bool = False  # evaluation suites with one positive class per image (CheXpert 5x200)
    frontal_only: bool = True
    # A class-balanced subset (RadCLIP's 5 x 1,000 from train.csv): per observation, the
    # `sample_per_class` eligible rows (frontal, exactly one positive) ranked first by a hash of
    # (sample_seed, Path); the other rows are skipped by design. null: every row.
    sample_per_class: int | None = Field(default=None, ge=1)
    sample_seed: int = 0

    @model_validator(mode="after")
    def _sample_needs_single_label(self) -> ChexpertCollection:
        if self.sample_per_class is not None and not self.single_label:
            raise ValueError("sample_per_class needs single_label: true (a sampled image has one class)")
        return self


class IxiCollection(CollectionBase):
    """IXI: ``IXI-T1/IXI<id>-<site>-<n>-T1.nii.gz`` plus a demographics table."""

    format: Literal["ixi"] = "ixi"
    images: str = "IXI-T1"
    table: str = "IXI.xls"
    id_column: str = "IXI_ID"
    label_column: str = "SEX_ID"
    labels: dict[str, str | None] = {"1": "Male", "2": "Female"}


class CovidCtMdCollection(CollectionBase):
    """COVID-CT-MD: one DICOM folder per patient under a class folder, plus an index CSV."""

    format: Literal["covid_ct_md"] = "covid_ct_md"
    index: str = "Index.csv"
    folder_column: str = "Folder/ID"
    label_column: str = "Diagnosis"
    class_folders: dict[str, str] = {"COVID-19": "COVID-19 Cases", "CAP": "CAP Cases", "Normal": "Normal Cases"}
    labels: dict[str, str | None] = {"COVID-19": "COVID-19", "CAP": "Community-Acquired Pneumonia", "Normal": None}


# NIH ChestX-ray14's label names (Data_Entry_2017.csv; "Infiltrate" is BBox_List_2017.csv's spelling)
# -> the project's condition names (null: normal).
CHESTXRAY14_LABELS: dict[str, str | None] = {
    "No Finding": None, "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation", "Edema": "Edema", "Effusion": "Pleural Effusion",
    "Emphysema": "Emphysema", "Fibrosis": "Fibrosis", "Hernia": "Hernia", "Infiltration": "Infiltration",
    "Infiltrate": "Infiltration", "Mass": "Mass", "Nodule": "Nodule", "Pleural_Thickening": "Pleural Thickening",
    "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax",
}  # fmt: skip


class ChestXray14Collection(CollectionBase):
    """NIH ChestX-ray14: ``Data_Entry_2017.csv`` (labels, patient ids), the PNGs under ``images``
    folders, and optionally ``BBox_List_2017.csv`` (lesion boxes, x/y/w/h in original pixels)."""

    format: Literal["chestxray14"] = "chestxray14"
    region: str = "Chest"
    modality: str = "X-ray"
    index: str = "Data_Entry_2017.csv"
    boxes: str | None = "BBox_List_2017.csv"  # null: no box list
    # Folders (relative to the collection) searched in order for each "Image Index"; the release
    # spreads its PNGs over images_001/images ... images_012/images.
    images: list[str] = ["images"]
    labels: dict[str, str | None] = CHESTXRAY14_LABELS
    boxed_only: bool = False  # keep only images the box list covers (the real list: 880 of 112,120)


class CxrLtCollection(CollectionBase):
    """CXR-LT (MIMIC-CXR-JPG frontal images, long-tailed multi-label): one CSV per split with ``dicom_id``,
    ``subject_id``, ``study_id`` and one 0/1 column per class."""

    format: Literal["cxr_lt"] = "cxr_lt"
    region: str = "Chest"
    modality: str = "X-ray"
    index: str = "train.csv"
    # The image path column, relative to ``images`` under the collection; null: MIMIC-CXR-JPG's layout
    # from the ids, files/p<first 2 digits of subject>/p<subject>/s<study>/<dicom_id>.jpg.
    path_column: str | None = "fpath"
    images: str = "."
    # [] = every column but the ids, path, view, normal_column and ignore_columns.
    classes: list[str] = []
    labels: dict[str, str | None] = {}  # class column -> condition (null: normal); {} = the column names
    normal_column: str | None = "No Finding"  # 1 there and a positive class elsewhere is an error item
    view_column: str | None = "ViewPosition"  # with frontal_only: rows whose view is not AP/PA are skipped
    frontal_only: bool = True
    ignore_columns: list[str] = ["split"]


class MedmnistCollection(CollectionBase):
    """A MedMNIST ``.npz`` (2D or 3D) from a local path; class names from params."""

    format: Literal["medmnist"] = "medmnist"
    splits: list[Literal["train", "val", "test"]] = ["train", "val", "test"]
    class_names: list[str | None] = []  # index -> condition (null: normal)
    multi_label: bool = False


Collection = Annotated[
    Union[CsvCollection, FolderCollection, ChexpertCollection, IxiCollection, CovidCtMdCollection,
          ChestXray14Collection, CxrLtCollection, MedmnistCollection],
    Field(discriminator="format"),
]


class DataParams(Strict):
    caption: CaptionTemplate = CaptionTemplate()
    collections: list[Collection] = []

    @model_validator(mode="after")
    def _unique_names(self) -> DataParams:
        names = [c.name for c in self.collections]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"collection names must be unique, repeated: {duplicates}")
        return self


# --------------------------------------------------------------------------- phantoms


class PhantomSuites(Strict):
    """Per-class counts of the held-out evaluation suites (paper-shaped)."""

    chest_xray_5class: int = Field(default=40, ge=0)  # CheXpert layout
    brain_mri_4class: int = Field(default=40, ge=0)  # Crystal Clean layout
    brain_mri_3d_2class: int = Field(default=100, ge=0)  # IXI layout
    chest_ct_3d_3class: int = Field(default=60, ge=0)  # COVID-CT-MD layout
    brain_mri_3d_sex: int = Field(default=100, ge=0)  # IXI layout, SEX_ID: whole-volume head size/shape, no lesion
    chest_xray_boxes: int = Field(default=40, ge=0)  # ChestX-ray14 layout, lesion boxes: per focal finding, normals


class PhantomLongTail(Strict):
    """The long-tail chest X-ray collection in CXR-LT's layout (``cxr_lt/``, issue 13): ``train.csv``
    (training images, rare findings about 1 % each) and ``test.csv`` (the multi-label suite)."""

    train: int = Field(default=1800, ge=0)
    test_per_class: int = Field(default=25, ge=0)  # positives of each class in test.csv


class PhantomParams(Strict):
    enabled: bool = True  # false: real data only, the stage writes an empty folder
    data_seed: int = 0  # every phantom: which scene, finding, format and patient, and its pixels
    train_2d: int = Field(default=2000, ge=0)
    train_3d: int = Field(default=800, ge=0)
    image_size: int = Field(default=128, ge=16)  # raw 2D files
    volume_shape: tuple[int, int, int] = (32, 64, 64)  # raw volumes: slices, rows, cols
    lesion_slices: tuple[int, int] = (2, 4)  # a 3D finding spans this many slices (min, max)
    dicom_fraction: float = Field(default=0.15, ge=0, le=1)
    images_per_patient: int = Field(default=2, ge=1)
    suites: PhantomSuites = PhantomSuites()
    cxr_lt: PhantomLongTail = PhantomLongTail()
    workers: int = Field(default=2, ge=1)


# --------------------------------------------------------------------------- curation


class PlaneShape(Strict):
    slices: int = Field(ge=1)
    size: int = Field(ge=4)


class SplitFractions(Strict):
    train: float = Field(default=0.8, ge=0)
    val: float = Field(default=0.1, ge=0)
    test: float = Field(default=0.1, ge=0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total}")
        return self


class CurateParams(Strict):
    engine: Literal["ray", "serial"] = "ray"
    workers: int = Field(default=2, ge=1)  # concurrent tasks (local Ray CPUs, or tasks in flight on a cluster)
    chunk_size: int = Field(default=128, ge=1)  # items per task; bounds each task's memory and shard size
    image_size: int = Field(default=64, ge=4)  # 2D output, square
    volume: dict[Literal["axial", "coronal", "sagittal"], PlaneShape] = {
        "axial": PlaneShape(slices=32, size=64),
        "coronal": PlaneShape(slices=32, size=64),
        "sagittal": PlaneShape(slices=32, size=64),
    }
    split: SplitFractions = SplitFractions()
    # Patient ids are hashed with a salt; set the environment variable for real data
    # (a salt in a committed file is no secret). The param is the phantom fallback.
    salt_env: str = "RADCLIP_PHI_SALT"
    salt: str = "radclip-embedded-default"
    min_pixels: int = Field(default=16, ge=1)  # smaller images (e.g. 1 pixel) are quarantined

    @field_validator("volume")
    @classmethod
    def _all_planes(cls, value: dict) -> dict:
        missing = {"axial", "coronal", "sagittal"} - set(value)
        if missing:
            raise ValueError(f"volume shapes missing for planes {sorted(missing)}")
        return value


class ValidateParams(Strict):
    min_class_count: int = Field(default=5, ge=0)
    max_quarantine_rate: float = Field(default=0.05, ge=0, le=1)
    fail_on_violation: bool = True


# --------------------------------------------------------------------------- model / loss / training / tracking


class VisionTower(Strict):
    """The small ViT of a CLIP built here (pretrain_general; tests), not used when loading ``model.pretrained``."""

    hidden_size: int = Field(default=128, ge=8)
    num_hidden_layers: int = Field(default=4, ge=1)
    num_attention_heads: int = Field(default=4, ge=1)
    intermediate_size: int = Field(default=512, ge=8)
    patch_size: int = Field(default=16, ge=1)


class TextTower(Strict):
    hidden_size: int = Field(default=128, ge=8)
    num_hidden_layers: int = Field(default=2, ge=1)
    num_attention_heads: int = Field(default=4, ge=1)
    intermediate_size: int = Field(default=512, ge=8)
    max_position_embeddings: int = Field(default=77, ge=4)  # CLIP's context


class AdapterParams(Strict):
    """Slice pooling adapter: V = MHSA(I + PE) over slice embeddings, then a reducer."""

    heads: int = Field(default=4, ge=1)
    max_slices: int = Field(default=64, ge=1)
    dropout: float = Field(default=0.5, ge=0, lt=1)
    # attention: learnable query over MHSA(I + PE) (the project's); mhsa_mean: the paper's literal mean of
    # MHSA(I + PE); residual_mean: mean of I + g·MHSA(I + PE), gate g from 0 (starts at average pooling);
    # mean: global average pooling (no parameters)
    reducer: Literal["attention", "mhsa_mean", "residual_mean", "mean"] = "attention"


class ModelParams(Strict):
    # A hub name (e.g. openai/clip-vit-large-patch14, read from the local HF cache only) or a
    # local directory saved with save_pretrained; null builds a small CLIP from the towers below.
    pretrained: str | None = None  # params.yaml: pretrain_general's output, models/general-clip
    projection_dim: int = Field(default=128, ge=8)
    init_seed: int = 0  # initial weights of a CLIP built here (the embedded default) and of init_model's adapter
    vision: VisionTower = VisionTower()
    text: TextTower = TextTower()
    adapter: AdapterParams = AdapterParams()


class LossParams(Strict):
    temperature: float = Field(default=0.07, gt=0)  # τ (initial value when learnable)
    learnable_temperature: bool = True  # log-scale parameter, logit scale clamped at 100 like CLIP
    duplicate_aware: bool = True  # identical captions in a batch are positives, not negatives


class TrainParams(Strict):
    # ray: Ray Train workers (DDP, per-worker shards); local: one in-process worker (cheap adapter
    # runs and sweep trials, where starting Ray workers would cost more than the training).
    engine: Literal["ray", "local"] = "ray"
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=64, ge=2)  # global batch across workers
    lr: float = Field(default=1e-3, gt=0)  # cosine-annealed from this value
    weight_decay: float = Field(default=0.1, ge=0)  # L2 through AdamW
    patience: int = Field(default=5, ge=1)  # early stopping on validation loss
    num_workers: int = Field(default=2, ge=1)  # Ray Train workers
    use_gpu: bool = False
    backend: Literal["gloo", "nccl"] = "gloo"
    bf16: bool = False  # autocast on GPU; slower than fp32 on these CPUs
    gradient_checkpointing: bool = False
    max_failures: int = Field(default=2, ge=0)  # Ray Train FailureConfig: resume from the last checkpoint
    loop_seed: int = 0  # data order, dropout masks and (adapter stage) the fresh adapter's initial weights


class MlflowParams(Strict):
    # null: sqlite:///<project>/mlflow.db (absolute); or a remote server URI.
    # The MLFLOW_TRACKING_URI environment variable overrides both.
    tracking_uri: str | None = None
    artifact_root: str = "mlruns"
    experiment: str = "radclip"


class EvaluateParams(Strict):
    """The paper's protocol: linear probe (5-fold, 70/10/20 patient-level), image–text matching."""

    folds: int = Field(default=5, ge=2)
    protocol_seed: int = 0  # patient folds, the probe's initial weights and bootstrap resamples
    probe_method: Literal["torch", "sklearn"] = "torch"  # torch: one nn.Linear, Adam (the paper)
    probe_epochs: int = Field(default=100, ge=1)
    probe_lr: float = Field(default=1e-3, gt=0)
    # Zero-shot prompt templates, averaged per class (an ensemble); {caption} is the class caption.
    prompt_templates: list[str] = ["{caption}", "a radiology image: {caption}", "a photo of a {caption}"]
    suites: list[str] = []  # evaluation collections to run; [] = every collection with role eval
    # Paper Fig. 5: modality-level captions plus distractors, scored (softmax) on every suite.
    modality_prompts: list[str] = [
        "Chest X-ray Image", "Brain MRI Image", "Chest CT Image", "Abdomen CT Image", "Knee MRI Image",
        "A Puppy", "A Cat", "A Life Vest",
    ]
    # Multi-label AUROC, base vs rare classes. training: a suite's class is rare when its share of the
    # training images (train split of the role-train collections; per region, modality and condition;
    # each finding of a multi-finding caption counted) is below rare_fraction; a class training never
    # shows (share 0) is rare too. evaluation: fewer than rare_threshold positives in the suite itself.
    rare_by: Literal["training", "evaluation"] = "training"
    rare_fraction: float = Field(default=0.02, gt=0, le=1)
    rare_threshold: int = Field(default=10, ge=1)  # rare_by: evaluation only
    bootstrap: int = Field(default=500, ge=0)  # resamples for CIs of fold-free metrics (0: none)
    attention_volumes: int = Field(default=3, ge=0)  # volumes with a finding per 3D suite in the attention plot


class SearchSpace(Strict):
    """What the sweep tunes: the adapter's reducer and head count, learning rate and temperature (log scales)."""

    # [] = model.adapter.reducer only; several: the validation loss chooses among them ("mean" has nothing to train)
    reducers: list[Literal["attention", "mhsa_mean", "residual_mean"]] = ["attention", "mhsa_mean", "residual_mean"]
    heads: list[int] = []  # [] = every divisor of the embedding width up to 16
    lr: tuple[float, float] = (1e-4, 1e-1)
    temperature: tuple[float, float] = (0.01, 0.2)  # the initial value when the temperature is learnable


class SweepParams(Strict):
    """Optuna study over the adapter, trained on the fine-tuned slice cache (seconds a trial). The
    objective is the trial's best validation InfoNCE (minimised; the test split is never read)."""

    n_trials: int = Field(default=12, ge=1)  # finished trials (complete or pruned) the study should hold
    study: str = "radclip-adapter"
    # None: a journal file under paths.sweeps (crash-safe, several local processes);
    # an RDB URL ("postgresql://user@host/optuna") for workers on several machines.
    storage: str | None = None
    sampler: Literal["tpe", "random"] = "tpe"
    sampler_seed: int = 0  # the sampler's draws (TPE / random): the same study for the same params
    pruner: Literal["median", "hyperband", "none"] = "median"
    startup_trials: int = Field(default=5, ge=0)  # trials before the pruner may stop one
    warmup_epochs: int = Field(default=3, ge=0)  # epochs of a trial before it may be pruned
    epochs: int | None = Field(default=None, ge=1)  # per trial; None: the stage's own epochs
    workers: int = Field(default=1, ge=1)  # sweep processes on this machine sharing the study
    # A trial that raises is recorded FAIL and the sweep goes on; this many failures in a row stop it (a
    # systematic error should not burn the whole budget).
    max_consecutive_failures: int = Field(default=3, ge=1)
    # A trial whose process died (killed, its machine gone) ends FAIL and its params run again, at most
    # max_retries times (0: never). On RDB storage every running trial beats each heartbeat_seconds, and one
    # silent for grace_seconds is failed by the next trial any worker starts (or by a worker waiting at the
    # end); on either storage a worker fails the trials of dead processes on this machine.
    max_retries: int = Field(default=1, ge=0)
    heartbeat_seconds: int = Field(default=30, ge=1)
    grace_seconds: int = Field(default=120, ge=1)
    space: SearchSpace = SearchSpace()
    # The final adapter training (pretrain_adapter) trains with the best params of the adapter sweep.
    apply_best: bool = True


class GeneralParams(Strict):
    """Stage ``pretrain_general``: the embedded default's "vanilla CLIP", trained from scratch (both towers,
    text per batch) on a procedurally generated general-domain (non-medical) corpus, with a BPE tokenizer
    trained on that corpus's captions. The paper profile disables it and loads real CLIP weights."""

    enabled: bool = True  # false: model.pretrained names real weights (params/paper.yaml)
    corpus_seed: int = 0  # every scene, caption and the held-out (colour, object) pairs
    train_images: int = Field(default=12000, ge=1)
    val_images: int = Field(default=1000, ge=1)  # same distribution as train: early stopping, retrieval
    heldout_images: int = Field(default=600, ge=1)  # held-out (colour, object) pairs: compositional zero-shot
    shard_size: int = Field(default=1000, ge=1)  # samples per WebDataset tar shard
    workers: int = Field(default=2, ge=1)  # generator processes (the output is the same for any count)
    vocab_size: int = Field(default=1024, ge=300)  # BPE: 256 bytes x {inner, word-final} + merges + 2 specials
    epochs: int = Field(default=12, ge=1)
    batch_size: int = Field(default=128, ge=2)
    lr: float = Field(default=1e-3, gt=0)  # AdamW, linear warm-up then cosine
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.1, ge=0)
    patience: int = Field(default=3, ge=1)  # early stopping on the val split's InfoNCE
    temperature: float = Field(default=0.07, gt=0)  # initial; learnable as in CLIP
    loop_seed: int = 0  # data order and dropout; initial weights come from model.init_seed


class AblationThresholds(Strict):
    """Pre-registered pass/fail criteria of the ablation, judged on means over seeds (see params.yaml)."""

    general_over_random: float = 0.05  # (a) vanilla+average probe − random-init+average probe, every suite
    general_over_chance: float = 0.10  # (a) vanilla+average probe − chance (majority class), mean of the suites
    matching_gain: float = 0.15  # (b) fine-tuned − vanilla matching P@1 (average pooling), mean of the suites
    focal_seed_stds: float = 2.0  # (c) focal 3D suites: fine-tuned+adapter − vanilla+average > this × seed std
    global_adapter_margin: float = 0.02  # (d) global 3D suites: adapter ≥ average pooling − this (fine-tuned)
    general_zero_shot: float = 0.6  # (e) general model: zero-shot attribute accuracy on held-out combinations


class AblateParams(Strict):
    """Stage ``ablate``: {random init, vanilla, fine-tuned} × {average pooling, adapter}, plus the paper's
    literal mean-of-MHSA reducer, each cell over ``seeds`` adapter trainings and probes."""

    seeds: int = Field(default=3, ge=1)  # seed k: train_adapter.loop_seed + k and evaluate.protocol_seed + k
    # 3D suites whose label is a whole-volume property; the other 3D suites are focal
    global_suites: list[str] = ["phantom_brain_mri_3d_sex"]
    thresholds: AblationThresholds = AblationThresholds()


class LrclrThresholds(Strict):
    """LRCLR's pre-registered pass/fail criteria on the phantoms (issue 12), fixed before its stage's first
    run and judged by it on seed means: (a) on every focal finding, the text→region top-2 hit rate and
    pointing game of LRCLR have a bootstrap CI at ``chance_ci_level`` that excludes chance (the box's area
    fraction; a finding smaller than one patch may be excused, said in the report); (b) averaged over the
    focal findings, LRCLR's best heatmap's pointing game ≥ the control's rollout's + ``pointing_gain``;
    (c) zero-shot macro AUROC of ``lrclr`` ≥ ``control`` − ``zero_shot_auroc_margin``."""

    chance_ci_level: float = Field(default=0.95, gt=0, lt=1)
    pointing_gain: float = 0.10
    zero_shot_auroc_margin: float = 0.01


class CmlThresholds(Strict):
    """CXR-CML's pre-registered pass/fail criteria on the phantoms (issue 13), fixed before its stage's first
    run and judged on seed means on the long-tail suite (macro AUROC, paired-bootstrap CIs at ``ci_level``):
    ``t`` − ``control``: rare ≥ ``rare_gain`` with the CI above 0, base ≥ −``base_margin``, total ≥
    ``total_gain``; ``t`` − ``meta`` reported, called reproduced only if its CI excludes 0; the NMI between
    pseudo-labels and the true label sets of ``t`` ≥ that of ``gauss`` (no number: a comparison)."""

    ci_level: float = Field(default=0.95, gt=0, lt=1)
    rare_gain: float = 0.03
    base_margin: float = 0.01
    total_gain: float = 0.0


class CmlParams(Strict):
    """CXR-CML (paper 003): stage ``finetune_cml`` fine-tunes the fine-tuned 2D encoder further on the long-tail
    collection in four arms with equal epochs, data and seeds (the text tower stays frozen): ``control`` (InfoNCE,
    template captions), ``meta`` (meta-label captions), ``gauss`` (meta + triplets on Gaussian-mixture
    pseudo-labels), ``t`` (meta + triplets on Student-t-mixture pseudo-labels, ν = ``nu``), and scores each on
    the long-tail suite (``reports/longtail.{json,md}``)."""

    collection: str = "phantom_cxr_lt"  # role finetune: what the arms train on (its train/val split)
    suite: str = "phantom_cxr_lt_test"  # the multi-label long-tail suite (role eval)
    seeds: int = Field(default=3, ge=1)  # seed k: train.loop_seed + k and mixture_seed + k; verdicts on seed means
    # L = L_c + metric_weight · L_m; the paper weighs both equally (003 l. 89).
    metric_weight: float = Field(default=1.0, ge=0)
    margin: float = Field(default=0.2, ge=0)  # α of the triplet loss (not in the paper)
    mining: Literal["semi-hard", "hard", "all"] = "semi-hard"  # within a worker's batch (not in the paper)
    nu: float = Field(default=4.0, gt=0)  # the t arm's degrees of freedom (the paper's best of 2, 4, 6)
    components: int | None = Field(default=None, ge=2)  # None: the collection's number of classes (paper: N = 40)
    pca_dims: int = Field(default=32, ge=1)  # the mixture is fitted on this many principal components
    refit_every: int = Field(default=1, ge=1)  # epochs between mixture fits (each on all training images)
    mixture_iterations: int = Field(default=100, ge=1)
    mixture_seed: int = 0
    train: TrainParams = TrainParams(epochs=6, batch_size=32, lr=1e-4, patience=6)
    thresholds: CmlThresholds = CmlThresholds()


class CrossModalParams(Strict):
    """LRCLR's cross-modality transformer over [image CLS; K regions; caption tokens] (its size is
    not in the paper: one layer at the joint space's width is the smallest that mixes the two)."""

    width: int = Field(default=128, ge=8)
    layers: int = Field(default=1, ge=1)
    heads: int = Field(default=4, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> CrossModalParams:
        if self.width % self.heads:
            raise ValueError(f"cross_modal.heads ({self.heads}) must divide cross_modal.width ({self.width})")
        return self


class LrclrParams(Strict):
    """LRCLR (paper 002): stage ``pretrain_lrclr`` fine-tunes the fine-tuned 2D encoder further in two
    arms with the same epochs, data and seeds, ``lrclr`` (L = L_global + λ·L_local) and ``control``
    (λ = 0), so extra training cannot pass for an LRCLR gain; stage ``localise`` scores both."""

    local_weight: float = Field(default=0.5, ge=0)  # λ of eq. 6 (the paper: 0.5)
    cross_modal: CrossModalParams = CrossModalParams()
    init_seed: int = 0  # the cross-modal transformer's initial weights
    train: TrainParams = TrainParams(epochs=4, batch_size=64, lr=3e-4, patience=4)
    suite: str = "phantom_chest_xray_boxes"  # the localisation suite (collection with lesion boxes)
    # (c)'s zero-shot suites (2D, curated): macro AUROC of each arm's global embeddings, averaged
    zero_shot_suites: list[str] = ["phantom_chest_xray_boxes", "phantom_chest_xray_5class"]
    thresholds: LrclrThresholds = LrclrThresholds()


class RegistryParams(Strict):
    """MLflow model registry: one registered model, versions promoted by alias."""

    model_name: str = "radclip"
    # Held-out metrics (dotted keys of reports/evaluate.json) the promotion gate compares;
    # the challenger wins when their mean beats the champion's by at least min_improvement.
    gate_metrics: list[str] = [
        "phantom_brain_mri_3d_2class.probe_accuracy_mean",
        "phantom_chest_ct_3d_3class.probe_accuracy_mean",
        "phantom_chest_xray_5class.probe_accuracy_mean",
        "phantom_brain_mri_4class.probe_accuracy_mean",
    ]
    min_improvement: float = 0.0


# --------------------------------------------------------------------------- root


class InferenceParams(Strict):
    """Where frozen models run outside Ray Train: embed_slices (its local engine; Ray actors run on CUDA when they
    hold GPUs), evaluate, ablate, localise, serving and the CLI. Training stages: ``train_*.use_gpu``."""

    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when torch sees a GPU; cuda without one: an error
    bf16: bool = True  # bfloat16 autocast on CUDA (outputs cast back to float32); the CPU always runs fp32


class EmbedParams(Strict):
    """How a frozen 2D encoder runs over curated data: embed_slices (every slice of every curated volume) and the 2D
    features of evaluate and ablate. The output is the same whichever engine computes it."""

    engine: Literal["local", "ray"] = "local"  # ray: Ray Data actors (a cluster's nodes and GPUs)
    concurrency: int = Field(default=2, ge=1)  # ray: encoder actors
    num_cpus: float = Field(default=1.0, gt=0)  # ray: CPUs per actor (and its torch threads)
    num_gpus: float = Field(default=0.0, ge=0)  # ray: GPUs per actor; > 0 encodes on CUDA (inference.bf16 applies)
    batch_volumes: int = Field(default=8, ge=1)  # volumes per encoder batch


class Params(Strict):
    profile: str = "default"
    paths: Paths = Paths()
    ray: RayParams = RayParams()
    inference: InferenceParams = InferenceParams()
    embed: EmbedParams = EmbedParams()
    phantoms: PhantomParams = PhantomParams()
    data: DataParams = DataParams()
    curate: CurateParams = CurateParams()
    validate_: ValidateParams = Field(default=ValidateParams(), alias="validate")
    model: ModelParams = ModelParams()
    loss: LossParams = LossParams()
    train_2d: TrainParams = TrainParams()
    train_adapter: TrainParams = TrainParams(
        engine="local", epochs=60, batch_size=64, lr=3e-3, weight_decay=0.01, patience=15, num_workers=1, max_failures=0
    )
    mlflow: MlflowParams = MlflowParams()
    evaluate: EvaluateParams = EvaluateParams()
    general: GeneralParams = GeneralParams()
    ablate: AblateParams = AblateParams()
    lrclr: LrclrParams = LrclrParams()
    cml: CmlParams = CmlParams()
    sweep: SweepParams = SweepParams()
    registry: RegistryParams = RegistryParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def sections(self, *names: str) -> dict[str, Any]:
        """The dotted sections as plain values (``{"train_adapter": {...}, "model.adapter": {...}}``)."""
        dumped = self.model_dump(mode="json", by_alias=True)
        selected: dict[str, Any] = {}
        for name in names:
            value: Any = dumped
            for part in name.split("."):
                if not isinstance(value, dict) or part not in value:
                    raise KeyError(f"params have no section {name!r}")
                value = value[part]
            selected[name] = value
        return selected

    def with_values(self, values: dict[str, Any]) -> Params:
        """A copy with dotted keys replaced (``{"train_adapter.loop_seed": 1}``), validated like params.yaml."""
        raw = self.model_dump(mode="json", by_alias=True)
        for dotted, value in values.items():
            *parents, leaf = dotted.split(".")
            node = raw
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise KeyError(f"params have no section {dotted!r}")
                node = node[part]
            if leaf not in node:
                raise KeyError(f"params have no key {dotted!r}")
            node[leaf] = value
        return Params.model_validate(raw)

    def digest(self, *sections: str) -> str:
        """Stable short hash of the effective params (a lineage tag), or of the dotted ``sections``
        only: a stage's report then names exactly the params DVC reruns the stage for."""
        dumped = self.sections(*sections) if sections else self.model_dump(mode="json", by_alias=True)
        blob = json.dumps(dumped, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def resolve(self, path: str | Path) -> Path:
        """A params path made absolute against the project root (DVC_ROOT when DVC runs us)."""
        path = Path(path)
        return path if path.is_absolute() else project_root() / path


# --------------------------------------------------------------------------- loading


def project_root() -> Path:
    """DVC_ROOT when run by DVC (experiments run in a copy), else the current directory."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def _deep_merge(base: dict, overlay: dict) -> dict:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        else:
            lines.append(f"{source}: key '{key}': {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], *, source: str = PARAMS_FILE, root: Path | None = None) -> Params:
    """Validate a params mapping, applying the overlay its ``profile`` names."""
    profile = raw.get("profile", "default")
    if profile != "default":
        overlay_path = (root or project_root()) / PROFILES_DIR / f"{profile}.yaml"
        if not overlay_path.exists():
            raise ParamsError(f"{source}: key 'profile': no overlay file {overlay_path} for profile {profile!r}")
        raw = _deep_merge(raw, _read_yaml(overlay_path))
        raw["profile"] = profile
        source = f"{source} + {overlay_path.name}"
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_format_errors(source, exc)) from None


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, profile: str | None, mtime: float) -> Params:
    file = Path(path)
    raw = _read_yaml(file)
    if profile is not None:
        raw["profile"] = profile
    return parse_params(raw, source=str(file), root=file.parent)


def load_params(path: str | Path | None = None, *, profile: str | None = None) -> Params:
    """Read params.yaml once (cached per file and modification time) and validate it."""
    file = Path(path) if path else project_root() / PARAMS_FILE
    file = file.resolve()
    mtime = file.stat().st_mtime if file.exists() else 0.0
    return _load_cached(str(file), profile, mtime)
