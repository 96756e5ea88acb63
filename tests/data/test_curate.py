"""Curation: shapes, normalisation, patient-level splits, PHI removal, de-duplication, quarantine."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from helpers import tiny_params
from radclip.config import Params
from radclip.data.curate import _to_display_range, curate, normalise_volume
from radclip.data.dicom_write import PHI_TAGS, write_dicom_image, write_dicom_series
from radclip.data.phantoms import generate
from radclip.data.shards import CuratedDataset


@pytest.fixture(scope="module")
def curated_phantoms(tmp_path_factory) -> tuple[Params, Path]:
    tmp = tmp_path_factory.mktemp("phantoms")
    params = tiny_params(tmp)
    generate(params)
    curate(params, progress=False)
    return params, tmp


def _manifest(params: Params) -> pd.DataFrame:
    return pd.read_parquet(params.resolve(params.paths.curated) / "manifest.parquet")


def test_every_phantom_collection_is_curated(curated_phantoms):
    params, _ = curated_phantoms
    manifest = _manifest(params)
    assert set(manifest["collection"]) == {c.name for c in params.data.collections}
    assert set(manifest["kind"]) == {"2d", "3d"}
    summary = json.loads((params.resolve(params.paths.curated) / "summary.json").read_text())
    assert summary["records"] == len(manifest)
    assert summary["quarantine_rate"] <= params.validate_.max_quarantine_rate


def test_shards_have_the_configured_shapes_and_dtypes(curated_phantoms):
    params, _ = curated_phantoms
    dataset = CuratedDataset(params.resolve(params.paths.curated))
    size = params.curate.image_size
    for index, row in dataset.manifest.iterrows():
        array = dataset.array(index)
        if row["kind"] == "2d":
            assert array.dtype == np.uint8 and array.shape == (size, size)
        else:
            shape = params.curate.volume[row["plane"]]
            assert array.dtype == np.float16 and array.shape == (shape.slices, shape.size, shape.size)


def test_volumes_are_z_scored_and_images_use_the_full_range(curated_phantoms):
    params, _ = curated_phantoms
    manifest = _manifest(params)
    volumes = manifest[manifest["kind"] == "3d"]
    # z-scored before resampling: resampling smooths, so std is a little under 1
    assert np.allclose(volumes["mean"], 0.0, atol=0.1)
    assert ((volumes["std"] > 0.7) & (volumes["std"] < 1.1)).all()
    images = manifest[manifest["kind"] == "2d"]
    assert (images["max"] - images["min"] > 100).all()
    # Every volume records its display range (z units) for the encoder; 2D records are display values already.
    assert (volumes["display_low"] < volumes["display_high"]).all() and images["display_low"].isna().all()
    ct = volumes[volumes["collection"] == "phantom_chest_ct_3d_3class"]
    assert len(ct) and (ct["max"] <= ct["display_high"] + 1e-2).all()  # bone is clipped at the lung window's top


@pytest.mark.parametrize("window", [(-600.0, 1500.0), None])
def test_volume_display_range_gives_back_what_a_2d_image_of_the_same_values_shows(window):
    """A slice mapped to [0, 1] by the recorded range equals the 2D display mapping of the same
    values (CT window, else 0.5/99.5 percentiles): the 2D encoder sees 3D slices as it saw 2D images."""
    rng = np.random.default_rng(0)
    hu = rng.choice([-1024.0, -850.0, -500.0, 40.0, 700.0], size=(4, 8, 8)) + rng.normal(0, 5, (4, 8, 8))
    volume, (low, high) = normalise_volume(hu, 4, 8, window, "ct.nii.gz")  # same shape: no resampling
    unit = np.clip((volume.astype(np.float32) - low) / (high - low), 0.0, 1.0)
    np.testing.assert_allclose(unit, _to_display_range(hu, window, eight_bit=False), atol=5e-3)


def test_captions_follow_the_template(curated_phantoms):
    params, _ = curated_phantoms
    manifest = _manifest(params)
    normal = manifest["conditions"] == ""
    assert manifest.loc[normal, "caption"].str.match(r"^Normal \S+ \S+").all()
    assert manifest.loc[~normal, "caption"].str.contains(" with ").all()
    chexpert = manifest[manifest["collection"] == "phantom_chest_xray_5class"]
    assert set(chexpert["caption"]) <= {
        f"Chest X-ray with {c}" for c in ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
    }


def test_no_patient_lands_in_two_splits(curated_phantoms):
    params, _ = curated_phantoms
    manifest = _manifest(params)
    assert (manifest.groupby("patient_hash")["split"].nunique() == 1).all()
    train_roles = manifest[manifest["role"] == "train"]
    assert set(train_roles["split"]) <= {"train", "val", "test"} and "train" in set(train_roles["split"])
    assert set(manifest.loc[manifest["role"] == "eval", "split"]) == {"eval"}


def _phi_values(raw_dir: Path) -> set[str]:
    values: set[str] = set()
    for path in raw_dir.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for tag in (*PHI_TAGS, "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            value = str(ds.get(tag, "") or "")
            if len(value) >= 6:  # short values (e.g. "O", "1") occur in any file by chance
                values.add(value)
    return values


def _output_files(params: Params) -> list[Path]:
    roots = [params.resolve(params.paths.curated), params.resolve(params.paths.reports)]
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def test_no_dicom_identifier_appears_in_any_curated_byte(curated_phantoms):
    params, tmp = curated_phantoms
    phi = _phi_values(tmp / "raw")
    assert len(phi) > 20, "the phantom DICOM files should carry identifying tags to test against"
    for path in _output_files(params):
        blob = path.read_bytes()
        if path.suffix == ".gz":
            blob = gzip.decompress(blob)
        for value in phi:
            assert value.encode() not in blob, f"{value!r} (a DICOM identifier) found in {path}"


def test_curation_is_identical_with_ray_and_two_workers(curated_phantoms, tmp_path):
    params, _ = curated_phantoms
    ray_params = Params.model_validate(
        {**params.model_dump(by_alias=True), "curate": {**params.curate.model_dump(), "engine": "ray", "workers": 2}}
    )
    curate(ray_params, out_dir=tmp_path / "curated", progress=False)
    serial_dir = params.resolve(params.paths.curated)
    pd.testing.assert_frame_equal(pd.read_parquet(serial_dir / "manifest.parquet"), pd.read_parquet(tmp_path / "curated" / "manifest.parquet"))
    for shard in sorted((serial_dir / "shards").iterdir()):
        assert hashlib.sha256(shard.read_bytes()).digest() == hashlib.sha256((tmp_path / "curated/shards" / shard.name).read_bytes()).digest()


# --------------------------------------------------------------------------- bad inputs and PHI fixture

PHI = {
    "PatientName": "ZZTESTNAME^SECRET",
    "PatientID": "ZZPID-84721",
    "PatientBirthDate": "19411207",
    "AccessionNumber": "ZZACC-5531",
    "InstitutionName": "ZZ Secret Institute",
    "ReferringPhysicianName": "ZZDOC^HIDDEN",
    "StudyDate": "20190314",
}


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.diag([1.0, 1.0, 3.0, 1.0])), path)


@pytest.fixture()
def messy_collection(tmp_path) -> tuple[Params, Path]:
    """A CSV collection mixing good files with every kind of bad input curation must quarantine."""
    root = tmp_path / "messy"
    rng = np.random.default_rng(0)
    rows = []

    def add(path: str, findings: str = "Nodule", region: str = "Chest", modality: str = "CT", patient: str = "p1"):
        rows.append({"path": path, "patient_id": patient, "region": region, "modality": modality, "findings": findings})

    good = rng.integers(0, 255, (40, 40))
    _png(root / "good.png", good)
    add("good.png", patient="p1")
    shutil.copy(root / "good.png", root / "same_pixels_other_name.png")
    add("same_pixels_other_name.png", patient="p2")
    _png(root / "other.png", rng.integers(0, 255, (40, 40)))
    add("other.png", findings="", patient="p3")
    volume = rng.normal(0, 100, (12, 24, 24))
    write_dicom_series(root / "series", volume, uid_seed="messy-series", patient=PHI, modality="CT")
    add("series", patient="")  # patient id from the DICOM header
    write_dicom_image(root / "xray.dcm", rng.uniform(0, 4000, (40, 40)), uid_seed="messy-xray", patient=PHI, modality="DX")
    add("xray.dcm", patient="", modality="X-ray")
    # the bad ones
    write_dicom_image(root / "truncated.dcm", rng.uniform(0, 4000, (40, 40)), uid_seed="trunc", patient=PHI)
    data = (root / "truncated.dcm").read_bytes()
    (root / "truncated.dcm").write_bytes(data[: len(data) // 2])
    add("truncated.dcm", patient="")
    nan_volume = rng.normal(size=(8, 20, 20))
    nan_volume[3, 4, 4] = np.nan
    _nifti(root / "nan.nii.gz", nan_volume)
    add("nan.nii.gz")
    (root / "empty.png").write_bytes(b"")
    add("empty.png")
    (root / "notes.txt").write_text("not an image")
    add("notes.txt")
    _png(root / "unknown_label.png", rng.integers(0, 255, (40, 40)))
    add("unknown_label.png", findings="Dragon Pox")
    _png(root / "no_region.png", rng.integers(0, 255, (40, 40)))
    add("no_region.png", region="")
    _png(root / "one_pixel.png", np.array([[7]]))
    add("one_pixel.png")
    _nifti(root / "four_d.nii.gz", rng.normal(size=(10, 10, 6, 3)))
    add("four_d.nii.gz")
    _png(root / "flat_2d_where_3d.png", rng.integers(0, 255, (40, 40)))
    add("missing.png")
    pd.DataFrame(rows).to_csv(root / "index.csv", index=False)

    params = tiny_params(
        tmp_path,
        data={
            "collections": [
                {
                    "name": "messy",
                    "format": "csv",
                    "path": str(root),
                    "region_column": "region",
                    "modality_column": "modality",
                    "labels": {"Nodule": "Nodule"},
                }
            ]
        },
    )
    return params, root


def _quarantine(params: Params) -> pd.DataFrame:
    return pd.read_parquet(params.resolve(params.paths.curated) / "quarantine.parquet")


def test_bad_inputs_land_in_quarantine_with_file_and_reason(messy_collection):
    params, _ = messy_collection
    summary = curate(params, progress=False)
    quarantine = _quarantine(params).set_index("source_path")
    expected = {
        "truncated.dcm": r"(?i)truncat|unreadable|read",
        "nan.nii.gz": r"(?i)nan|inf",
        "empty.png": r"(?i)empty|zero",
        "notes.txt": r"(?i)unsupported|not an image|extension",
        "unknown_label.png": r"(?i)unknown label 'Dragon Pox'",
        "no_region.png": r"(?i)region|caption",
        "one_pixel.png": r"(?i)too small",
        "four_d.nii.gz": r"(?i)4D",
        "missing.png": r"(?i)missing|not found|does not exist",
        "same_pixels_other_name.png": r"duplicate of record",
    }
    for source, reason in expected.items():
        assert source in quarantine.index, f"{source} was not quarantined"
        assert pd.Series([quarantine.loc[source, "reason"]]).str.contains(reason).all(), quarantine.loc[source, "reason"]
    manifest = _manifest(params)
    assert sorted(manifest["source_path"].str.split("#").str[0]) == ["good.png", "other.png", "series", "xray.dcm"]
    assert summary.quarantined == len(expected) and summary.duplicates == 1
    assert summary.items == len(expected) + 4  # every input is accounted for: curated or quarantined
    assert (params.resolve(params.paths.curated) / "quarantine.csv").exists()


def test_phi_written_into_fixture_headers_appears_nowhere(messy_collection):
    params, _ = messy_collection
    curate(params, progress=False)
    manifest = _manifest(params)
    series = manifest[manifest["source_path"].str.startswith("series")]
    assert len(series) == 1 and series["kind"].item() == "3d"
    for path in _output_files(params):
        blob = path.read_bytes()
        for value in PHI.values():
            assert value.encode() not in blob, f"{value!r} found in {path}"
    # the salted hash, not the id, groups the DICOM files of one patient
    dicom_rows = manifest[manifest["source_path"].str.match(r"^(series|xray\.dcm)")]
    assert dicom_rows["patient_hash"].nunique() == 1


def test_patient_hash_depends_on_the_salt(messy_collection, monkeypatch):
    params, _ = messy_collection
    curate(params, progress=False)
    before = set(_manifest(params)["patient_hash"])
    monkeypatch.setenv(params.curate.salt_env, "a-different-secret-salt")
    curate(params, progress=False)
    assert before.isdisjoint(set(_manifest(params)["patient_hash"]))
