"""The deterministic DICOM writers (radclip.data.dicom_write): bytes, UIDs, PHI, file names.

Every fixture is written into tmp_path with the project's own writers, nibabel,
Pillow or numpy, so the tests need no data files and no network.
"""

from __future__ import annotations

import numpy as np
import pydicom
from helpers import PATIENT, ct_volume

from radclip.data.dicom_write import PHI_TAGS, write_dicom_image, write_dicom_multiframe, write_dicom_series

# --------------------------------------------------------------------------- DICOM writer


def test_dicom_writer_is_byte_identical_across_runs(tmp_path):
    image = ct_volume((1, 16, 16))[0] + 1024
    volume = ct_volume()
    for run in ("a", "b"):
        write_dicom_image(tmp_path / run / "image.dcm", image, uid_seed="img", patient=PATIENT)
        write_dicom_series(tmp_path / run / "series", volume, uid_seed="ser", patient=PATIENT)
        write_dicom_multiframe(tmp_path / run / "multi.dcm", volume + 1024, uid_seed="mf", patient=PATIENT)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 2 + volume.shape[0]
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_dicom_writer_uids_depend_on_seed_and_phi_is_written(tmp_path):
    image = np.zeros((8, 8))
    first = pydicom.dcmread(write_dicom_image(tmp_path / "1.dcm", image, uid_seed="one", patient=PATIENT))
    second = pydicom.dcmread(write_dicom_image(tmp_path / "2.dcm", image, uid_seed="two", patient={}))
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.PatientID == "PID-123" and first.InstitutionName == "General Hospital"
    assert all(keyword in second for keyword in PHI_TAGS)  # neutral defaults fill missing keys
    assert first.SOPClassUID.name == "Digital X-Ray Image Storage - For Presentation"


def test_dicom_series_file_names_do_not_sort_in_slice_order(tmp_path):
    paths = write_dicom_series(tmp_path, ct_volume(), uid_seed="names", patient=PATIENT)
    assert sorted(paths) != paths
    assert any(p.suffix == "" for p in paths)  # scanner-style names without extension
