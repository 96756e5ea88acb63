"""Validate a curated dataset before anything trains on it.

A Great Expectations 1.x suite (ephemeral context, pandas data source, no
analytics, no progress bars) runs over the Parquet manifest and over small
frames derived from it (class counts, patient -> splits, quarantine rate);
shard files are then checked directly, one memory-mapped array at a time.

Every run writes, success or not, to the report folder:

- ``report.json``: overall success and, per check, what was expected, what was
  observed and a few offending values / record ids (machine-readable);
- ``report.md``: the same as a table a person reads first;
- ``metrics.json``: a handful of numbers for ``dvc metrics``;
- ``data_docs/index.html``: Great Expectations' own Data Docs of the same run (every suite, every
  validation result with its offending values), rendered by the Checkpoints' UpdateDataDocsAction.
  The Markdown is what ``dvc diff`` and review read; the HTML is what a person browses. It is no DVC
  output: GE stamps every render with fresh ids and times, so the same data would change ``dvc.lock`` on
  every run and a pushed cache would never match a committed lock. The folder ignores itself in git.

:func:`validate_curated` returns a :class:`ValidationReport`; when checks fail and
``validate.fail_on_violation`` is set it raises :class:`ValidationFailed` instead
(the report, written first, rides on the exception). A missing or unreadable
manifest raises :class:`CuratedDataError` (a ValidationFailed naming the file)
whatever that setting says: nothing can be checked.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from radclip.config import Params
from radclip.data.shards import MANIFEST_FILE
from radclip.data.validation.checks import (
    FINITE_BOUND,
    PLANES,
    QUARANTINE_FILE,
    REQUIRED_COLUMNS,
    SPLITS_OF_ROLE,
    STAT_COLUMNS,
    SUMMARY_FILE,
    UINT8_RANGE,
    ZSCORE_MEAN_BAND,
    ZSCORE_STD_BAND,
    CheckResult,
    CuratedDataError,
    ValidationFailed,
    ValidationReport,
    _class_count_check,
    _manifest_checks,
    _patient_split_check,
    _quarantine_check,
    _read_manifest,
    _shard_checks,
)
from radclip.data.validation.gx_runtime import DATA_DOCS_INDEX, SAMPLE_SIZE
from radclip.data.validation.gx_runtime import data_docs as render_data_docs
from radclip.data.validation.report import (
    METRICS_JSON,
    REPORT_JSON,
    REPORT_MD,
    VALIDATION_PARAMS,
    _write_report,
)

DATA_DOCS_DIR = "data_docs"  # under the report folder

__all__ = [
    "DATA_DOCS_DIR",
    "DATA_DOCS_INDEX",
    "FINITE_BOUND",
    "MANIFEST_FILE",
    "METRICS_JSON",
    "PLANES",
    "QUARANTINE_FILE",
    "REPORT_JSON",
    "REPORT_MD",
    "REQUIRED_COLUMNS",
    "SAMPLE_SIZE",
    "SPLITS_OF_ROLE",
    "STAT_COLUMNS",
    "SUMMARY_FILE",
    "UINT8_RANGE",
    "VALIDATION_PARAMS",
    "ZSCORE_MEAN_BAND",
    "ZSCORE_STD_BAND",
    "CheckResult",
    "CuratedDataError",
    "ValidationFailed",
    "ValidationReport",
    "validate_curated",
]


# --------------------------------------------------------------------------- entry points


def validate_curated(
    params: Params,
    curated_dir: Path | None = None,
    report_dir: Path | None = None,
    *,
    fail_on_violation: bool | None = None,
    data_docs: bool = True,
) -> ValidationReport:
    """Run every check on the curated dataset and write report.json / report.md / metrics.json.

    Raises :class:`ValidationFailed` if a check fails and ``fail_on_violation``
    (default: ``validate.fail_on_violation``) is true. ``data_docs=False`` runs the same Checkpoints
    without rendering Data Docs (seconds per run: tests of single checks skip it).
    """
    curated_dir = Path(curated_dir) if curated_dir is not None else params.resolve(params.paths.curated)
    report_dir = Path(report_dir) if report_dir is not None else params.resolve(params.paths.reports) / "validation"
    if fail_on_violation is None:
        fail_on_violation = params.validate_.fail_on_violation

    manifest_path = curated_dir / MANIFEST_FILE
    manifest, problem = _read_manifest(manifest_path)
    if manifest is None:
        # The report is still written, so `dvc metrics` and a person both see why.
        check = CheckResult(
            "manifest.readable", "the manifest exists and is a readable Parquet file", False, message=problem
        )
        report = _write_report(report_dir, curated_dir, params, [check], records=0, quarantine_rate=None)
        raise CuratedDataError(report, f"{problem}; see {report.report_md}")

    docs_dir = report_dir / DATA_DOCS_DIR
    shutil.rmtree(docs_dir, ignore_errors=True)  # this run's results only, not every earlier run's
    with render_data_docs(docs_dir) if data_docs else contextlib.nullcontext():
        rate, rate_check = _quarantine_check(params, curated_dir, records=len(manifest))
        checks = [
            *_manifest_checks(params, manifest),
            _class_count_check(params, manifest),
            _patient_split_check(manifest),
            rate_check,
            *_shard_checks(manifest, curated_dir),
        ]
    if data_docs:
        (docs_dir / ".gitignore").write_text("# Great Expectations' Data Docs: rendered by every validate run\n*\n")
    report = _write_report(report_dir, curated_dir, params, checks, records=len(manifest), quarantine_rate=rate)
    if fail_on_violation:
        report.raise_for_failures()
    return report
