"""Stage ``validate``: the Great Expectations suite on the curated dataset; fails on a violation."""

from __future__ import annotations

from radclip.config import Params
from radclip.data.validation import DATA_DOCS_DIR, DATA_DOCS_INDEX, ValidationReport, validate_curated
from radclip.jobs.common import log, stage_main, write_effective_params

STAGE = "validate"
PARAMS = ("profile", "validate", "data.caption", "data.collections", "curate.image_size", "curate.volume")


def run(params: Params, *, progress: bool = True) -> ValidationReport:
    """Raises :class:`~radclip.data.validation.ValidationFailed` (the report is written first)."""
    report = validate_curated(params)
    write_effective_params(params, STAGE, PARAMS)
    folder = params.resolve(params.paths.reports) / "validation"
    log.info("validation passed: %d checks; report in %s, Great Expectations' Data Docs in %s", len(report.checks),
             folder, folder / DATA_DOCS_DIR / DATA_DOCS_INDEX)
    return report


def main() -> None:
    stage_main(run)
