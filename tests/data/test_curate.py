"""Curation: shapes, normalisation, patient-level splits, PHI removal, de-duplication, quarantine, the
preprocessing contract it writes (preprocessing.json) and the Ray job's parity with the serial default."""

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
from helpers import tiny_params
from PIL import Image

from radclip.config import Params
from radclip.core.preprocessing import PREPROCESSING_FILE, Preprocessing
from radclip.data.curate import SaltMissing, curate, phi_salt
from radclip.data.dicom_write import PHI_TAGS, write_dicom_image, write_dicom_series
from radclip.data.loaders import load_file
from radclip.data.shards import CuratedDataset
from radclip.jobs import curate as curate_job


@pytest.fixture(scope="module")
def curated_phantoms(tiny_curated) -> tuple[Params, Path]:
    """The shared tiny phantoms, curated serially (conftest.py): their params and base folder."""
    return tiny_curated.params, tiny_curated.base


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


def test_captions_follow_the_template(curated_phantoms):
    params, _ = curated_phantoms
    manifest = _manifest(params)
    own = {c.name for c in params.data.collections if c.caption is not None}  # the sex suite: IXI's template
    sex = manifest[manifest["collection"] == "phantom_brain_mri_3d_sex"]
    assert own == {"phantom_brain_mri_3d_sex"} and len(sex)
    assert set(sex["caption"]) == {"Brain MRI of a Male patient", "Brain MRI of a Female patient"}
    manifest = manifest[~manifest["collection"].isin(own)]
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


def test_curate_is_serial_by_default_and_the_ray_job_gives_identical_output(curated_phantoms, tmp_path):
    """curate(params) runs in-process (the fixture's engine: serial); the job with curate.engine: ray and two
    workers writes byte-identical shards, the same manifest, quarantine and contract."""
    params, _ = curated_phantoms
    assert params.curate.engine == "serial"
    ray_params = Params.model_validate({
        **params.model_dump(by_alias=True),
        "paths": {**params.paths.model_dump(), "curated": str(tmp_path / "curated"),
                  "reports": str(tmp_path / "reports")},
        "curate": {**params.curate.model_dump(), "engine": "ray", "workers": 2},
    })
    summary = curate_job.run(ray_params, progress=False)
    serial_dir, ray_dir = params.resolve(params.paths.curated), tmp_path / "curated"
    for table in ("manifest.parquet", "quarantine.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(serial_dir / table), pd.read_parquet(ray_dir / table))
    shards = sorted((serial_dir / "shards").iterdir())
    assert [p.name for p in shards] == sorted(p.name for p in (ray_dir / "shards").iterdir())
    for shard in shards:
        ray_shard = ray_dir / "shards" / shard.name
        assert hashlib.sha256(shard.read_bytes()).digest() == hashlib.sha256(ray_shard.read_bytes()).digest()
    assert (serial_dir / PREPROCESSING_FILE).read_bytes() == (ray_dir / PREPROCESSING_FILE).read_bytes()
    metrics = json.loads((tmp_path / "reports" / "curate.json").read_text())  # the job writes the stage's metrics
    assert metrics["records"] == summary.records == len(_manifest(params))


# --------------------------------------------------------------------------- the preprocessing contract

# (center, width) windows, all different, so each rule's winner is visible.
COLLECTION_WINDOW = (40.0, 400.0)  # the "windowed" collection's window
CHEST_CT_WINDOW = (-600.0, 1500.0)  # both collections' "Chest CT" window
OWN_WINDOW = (300.0, 1200.0)  # what every DICOM file carries in its header


def _bounds(window):
    center, width = window
    return center - width / 2, center + width / 2


def _hu(rng, shape):
    return np.clip(rng.normal(-200.0, 500.0, shape), -1024, 2000).round()


@pytest.fixture(scope="module")
def windowed_curation(tmp_path_factory) -> tuple[Params, Path]:
    """Two CSV collections of CT (DICOM 2D, DICOM series, NIfTI) and one MR series, curated."""
    tmp = tmp_path_factory.mktemp("windows")
    rng = np.random.default_rng(7)
    size = 32  # = curate.image_size of the tiny params: 2D images are not resized
    collections = []
    for name, window in (("windowed", COLLECTION_WINDOW), ("by_region", None)):
        root = tmp / name
        rows: list[dict] = []

        def add(path, region, modality, patient, rows=rows, name=name):
            rows.append({"path": path, "findings": "", "patient_id": f"{name}-{patient}", "region": region,
                         "modality": modality})

        write_dicom_image(root / "ct2d.dcm", _hu(rng, (size, size)), uid_seed=f"{name}-ct2d", patient=PHI,
                          modality="CT", rescale=(1.0, -1024.0), window=OWN_WINDOW)
        add("ct2d.dcm", "Chest", "CT", "a")
        write_dicom_series(root / "chest_series", _hu(rng, (10, 24, 24)), uid_seed=f"{name}-chest", patient=PHI,
                           modality="CT", window=OWN_WINDOW)
        add("chest_series", "Chest", "CT", "b")
        write_dicom_series(root / "abdomen_series", _hu(rng, (10, 24, 24)), uid_seed=f"{name}-abdomen", patient=PHI,
                           modality="CT", window=OWN_WINDOW)
        add("abdomen_series", "Abdomen", "CT", "c")
        _nifti(root / "chest.nii.gz", _hu(rng, (24, 24, 10)))
        add("chest.nii.gz", "Chest", "CT", "d")
        _nifti(root / "abdomen.nii.gz", _hu(rng, (24, 24, 10)))
        add("abdomen.nii.gz", "Abdomen", "CT", "e")
        write_dicom_series(root / "mr_series", rng.uniform(0, 1000, (10, 24, 24)).round(), uid_seed=f"{name}-mr",
                           patient=PHI, modality="MR", rescale=(1.0, 0.0), window=OWN_WINDOW)
        add("mr_series", "Brain", "MRI", "f")
        pd.DataFrame(rows).to_csv(root / "index.csv", index=False)
        collection = {"name": name, "format": "csv", "path": str(root), "patient_column": "patient_id",
                      "region_column": "region", "modality_column": "modality",
                      "windows": {"Chest CT": list(CHEST_CT_WINDOW)}}
        if window is not None:
            collection["window"] = list(window)
        collections.append(collection)
    params = tiny_params(tmp, data={"collections": collections})
    summary = curate(params, progress=False)
    assert summary.quarantined == 0 and summary.records == 12, _quarantine(params)
    return params, tmp


# What the rule gives each file, worked out by hand from the params above: the collection's window wins
# everywhere in "windowed"; in "by_region" Chest CT takes the "Chest CT" window (NIfTI too), Abdomen CT the
# DICOM's own (NIfTI has none: percentiles), and an MR's header window is never used.
EXPECTED_WINDOWS = {
    ("windowed", path): COLLECTION_WINDOW
    for path in ("ct2d.dcm", "chest_series", "abdomen_series", "chest.nii.gz", "abdomen.nii.gz", "mr_series")
} | {
    ("by_region", "ct2d.dcm"): CHEST_CT_WINDOW,
    ("by_region", "chest_series"): CHEST_CT_WINDOW,
    ("by_region", "chest.nii.gz"): CHEST_CT_WINDOW,
    ("by_region", "abdomen_series"): OWN_WINDOW,
    ("by_region", "abdomen.nii.gz"): None,
    ("by_region", "mr_series"): None,
}
REGION_MODALITY = {"ct2d.dcm": ("Chest", "CT"), "chest_series": ("Chest", "CT"), "abdomen_series": ("Abdomen", "CT"),
                   "chest.nii.gz": ("Chest", "CT"), "abdomen.nii.gz": ("Abdomen", "CT"), "mr_series": ("Brain", "MRI")}


def test_curate_writes_the_contract_and_reading_it_back_reproduces_the_window_rule(windowed_curation):
    params, tmp = windowed_curation
    curated_dir = params.resolve(params.paths.curated)
    assert (curated_dir / PREPROCESSING_FILE).is_file()
    contract = Preprocessing.read(curated_dir)
    # The sizes are the params' (by hand), and the curated copy carries no model's pixel normalisation.
    assert contract.image_size == params.curate.image_size and contract.min_pixels == params.curate.min_pixels
    by_plane = {plane: (shape.slices, shape.size) for plane, shape in params.curate.volume.items()}
    assert dict(contract.volume_shapes) == by_plane
    assert contract.pixels is None
    assert dict(contract.collection_windows) == {"windowed": COLLECTION_WINDOW, "by_region": None}

    for (collection, path), expected in EXPECTED_WINDOWS.items():
        image = load_file(tmp / collection / path)
        region, modality = REGION_MODALITY[path]
        if image.dicom_modality is not None:
            assert image.window == OWN_WINDOW, path  # the fixture really carries its own window
        chosen = contract.window(image, collection=collection, region=region, modality=modality)
        assert chosen == expected, (collection, path)

    # Served without a collection: every collection's "{region} {modality}" windows, then the file's own (CT only).
    chest, chest_nifti = load_file(tmp / "by_region/chest_series"), load_file(tmp / "by_region/chest.nii.gz")
    abdomen, abdomen_nifti = load_file(tmp / "by_region/abdomen_series"), load_file(tmp / "by_region/abdomen.nii.gz")
    assert contract.window(chest, region="Chest", modality="CT") == CHEST_CT_WINDOW
    assert contract.window(chest_nifti, region="Chest", modality="CT") == CHEST_CT_WINDOW
    assert contract.window(abdomen, region="Abdomen", modality="CT") == OWN_WINDOW
    assert contract.window(abdomen_nifti, region="Abdomen", modality="CT") is None
    assert contract.window(load_file(tmp / "by_region" / "mr_series"), region="Brain", modality="MRI") is None


def test_curated_arrays_follow_the_window_the_rule_chose(windowed_curation):
    """The curated pixels and display ranges are those of the expected window, computed by hand."""
    params, tmp = windowed_curation
    dataset = CuratedDataset(params.resolve(params.paths.curated))
    rows = {(row.collection, row.source_path.split("#")[0]): index  # "#series-0": the DICOM series' part
            for index, row in enumerate(dataset.manifest.itertuples())}
    assert set(rows) == set(EXPECTED_WINDOWS)
    for (collection, path), window in EXPECTED_WINDOWS.items():
        pixels = load_file(tmp / collection / path).pixels.astype(np.float64)
        row = dataset.manifest.iloc[rows[(collection, path)]]
        if row["kind"] == "2d":  # windowed to [0, 1] then 8 bits; same size, so no resampling
            low, high = _bounds(window)
            expected = np.rint(np.clip((pixels - low) / (high - low), 0, 1) * 255)
            np.testing.assert_allclose(dataset.array(rows[(collection, path)]).astype(np.float64), expected, atol=1)
            continue
        if window is None:  # no window: the volume's 0.5/99.5 percentiles, nothing clipped
            volume = pixels
            low, high = np.percentile(pixels, (0.5, 99.5))
        else:
            low, high = _bounds(window)
            volume = np.clip(pixels, low, high)
        mean, std = volume.mean(), volume.std()
        assert row["display_low"] == pytest.approx((low - mean) / std, rel=1e-4, abs=1e-4), (collection, path)
        assert row["display_high"] == pytest.approx((high - mean) / std, rel=1e-4, abs=1e-4), (collection, path)


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


def test_a_real_collection_without_a_salt_in_the_environment_stops_curation(messy_collection, monkeypatch, tmp_path):
    params, _ = messy_collection
    out = tmp_path / "curated"
    monkeypatch.delenv(params.curate.salt_env, raising=False)
    with pytest.raises(SaltMissing, match=f"{params.curate.salt_env} is not set, and .* not the pipeline's phantom "
                                          "data: patient ids would be hashed with the salt committed in params"):
        curate(params, out_dir=out, progress=False)
    assert not out.exists() and not out.with_name("curated.partial").exists()  # stopped before writing anything


def test_phantom_data_alone_falls_back_to_the_committed_salt(tmp_path, monkeypatch):
    params = tiny_params(tmp_path)
    raw = params.resolve(params.paths.raw)
    monkeypatch.delenv(params.curate.salt_env, raising=False)
    with pytest.raises(SaltMissing):  # phantom paths, but no phantoms.json: not the generator's output
        phi_salt(params)
    raw.mkdir(parents=True)
    (raw / "phantoms.json").write_text("{}")
    assert phi_salt(params) == params.curate.salt
    outside = params.with_values({"phantoms.enabled": False})
    with pytest.raises(SaltMissing):
        phi_salt(outside)
    monkeypatch.setenv(params.curate.salt_env, "secret")
    assert phi_salt(params) == phi_salt(outside) == "secret"


def test_curating_twice_writes_byte_identical_files(messy_collection, tmp_path):
    """Every file of the curated folder (its DVC hash is what later stages depend on) is the same run to run:
    no timing or other run-dependent value in it."""
    params, _ = messy_collection

    def digests(folder: Path) -> dict[str, str]:
        return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in sorted(folder.rglob("*")) if path.is_file()}

    first, second = tmp_path / "first", tmp_path / "second"
    summary = curate(params, out_dir=first, progress=False)
    curate(params, out_dir=second, progress=False)
    assert summary.seconds > 0 and "summary.json" in digests(first)
    assert digests(first) == digests(second)


def test_the_curation_bar_has_a_total_and_reaches_it(messy_collection, tmp_path, monkeypatch):
    from rich.progress import Progress

    import radclip.data.curate as curation

    params, _ = messy_collection
    bars: list[Progress] = []

    def recording_bar(enabled: bool) -> Progress:
        bars.append(Progress(disable=True))
        return bars[-1]

    monkeypatch.setattr(curation, "progress_bar", recording_bar)
    summary = curate(params, out_dir=tmp_path / "curated", progress=True)
    [task] = bars[0].tasks
    quarantine = pd.read_parquet(tmp_path / "curated" / "quarantine.parquet")
    scan_rejects = int((quarantine["stage"] == "scan").sum())  # rejected while scanning: never loaded
    assert task.total is not None and task.total > 0
    assert task.total == summary.items - scan_rejects  # the items that are loaded, counted before loading
    assert task.completed == task.total
