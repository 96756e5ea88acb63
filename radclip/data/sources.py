"""Scanning raw collections: index files and folder listings in, :class:`SourceItem` out.

``scan_collection(collection, root)`` reads a collection's index file or lists its
folders and yields one :class:`SourceItem` per image, volume or DICOM series. It
never opens pixel data, and it streams: CSV rows are read one at a time, so a
220k-row CheXpert CSV or a 1.2M-row user index costs little memory. Relative
collection paths are resolved against ``root`` (the project root); absolute
paths are used as they are.

Two kinds of problems, two behaviours:

* The collection itself is unusable (folder, index file or table missing, a
  configured column absent from the header, an Excel table without its reader
  package): :class:`InputError` naming the path, raised when ``scan_collection``
  is called (before any item is yielded) so the stage fails early.
* One item is unusable (unknown label, file listed but missing, unsupported
  file type, empty region/modality, a CheXpert row left with no usable label):
  the item is still yielded, with ``error`` set to the reason, so curation
  quarantines it and reports it. Nothing is dropped silently; the exceptions are
  hidden files (names starting with ``.``, e.g. ``.DS_Store``), which are OS
  metadata, and CheXpert lateral views under ``frontal_only`` and rows outside a
  ``sample_per_class`` subset (both counted in the log, see below).

How each item is loaded follows from its path, decided by the one dispatcher that
serving uses too (:func:`radclip.data.loaders.loader_for`): images (PNG, JPEG, BMP,
TIFF) -> ``image``; ``.dcm``, a folder (a DICOM series) or an extension-less file that
starts with the DICOM preamble -> ``dicom``; ``.nii``/``.nii.gz`` -> ``nifti``;
``.npz`` -> ``npz``; ``.npy`` -> ``npy``; anything else -> an error item "unsupported
file type". Suffixes are matched case-insensitively.

Layouts, as you prepare real data (``<path>`` is the collection's ``path``)
============================================================================

``format: csv`` -- any files listed in a CSV::

    <path>/<index>                  (default index.csv, UTF-8, header row)
    <path>/images/a.png             (paths in the CSV are relative to <path>,
    <path>/series/ct_042/*.dcm       or absolute; a folder = one DICOM series)

  Columns: ``path_column`` (required), ``label_column`` (required; several labels
  separated by ``label_separator``; a blank cell = normal), ``patient_column``
  (optional, set it to null if the CSV has none; a blank cell = take the
  patient id from the DICOM tags), ``region_column``/``modality_column``
  (optional; a blank cell falls back to the collection's ``region``/``modality``).
  ``labels`` maps raw values to condition names (null = normal) and a value
  not in it is an error item "unknown label 'x'"; with ``labels`` empty the raw
  values are the condition names. Matching is exact (case-sensitive).

``format: image_folders`` -- one folder per class (Crystal Clean brain tumour MRI)::

    <path>/Training/glioma/Tr-gl_0010.jpg
    <path>/Testing/notumor/Te-no_0011.jpg

  One level per entry of ``subsets`` (class folders sit directly in ``<path>``
  when ``subsets`` is empty). ``labels`` maps class folder names to conditions
  (null = normal); the images of a folder not in ``labels`` are error items
  "unknown label"; with ``labels`` empty the folder names are the conditions.
  A file directly in a subset folder (not in a class folder) is an error item.
  This dataset has no patient ids: each image's file stem is its patient id,
  so the patient-level split is an image-level split here.

``format: chexpert`` -- the CheXpert CSV as distributed::

    <path>/<root>/CheXpert-v1.0-small/valid.csv
    <path>/<root>/CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg

  ``index`` is relative to ``<path>``; the ``Path`` column is relative to
  ``<path>/<root>`` and the patient id is its ``patientNNNNN`` component. Only
  the ``observations`` columns are used: 1.0 positive, 0.0 or blank negative
  (blank = not mentioned, the CheXpert convention), -1.0 uncertain, mapped by
  ``uncertainty``: ``ones`` -> positive, ``zeros`` -> negative, ``ignore`` ->
  unknown. Multi-label (default): conditions = all positives, none positive =
  normal; a row with no positive but an unknown observation is an error item
  (its normal state is unknown). ``single_label: true``: exactly one positive
  is required (else an error item "expected exactly one positive among ..."),
  and under ``ignore`` no other observation may be unknown. With
  ``frontal_only`` lateral views (``Frontal/Lateral`` = Lateral, or a file name
  containing "lateral" when that column is absent) are skipped by design, not
  quarantined: their number is logged at INFO level by the
  ``radclip.data.sources`` logger when the scan completes (``extra`` carries
  ``collection`` and ``skipped_lateral``). ``sample_per_class: N`` (needs
  ``single_label``) keeps a class-balanced subset, e.g. RadCLIP's 5 x 1,000 from
  ``train.csv``: per observation, the N eligible rows (frontal under
  ``frontal_only``, readable values, exactly one positive, no ignored
  uncertainty) that rank first by a SHA-256 of ``(sample_seed, Path)``, so the
  subset does not depend on the CSV's row order; the other rows are skipped by
  design and counted in the log (``extra`` ``skipped_unsampled``), except
  unreadable ones (a bad value, a blank ``Path``), which stay error items. A
  class with fewer than N eligible rows raises :class:`InputError`.

``format: ixi`` -- IXI T1 volumes plus the demographics table::

    <path>/IXI-T1/IXI002-Guys-0828-T1.nii.gz      (``images``)
    <path>/IXI.xls                                (``table``: .csv, .xls or .xlsx)

  The integer id in the file name (IXI002 -> 2) is joined to ``id_column``; the
  label comes from ``label_column`` through ``labels`` (keys are strings; table
  values 1, 1.0 and "1" all match the key "1"). An image with no table row, a
  blank label or conflicting duplicate rows is an error item. ``.xls`` needs the
  ``xlrd`` package and ``.xlsx`` needs ``openpyxl`` (or save the table as CSV).
  The patient id is the file's ``IXI<id>`` prefix as written (e.g. "IXI002").

``format: covid_ct_md`` -- COVID-CT-MD, one DICOM folder per patient::

    <path>/Index.csv                              (``index``)
    <path>/COVID-19 Cases/P001/IM0001.dcm         (``class_folders[diagnosis]``)
    <path>/CAP Cases/cap001/...
    <path>/Normal Cases/normal001/...

  One item (a 3D DICOM series) per index row: ``folder_column`` names the
  folder, ``label_column`` the diagnosis (mapped through ``labels``). A listed
  folder that is missing, or a diagnosis without a class folder, is an error
  item. The patient id is the folder name.

``format: chestxray14`` -- NIH ChestX-ray14 as distributed::

    <path>/Data_Entry_2017.csv                    (``index``: Image Index, Finding Labels, Patient ID, ...)
    <path>/BBox_List_2017.csv                     (``boxes``, optional: Image Index, Finding Label, x, y, w, h)
    <path>/images_001/images/00000001_000.png     (``images``: the folders searched, in order)

  One item per index row. ``Finding Labels`` are joined by "|" and mapped through
  ``labels`` ("No Finding" = normal; the NIH names by default, e.g. "Effusion" ->
  "Pleural Effusion"). The box list's coordinate columns are read by position: its
  header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` as distributed. Boxes
  (original-image pixels) travel with their item and curation writes them, mapped to
  curated pixels, to ``lesion_boxes.csv``. A row whose image is in none of the folders,
  or a box whose label is not among its image's findings, is an error item; a box
  whose image the index lacks, or a malformed box row, fails the scan naming the line.
  ``boxed_only`` keeps only the images the box list covers (the others are skipped by
  design and counted in the log, ``extra`` ``skipped_unboxed``).

``format: cxr_lt`` -- CXR-LT's long-tailed multi-label CSVs over MIMIC-CXR-JPG::

    <path>/train.csv                              (``index``; development.csv, test.csv alike)
    <path>/<images>/files/p10/p10000032/s50414267/02aa804e-....jpg

  Columns ``dicom_id``, ``subject_id`` (the patient id), ``study_id``, the image path
  (``path_column``, relative to ``<path>/<images>``; null: MIMIC-CXR-JPG's path built from the
  three ids) and one 0/1 column per class: ``classes``, or by default every other column but
  ``view_column``, ``normal_column`` and ``ignore_columns``. ``labels`` renames classes (null =
  normal). 1 or 1.0 is positive, 0, 0.0 or blank negative; any other value is an error item, as
  is a row whose ``normal_column`` is 1 beside a positive class. With ``frontal_only`` rows whose
  view is not AP or PA are skipped by design and counted in the log (``extra``
  ``skipped_lateral``). A configured class missing from the header raises :class:`InputError`.

``format: medmnist`` -- ``<path>`` is the MedMNIST ``.npz`` itself (e.g.
  ``pneumoniamnist.npz`` with ``train_images``/``train_labels``...). One item per
  image of each of ``splits``; ``class_names[i]`` names class index i (null =
  normal); ``multi_label`` reads the label vector as positives. The item's
  ``member`` is e.g. "train:12", its ``rel_path`` the file name and its patient
  id "<file stem>:train:12" (MedMNIST has no patient ids: one image, one patient).

Every item needs a region and a modality for its caption (from the collection
or its columns); an item without them is an error item.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import logging
import math
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from radclip.config import (
    ChestXray14Collection,
    ChexpertCollection,
    Collection,
    CovidCtMdCollection,
    CsvCollection,
    CxrLtCollection,
    FolderCollection,
    IxiCollection,
    MedmnistCollection,
)
from radclip.core.records import InputError, Kind, SourceItem
from radclip.data.loaders import loader_for

log = logging.getLogger(__name__)

NORMAL_LABEL = "Normal"  # the evaluation label of a study with no condition
LABEL_JOINER = "|"  # joins the conditions of a multi-label item into one label

# SourceItem.loader cannot be None; an item whose type is unsupported is an error
# item (never loaded), so it carries this placeholder.
UNKNOWN_LOADER = "image"

IXI_NAME = re.compile(r"^(IXI(\d+))-([A-Za-z]+)-(\d+)-([A-Za-z0-9]+)\.nii(?:\.gz)?$", re.IGNORECASE)
CHEXPERT_PATIENT = re.compile(r"^patient\d+$")


def scan_collection(collection: Collection, root: str | Path) -> Iterator[SourceItem]:
    """Items of one collection, lazily; raises :class:`InputError` at once if the
    collection folder, index or table is missing or lacks a configured column."""
    base = (Path(root) / collection.path).absolute()  # an absolute collection.path wins
    scanners: dict[type, Callable[[Any, Path], Iterator[SourceItem]]] = {
        CsvCollection: _scan_csv,
        FolderCollection: _scan_image_folders,
        ChexpertCollection: _scan_chexpert,
        IxiCollection: _scan_ixi,
        CovidCtMdCollection: _scan_covid_ct_md,
        ChestXray14Collection: _scan_chestxray14,
        CxrLtCollection: _scan_cxr_lt,
        MedmnistCollection: _scan_medmnist,
    }
    scanner = scanners.get(type(collection))
    if scanner is None:
        raise TypeError(f"no scanner for collection format {getattr(collection, 'format', type(collection))!r}")
    return scanner(collection, base)


# --------------------------------------------------------------------------- shared helpers


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(str(path), f"{what} not found")
    if not path.is_dir():
        raise InputError(str(path), f"{what} is not a folder")


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(str(path), f"{what} not found")
    if not path.is_file():
        raise InputError(str(path), f"{what} is not a file")


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _stem(name: str) -> str:
    """File name without its extension (both parts of ``.nii.gz``)."""
    lower = name.lower()
    for suffix in (".nii.gz", ".tar.gz"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _sorted_entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not _is_hidden(e.name)), key=lambda e: e.name)


def _map_labels(raw_values: Iterable[str], labels: Mapping[str, str | None], where: str) -> tuple[list[str], list[str]]:
    """``(conditions, errors)``: raw values through ``labels`` (empty: raw values are conditions)."""
    conditions: list[str] = []
    errors: list[str] = []
    for raw in raw_values:
        if not labels:
            conditions.append(raw)
        elif raw not in labels:
            known = ", ".join(repr(k) for k in list(labels)[:12])
            errors.append(f"unknown label {raw!r} in {where} (labels: {known})")
        else:
            condition = labels[raw]
            if condition is None:
                continue  # maps to normal
            if not condition.strip():
                errors.append(f"label {raw!r} maps to an empty condition name (use null for normal)")
            else:
                conditions.append(condition.strip())
    return conditions, errors


def _label_for(conditions: Sequence[str]) -> str:
    return LABEL_JOINER.join(conditions) if conditions else NORMAL_LABEL


def _item(
    collection: Any,
    *,
    path: Path | str,
    rel_path: str,
    loader: str | None,
    region: str,
    modality: str,
    conditions: Sequence[str] = (),
    errors: Sequence[str] = (),
    patient_id: str | None = None,
    member: str | None = None,
    expect_kind: Kind | None = None,
    boxes: Sequence[tuple[str, float, float, float, float]] = (),
) -> SourceItem:
    region, modality = region.strip(), modality.strip()
    errors = list(errors)
    missing = [part for part, value in (("region", region), ("modality", modality)) if not value]
    if missing:
        errors.append(
            f"empty caption part: no {' or '.join(missing)} (set it on the collection or in its column)"
        )
    unique = tuple(dict.fromkeys(conditions))  # keep order, drop repeats ("Edema|Edema")
    return SourceItem(
        collection=collection.name,
        path=str(path),
        rel_path=rel_path,
        loader=loader or UNKNOWN_LOADER,  # type: ignore[arg-type]
        region=region,
        modality=modality,
        conditions=unique,
        label=_label_for(unique),
        patient_id=patient_id,
        member=member,
        expect_kind=expect_kind,
        error="; ".join(errors) or None,
        boxes=tuple(boxes),
    )


# --------------------------------------------------------------------------- CSV reading


def _open_text(path: Path):
    return open(path, newline="", encoding="utf-8-sig")  # -sig: Excel writes a BOM


def _read_header(index: Path, required: Sequence[str]) -> list[str]:
    """The stripped header row; InputError if it is missing any required column."""
    try:
        with _open_text(index) as handle:
            header = next(csv.reader(handle), None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(str(index), f"cannot read the header row: {exc}") from None
    if not header:
        raise InputError(str(index), "index file is empty (no header row)")
    header = [name.strip() for name in header]
    missing = [name for name in dict.fromkeys(required) if name not in header]
    if missing:
        raise InputError(str(index), f"missing column(s) {missing}; the header has {header}")
    return header


def _rows(index: Path, header: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, {column: stripped cell})`` per data row, streamed."""
    with _open_text(index) as handle:
        reader = csv.reader(handle)
        try:
            next(reader, None)  # header, already validated
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue  # a blank line is not a row
                row = {name: (cells[i].strip() if i < len(cells) else "") for i, name in enumerate(header)}
                yield reader.line_num, row
        except (UnicodeDecodeError, csv.Error) as exc:
            raise InputError(str(index), f"cannot read line {reader.line_num + 1}: {exc}") from None


def _outside_rel(full: Path) -> str:
    """The rel_path of a file outside the collection folder: its name under a digest of its folder, so that
    folder names above the collection (often a patient's or site's) never reach the manifest."""
    digest = hashlib.sha256(os.path.normpath(full.parent).encode()).hexdigest()[:12]
    return f"outside-{digest}/{full.name}"


def _index_rel(base: Path, cell: str) -> tuple[Path, str]:
    """Absolute path and POSIX rel_path of a path cell relative to ``base`` (or absolute)."""
    if os.path.isabs(cell):
        full = Path(cell)
        try:
            return full, full.relative_to(base).as_posix()
        except ValueError:
            return full, _outside_rel(full)
    rel = posixpath.normpath(cell.replace(os.sep, "/"))
    if rel == ".." or rel.startswith("../"):
        return base / rel, _outside_rel(Path(os.path.normpath(base / rel)))
    return base / rel, rel


def _locate(base: Path, cell: str, where: str, blank: str) -> tuple[Path, str, str | None, str | None]:
    """``(path, rel_path, loader, problem)`` of an index's path cell relative to ``base``; a blank cell has the
    problem ``blank`` and the rel_path ``where`` (the index line), so the error item says which row it was."""
    if not cell:
        return base, where, None, blank
    full, rel = _index_rel(base, cell)
    loader, problem = loader_for(full)
    return full, rel, loader, problem


# --------------------------------------------------------------------------- csv


def _scan_csv(collection: CsvCollection, base: Path) -> Iterator[SourceItem]:
    _require_dir(base, "collection folder")
    index = base / collection.index
    _require_file(index, "index file")
    optional = [collection.patient_column, collection.region_column, collection.modality_column]
    required = [collection.path_column, collection.label_column, *(c for c in optional if c)]
    header = _read_header(index, required)
    return _csv_items(collection, base, index, header)


def _csv_items(collection: CsvCollection, base: Path, index: Path, header: list[str]) -> Iterator[SourceItem]:
    index_name = Path(collection.index).as_posix()
    for line, row in _rows(index, header):
        # blank cells fall back to the collection's values (patient: None = from DICOM tags)
        region = (row[collection.region_column] if collection.region_column else "") or collection.region
        modality = (row[collection.modality_column] if collection.modality_column else "") or collection.modality
        patient_id = (row[collection.patient_column] if collection.patient_column else "") or None
        raw_labels = [v.strip() for v in row[collection.label_column].split(collection.label_separator) if v.strip()]
        conditions, errors = _map_labels(raw_labels, collection.labels, f"column {collection.label_column!r}")
        full, rel, loader, problem = _locate(base, row[collection.path_column], f"{index_name} line {line}",
                                             f"blank {collection.path_column!r} cell")
        if problem:
            errors.insert(0, problem)
        yield _item(
            collection,
            path=full,
            rel_path=rel,
            loader=loader,
            region=region,
            modality=modality,
            conditions=conditions,
            errors=errors,
            patient_id=patient_id,
            expect_kind=collection.expect_kind,
        )


# --------------------------------------------------------------------------- image_folders


def _scan_image_folders(collection: FolderCollection, base: Path) -> Iterator[SourceItem]:
    _require_dir(base, "collection folder")
    subsets = collection.subsets or [""]
    for subset in subsets:
        if subset:
            _require_dir(base / subset, f"subset folder {subset!r}")
    return _folder_items(collection, base, subsets)


def _folder_items(collection: FolderCollection, base: Path, subsets: list[str]) -> Iterator[SourceItem]:
    for subset in subsets:
        subset_dir = base / subset if subset else base
        for class_entry in _sorted_entries(subset_dir):
            class_rel = posixpath.join(subset, class_entry.name) if subset else class_entry.name
            if not class_entry.is_dir():
                loader, problem = loader_for(Path(class_entry.path), is_dir=False)
                errors = [problem] if problem else []
                errors.append("not inside a class folder")
                yield _item(
                    collection, path=class_entry.path, rel_path=class_rel, loader=loader,
                    region=collection.region, modality=collection.modality, errors=errors,
                    patient_id=_stem(class_entry.name),
                )
                continue
            conditions, label_errors = _map_labels([class_entry.name], collection.labels, f"class folder {class_rel!r}")
            entries = _sorted_entries(Path(class_entry.path))
            if not entries:
                log.warning("%s: class folder %s is empty", collection.name, class_rel)
            for entry in entries:
                loader, problem = loader_for(Path(entry.path), is_dir=entry.is_dir())
                errors = ([problem] if problem else []) + label_errors
                yield _item(
                    collection,
                    path=entry.path,
                    rel_path=posixpath.join(class_rel, entry.name),
                    loader=loader,
                    region=collection.region,
                    modality=collection.modality,
                    conditions=conditions,
                    errors=errors,
                    patient_id=_stem(entry.name),  # no patient ids in this layout: one image, one patient
                    expect_kind="2d" if loader == "image" else None,
                )


# --------------------------------------------------------------------------- chexpert


def _scan_chexpert(collection: ChexpertCollection, base: Path) -> Iterator[SourceItem]:
    _require_dir(base, "collection folder")
    index = base / collection.index
    _require_file(index, "CheXpert CSV")
    if not collection.observations:
        raise InputError(str(index), "no observations configured: list the CheXpert columns to use")
    header = _read_header(index, ["Path", *collection.observations])
    selected = _chexpert_sample(collection, index, header) if collection.sample_per_class else None
    return _chexpert_items(collection, base, index, header, selected)


def _chexpert_state(raw: str, policy: str) -> bool | None | str:
    """True positive, False negative, None unknown (ignored uncertainty), str: a bad value."""
    if raw == "":
        return False  # not mentioned in the report: negative by CheXpert convention
    try:
        value = float(raw)
    except ValueError:
        return f"unexpected value {raw!r} (expected 1.0, 0.0, -1.0 or blank)"
    if value == 1.0:
        return True
    if value == 0.0:
        return False
    if value == -1.0:
        return {"ones": True, "zeros": False, "ignore": None}[policy]
    return f"unexpected value {raw!r} (expected 1.0, 0.0, -1.0 or blank)"


def _is_lateral(row: dict[str, str], csv_path: str) -> bool:
    view = row.get("Frontal/Lateral", "")
    if view:
        return view.lower() == "lateral"
    return "lateral" in posixpath.basename(csv_path).lower()


def _chexpert_labels(collection: ChexpertCollection, row: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """``(positives, unknown, errors)`` of one row's ``observations`` under the uncertainty policy."""
    positives: list[str] = []
    unknown: list[str] = []
    errors: list[str] = []
    for observation in collection.observations:
        state = _chexpert_state(row[observation], collection.uncertainty)
        if isinstance(state, str):
            errors.append(f"{observation}: {state}")
        elif state is None:
            unknown.append(observation)
        elif state:
            positives.append(observation)
    return positives, unknown, errors


def _sample_rank(seed: int, csv_path: str) -> int:
    """A row's place in the sampling order: stable across runs, machines and CSV row order."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{csv_path}".encode()).digest()[:8], "big")


def _chexpert_sample(collection: ChexpertCollection, index: Path, header: list[str]) -> set[int]:
    """CSV line numbers of the class-balanced subset: per observation, the ``sample_per_class``
    eligible rows (frontal under ``frontal_only``, readable, exactly one positive, no ignored
    uncertainty) that rank first by :func:`_sample_rank`. InputError if a class has fewer."""
    wanted = collection.sample_per_class or 0
    heaps: dict[str, list[tuple[int, int]]] = {o: [] for o in collection.observations}  # negated: max-heaps
    eligible = dict.fromkeys(collection.observations, 0)
    for line, row in _rows(index, header):
        csv_path = row["Path"]
        if not csv_path or (collection.frontal_only and _is_lateral(row, csv_path)):
            continue
        positives, unknown, errors = _chexpert_labels(collection, row)
        if errors or unknown or len(positives) != 1:
            continue
        (observation,) = positives
        eligible[observation] += 1
        # keep the `wanted` smallest (rank, line): negated, heap[0] is the largest kept
        entry = (-_sample_rank(collection.sample_seed, csv_path), -line)
        heap = heaps[observation]
        if len(heap) < wanted:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:
            heapq.heapreplace(heap, entry)
    short = {o: n for o, n in eligible.items() if n < wanted}
    if short:
        raise InputError(
            str(index),
            f"sample_per_class {wanted}: too few eligible rows for {short} (eligible: frontal"
            f"{'' if collection.frontal_only else ' or lateral'}, exactly one positive among "
            f"{list(collection.observations)} under uncertainty {collection.uncertainty!r}); "
            f"lower sample_per_class or use a larger index",
        )
    return {-line for heap in heaps.values() for _, line in heap}


def _chexpert_items(
    collection: ChexpertCollection, base: Path, index: Path, header: list[str], selected: set[int] | None = None
) -> Iterator[SourceItem]:
    observations = list(collection.observations)
    skipped_lateral = 0
    skipped_unsampled = 0
    for line, row in _rows(index, header):
        csv_path = row["Path"]
        if collection.frontal_only and _is_lateral(row, csv_path):
            skipped_lateral += 1  # filtered by design (frontal_only), counted in the log
            continue
        positives, unknown, errors = _chexpert_labels(collection, row)
        if selected is not None and line not in selected and csv_path and not errors:
            skipped_unsampled += 1  # outside the sample by design (sample_per_class), counted in the log
            continue  # unreadable rows (bad value, blank Path) still become error items below
        if not errors:
            if collection.single_label:
                if len(positives) != 1:
                    found = f": {', '.join(positives)}" if positives else ""
                    errors.append(f"expected exactly one positive among {observations}, found {len(positives)}{found}")
                elif unknown:
                    errors.append(
                        f"uncertain {unknown} ignored: cannot tell whether {positives[0]} is the only positive"
                    )
            elif not positives and unknown:
                errors.append(f"no positive observation and uncertain {unknown} ignored: normal state unknown")
        if not csv_path:
            errors.insert(0, "blank 'Path' cell")
            full, rel, loader, patient_id = base, f"{Path(collection.index).as_posix()} line {line}", None, None
        else:
            rel = posixpath.normpath(posixpath.join(collection.root, csv_path))
            full = base / rel
            loader, problem = loader_for(full)
            if problem:
                errors.insert(0, problem)
            patient_id = next((p for p in csv_path.split("/") if CHEXPERT_PATIENT.match(p)), None)
            if patient_id is None:
                errors.append("no patientNNNNN folder in the path: cannot tell the patient")
        yield _item(
            collection,
            path=full,
            rel_path=rel,
            loader=loader,
            region=collection.region,
            modality=collection.modality,
            conditions=positives,
            errors=errors,
            patient_id=patient_id,
            expect_kind="2d",
        )
    if skipped_lateral:
        log.info(
            "%s: skipped %d lateral view(s) (frontal_only)",
            collection.name,
            skipped_lateral,
            extra={"collection": collection.name, "skipped_lateral": skipped_lateral},
        )
    if skipped_unsampled:
        log.info(
            "%s: kept %d sampled row(s), skipped %d other(s) (sample_per_class)",
            collection.name,
            len(selected or ()),
            skipped_unsampled,
            extra={"collection": collection.name, "skipped_unsampled": skipped_unsampled},
        )


# --------------------------------------------------------------------------- ixi


def normal_key(value: Any) -> str | None:
    """A table cell as a label key: 1, 1.0, "1" and " 1.0 " all give "1"; blank/NaN give None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)) or hasattr(value, "dtype"):  # numpy scalars too
        number = float(value)
        if math.isnan(number):
            return None
        return str(int(number)) if number.is_integer() else repr(number)
    text = str(value).strip()
    if not text or text.lower() == "nan":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() and math.isfinite(number) else text


def _read_table(path: Path):
    import pandas as pd  # only IXI needs pandas; keep the import off the common path

    suffix = path.suffix.lower()
    engines = {".xls": "xlrd", ".xlsx": "openpyxl"}
    try:
        if suffix == ".csv":
            return pd.read_csv(path, encoding="utf-8-sig")
        if suffix in engines:
            return pd.read_excel(path)
    except ImportError:
        package = engines.get(suffix, "?")
        raise InputError(
            str(path),
            f"reading a {suffix} table needs the '{package}' package (pip install {package}), "
            f"or save it as .csv and point 'table' at that",
        ) from None
    except Exception as exc:  # pandas raises many types for a malformed table
        raise InputError(str(path), f"cannot read the table: {exc}") from None
    raise InputError(str(path), f"unsupported table type {suffix!r} (use .csv, .xls or .xlsx)")


def _scan_ixi(collection: IxiCollection, base: Path) -> Iterator[SourceItem]:
    _require_dir(base, "collection folder")
    images = base / collection.images
    _require_dir(images, "images folder")
    table_path = base / collection.table
    _require_file(table_path, "demographics table")
    table = _read_table(table_path)
    columns = [str(c).strip() for c in table.columns]
    table.columns = columns
    missing = [c for c in (collection.id_column, collection.label_column) if c not in columns]
    if missing:
        raise InputError(str(table_path), f"missing column(s) {missing}; the table has {columns}")
    # id -> the distinct non-blank label keys of its rows (IXI.xls repeats some ids)
    labels_by_id: dict[int, set[str]] = {}
    for raw_id, raw_label in zip(table[collection.id_column], table[collection.label_column]):
        key = normal_key(raw_id)
        digits = re.search(r"\d+", key) if key else None
        if digits is None:
            continue  # a table row without an id names no image
        found = labels_by_id.setdefault(int(digits.group()), set())
        label = normal_key(raw_label)
        if label is not None:
            found.add(label)
    return _ixi_items(collection, base, images, labels_by_id)


def _ixi_items(
    collection: IxiCollection, base: Path, images: Path, labels_by_id: dict[int, set[str]]
) -> Iterator[SourceItem]:
    labels = {normal_key(k) or k: v for k, v in collection.labels.items()}
    where = f"{collection.label_column!r}"
    for entry in _sorted_entries(images):
        rel = posixpath.join(Path(collection.images).as_posix(), entry.name)
        loader, problem = loader_for(Path(entry.path), is_dir=entry.is_dir())
        errors = [problem] if problem else []
        conditions: list[str] = []
        match = IXI_NAME.match(entry.name)
        patient_id = match.group(1) if match else _stem(entry.name)
        if not problem and (loader != "nifti" or match is None):
            errors.append("name does not match IXI<id>-<site>-<n>-<contrast>.nii.gz")
        if match:
            ixi_id = int(match.group(2))
            found = labels_by_id.get(ixi_id)
            if found is None:
                errors.append(f"no row with {collection.id_column} = {ixi_id} in {collection.table}")
            elif not found:
                errors.append(f"blank {where} for {collection.id_column} = {ixi_id} in {collection.table}")
            elif len(found) > 1:
                errors.append(f"conflicting {where} values {sorted(found)} for {collection.id_column} = {ixi_id}")
            else:
                conditions, label_errors = _map_labels(found, labels, where)
                errors += label_errors
        yield _item(
            collection,
            path=entry.path,
            rel_path=rel,
            loader=loader,
            region=collection.region,
            modality=collection.modality,
            conditions=conditions,
            errors=errors,
            patient_id=patient_id,
            expect_kind="3d",
        )


# --------------------------------------------------------------------------- covid_ct_md


def _scan_covid_ct_md(collection: CovidCtMdCollection, base: Path) -> Iterator[SourceItem]:
    _require_dir(base, "collection folder")
    index = base / collection.index
    _require_file(index, "index file")
    header = _read_header(index, [collection.folder_column, collection.label_column])
    return _covid_items(collection, base, index, header)


def _covid_items(collection: CovidCtMdCollection, base: Path, index: Path, header: list[str]) -> Iterator[SourceItem]:
    for line, row in _rows(index, header):
        folder = row[collection.folder_column]
        diagnosis = row[collection.label_column]
        errors: list[str] = []
        conditions: list[str] = []
        if not diagnosis:
            errors.append(f"blank {collection.label_column!r}")
        else:
            conditions, errors = _map_labels([diagnosis], collection.labels, f"column {collection.label_column!r}")
        class_folder = collection.class_folders.get(diagnosis)
        if not folder:
            errors.insert(0, f"blank {collection.folder_column!r} cell")
            full, rel = base, f"{Path(collection.index).as_posix()} line {line}"
        elif class_folder is None:
            known = ", ".join(repr(k) for k in collection.class_folders)
            errors.insert(0, f"no class folder for diagnosis {diagnosis!r} (class_folders: {known})")
            full, rel = base / folder, folder
        else:
            rel = posixpath.join(class_folder, folder)
            full = base / rel
            if not full.is_dir():
                errors.insert(0, "listed but not found on disk" if not full.exists() else "expected a DICOM folder")
        yield _item(
            collection,
            path=full,
            rel_path=rel,
            loader="dicom",
            region=collection.region,
            modality=collection.modality,
            conditions=conditions,
            errors=errors,
            patient_id=folder or None,
            expect_kind="3d",
        )


# --------------------------------------------------------------------------- chestxray14

Box = tuple[str, float, float, float, float]
CHESTXRAY14_IMAGE, CHESTXRAY14_LABELS, CHESTXRAY14_PATIENT = "Image Index", "Finding Labels", "Patient ID"
CHESTXRAY14_BOX_LABEL = "Finding Label"


def _read_chestxray14_boxes(path: Path) -> dict[str, list[tuple[str, float, float, float, float]]]:
    """Image name -> its (raw label, x, y, w, h) rows. The box list is small (984 rows in the
    release), so it is read whole; the four numbers follow ``Finding Label`` by position."""
    header = _read_header(path, [CHESTXRAY14_IMAGE, CHESTXRAY14_BOX_LABEL])
    image_at, label_at = header.index(CHESTXRAY14_IMAGE), header.index(CHESTXRAY14_BOX_LABEL)
    boxes: dict[str, list[tuple[str, float, float, float, float]]] = {}
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            where = f"line {reader.line_num}"
            try:
                x, y, w, h = (float(cells[label_at + 1 + i]) for i in range(4))
            except (IndexError, ValueError):
                raise InputError(str(path), f"{where}: expected four numbers (x, y, w, h) after the label, "
                                            f"got {cells[label_at + 1:label_at + 5]}") from None
            if not (w > 0 and h > 0 and x >= 0 and y >= 0 and all(map(math.isfinite, (x, y, w, h)))):
                raise InputError(str(path), f"{where}: box (x={x}, y={y}, w={w}, h={h}) needs x, y >= 0 and w, h > 0")
            boxes.setdefault(cells[image_at].strip(), []).append((cells[label_at].strip(), x, y, w, h))
    return boxes


def _scan_chestxray14(collection: ChestXray14Collection, base: Path) -> Iterator[SourceItem]:
    _require_dir(base, "collection folder")
    index = base / collection.index
    _require_file(index, "index file")
    header = _read_header(index, [CHESTXRAY14_IMAGE, CHESTXRAY14_LABELS, CHESTXRAY14_PATIENT])
    boxes: dict[str, list[Box]] = {}
    if collection.boxes is not None:
        box_path = base / collection.boxes
        _require_file(box_path, "box list")
        boxes = _read_chestxray14_boxes(box_path)
        # Before any item, as for every unusable collection: one streaming pass over the index names,
        # keeping only those the box list has.
        listed = {row[CHESTXRAY14_IMAGE] for _, row in _rows(index, header) if row[CHESTXRAY14_IMAGE] in boxes}
        orphans = sorted(set(boxes) - listed)
        if orphans:
            raise InputError(str(index), f"the box list names {len(orphans)} image(s) the index lacks, "
                                         f"e.g. {orphans[:3]}")
    folders = [base / folder for folder in collection.images]
    for folder in folders:
        _require_dir(folder, "image folder")
    return _chestxray14_items(collection, index, header, boxes, folders)


def _chestxray14_items(collection: ChestXray14Collection, index: Path, header: list[str],
                       boxes: dict[str, list[Box]], folders: list[Path]) -> Iterator[SourceItem]:
    located: dict[str, Path] = {}  # image name -> its folder (first listed wins), one listing per folder
    for folder in reversed(folders):
        located.update({entry.name: folder for entry in _sorted_entries(folder) if entry.is_file()})
    base = index.parent
    skipped = 0
    for line, row in _rows(index, header):
        name = row[CHESTXRAY14_IMAGE]
        if collection.boxed_only and name not in boxes:
            skipped += 1
            continue
        raw = [value.strip() for value in row[CHESTXRAY14_LABELS].split("|") if value.strip()]
        errors: list[str] = [] if raw else [f"blank {CHESTXRAY14_LABELS!r}"]
        conditions, label_errors = _map_labels(raw, collection.labels, f"column {CHESTXRAY14_LABELS!r}")
        errors += label_errors
        item_boxes: list[Box] = []
        for box_label, x, y, w, h in boxes.get(name, []):
            mapped, box_errors = _map_labels([box_label], collection.labels, "the box list")
            errors += box_errors
            for condition in mapped:
                if condition in conditions:
                    item_boxes.append((condition, x, y, w, h))
                else:
                    errors.append(f"box for {box_label!r} but the image's findings are {raw}")
        found = located.get(name)
        if not name:
            errors.insert(0, f"blank {CHESTXRAY14_IMAGE!r} cell")
            full, rel = base, f"{Path(collection.index).as_posix()} line {line}"
        elif found is None:
            errors.insert(0, f"listed but in none of the image folders {collection.images}")
            full, rel = base / name, name
        else:
            full = found / name
            rel = full.relative_to(base).as_posix() if full.is_relative_to(base) else name
        loader, loader_error = loader_for(full, is_dir=False)
        if found is not None and loader_error:
            errors.insert(0, loader_error)
        yield _item(collection, path=full, rel_path=rel, loader=loader, region=collection.region,
                    modality=collection.modality, conditions=conditions, errors=errors,
                    patient_id=row[CHESTXRAY14_PATIENT] or None, expect_kind="2d", boxes=item_boxes)
    if skipped:
        log.info("chestxray14 %s: %d images without a box skipped (boxed_only)", collection.name, skipped,
                 extra={"collection": collection.name, "skipped_unboxed": skipped})


# --------------------------------------------------------------------------- cxr_lt

CXR_LT_IDS = ("dicom_id", "subject_id", "study_id")
CXR_LT_FRONTAL = ("AP", "PA")
CXR_LT_TRUE, CXR_LT_FALSE = ("1", "1.0"), ("0", "0.0", "")


def _cxr_lt_classes(collection: CxrLtCollection, header: list[str]) -> list[str]:
    if collection.classes:
        return list(collection.classes)
    meta = {*CXR_LT_IDS, collection.path_column, collection.view_column, collection.normal_column,
            *collection.ignore_columns}
    return [name for name in header if name not in meta]


def _scan_cxr_lt(collection: CxrLtCollection, base: Path) -> Iterator[SourceItem]:
    _require_dir(base, "collection folder")
    index = base / collection.index
    _require_file(index, "index file")
    optional = [collection.path_column, collection.normal_column, collection.view_column]
    header = _read_header(index, [*CXR_LT_IDS, *(c for c in optional if c), *collection.classes])
    classes = _cxr_lt_classes(collection, header)
    if not classes:
        raise InputError(str(index), f"no class columns: the header has only {header}")
    unknown = [c for c in collection.labels if c not in classes]
    if unknown:
        raise InputError(str(index), f"labels name column(s) {unknown} that are not classes {classes}")
    return _cxr_lt_items(collection, base, index, header, classes)


def _cxr_lt_path(collection: CxrLtCollection, row: dict[str, str]) -> str:
    if collection.path_column:
        return row[collection.path_column]
    subject, study, dicom = row["subject_id"], row["study_id"], row["dicom_id"]
    if not (subject and study and dicom):
        return ""
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"


def _cxr_lt_items(collection: CxrLtCollection, base: Path, index: Path, header: list[str],
                  classes: list[str]) -> Iterator[SourceItem]:
    images = base / collection.images
    skipped = 0
    for line, row in _rows(index, header):
        view = row[collection.view_column] if collection.view_column else ""
        if collection.frontal_only and collection.view_column and view.upper() not in CXR_LT_FRONTAL:
            skipped += 1
            continue
        errors: list[str] = []
        positives = []
        for name in classes:
            value = row[name]
            if value in CXR_LT_TRUE:
                positives.append(name)
            elif value not in CXR_LT_FALSE:
                errors.append(f"column {name!r}: {value!r} is not 0 or 1")
        conditions, label_errors = _map_labels(positives, {c: collection.labels.get(c, c) for c in classes},
                                               "the class columns")
        errors += label_errors
        normal = row[collection.normal_column] if collection.normal_column else ""
        if normal in CXR_LT_TRUE and conditions:
            errors.append(f"{collection.normal_column!r} is 1 beside the positive class(es) {positives}")
        elif normal not in CXR_LT_TRUE + CXR_LT_FALSE:
            errors.append(f"column {collection.normal_column!r}: {normal!r} is not 0 or 1")
        full, rel, loader, problem = _locate(images, _cxr_lt_path(collection, row),
                                             f"{Path(collection.index).as_posix()} line {line}",
                                             f"no image path (blank {collection.path_column or 'id'!r} cell)")
        if problem:
            errors.insert(0, problem)
        yield _item(collection, path=full, rel_path=rel, loader=loader, region=collection.region,
                    modality=collection.modality, conditions=conditions, errors=errors,
                    patient_id=row["subject_id"] or None, expect_kind="2d")
    if skipped:
        log.info("cxr_lt %s: %d non-frontal rows skipped (frontal_only)", collection.name, skipped,
                 extra={"collection": collection.name, "skipped_lateral": skipped})


# --------------------------------------------------------------------------- medmnist


def _scan_medmnist(collection: MedmnistCollection, base: Path) -> Iterator[SourceItem]:
    _require_file(base, "MedMNIST .npz")
    if not collection.class_names:
        raise InputError(str(base), "class_names is empty: list one name per class index (null for normal)")
    from radclip.data.medmnist import list_members  # reads the label arrays only

    members = list_members(base, list(collection.splits))
    return _medmnist_items(collection, base, members)


def _medmnist_conditions(collection: MedmnistCollection, vector: Sequence[int]) -> tuple[list[str], list[str]]:
    names = collection.class_names
    if collection.multi_label:
        if len(vector) != len(names):
            return [], [f"label vector has {len(vector)} entries, class_names has {len(names)}"]
        return [name for name, v in zip(names, vector) if v and name], []  # equal lengths checked above
    if len(vector) != 1:
        return [], [f"expected one class index, got {list(vector)} (multi_label is false)"]
    index = int(vector[0])
    if not 0 <= index < len(names):
        return [], [f"class index {index} has no entry in class_names ({len(names)} names)"]
    name = names[index]
    return ([name] if name else []), []


def _medmnist_items(
    collection: MedmnistCollection, base: Path, members: list[tuple[str, list[int]]]
) -> Iterator[SourceItem]:
    for member, vector in members:
        conditions, errors = _medmnist_conditions(collection, vector)
        yield _item(
            collection,
            path=base,
            rel_path=base.name,  # one file, many members: reports show rel_path + "#" + member
            loader="npz",
            region=collection.region,
            modality=collection.modality,
            conditions=conditions,
            errors=errors,
            patient_id=f"{base.stem}:{member}",
            member=member,
        )
