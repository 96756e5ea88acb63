"""Writing the validation report: ``report.json``, ``report.md`` and ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path

from radclip.config import Params, project_root
from radclip.data.validation.checks import CheckResult, ValidationReport, _plain

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
METRICS_JSON = "metrics.json"
# The params the checks read (dvc.yaml's `validate` stage lists the same keys): the report's
# digest covers these only, so it changes exactly when DVC reruns validation.
VALIDATION_PARAMS = ("validate", "data.caption", "data.collections", "curate.image_size", "curate.volume")


def _md_cell(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown_path(path: Path) -> str:
    """Relative to the project when inside it, so committed reports do not depend on the checkout's location."""
    try:
        return Path(path).resolve().relative_to(project_root()).as_posix()
    except ValueError:
        return str(path)


def _write_report(
    report_dir: Path,
    curated_dir: Path,
    params: Params,
    checks: list[CheckResult],
    *,
    records: int,
    quarantine_rate: float | None,
) -> ValidationReport:
    report_dir.mkdir(parents=True, exist_ok=True)
    failed = [c for c in checks if not c.success and not c.skipped]
    report = ValidationReport(
        success=not failed and bool(checks),
        checks=checks,
        records=records,
        quarantine_rate=quarantine_rate,
        report_json=report_dir / REPORT_JSON,
        report_md=report_dir / REPORT_MD,
        metrics_json=report_dir / METRICS_JSON,
    )
    document = {
        "success": report.success,
        "curated_dir": _shown_path(curated_dir),
        "params_digest": params.digest(*VALIDATION_PARAMS),
        "records": records,
        "quarantine_rate": quarantine_rate,
        "n_checks": len(checks),
        "n_failed": len(failed),
        "failed": [c.name for c in failed],
        "checks": [c.to_dict() for c in checks],
    }
    report.report_json.write_text(json.dumps(_plain(document), indent=2) + "\n")
    metrics = {
        "success": report.success,
        "n_checks": len(checks),
        "n_failed": len(failed),
        "records": records,
        "quarantine_rate": quarantine_rate,
    }
    report.metrics_json.write_text(json.dumps(_plain(metrics), indent=2) + "\n")

    verdict = "PASSED" if report.success else f"FAILED ({len(failed)} of {len(checks)} checks)"
    rate_text = "unknown" if quarantine_rate is None else f"{quarantine_rate:.2%}"
    lines = [
        f"# Curated data validation: {verdict}",
        "",
        f"- curated dataset: `{_shown_path(curated_dir)}`",
        f"- records: {records}; quarantine rate: {rate_text}; params digest: `{params.digest(*VALIDATION_PARAMS)}`",
        "",
        "| check | result | what was checked | what was wrong |",
        "|---|---|---|---|",
    ]
    badge = {"pass": "pass", "fail": "**FAIL**", "skip": "skipped"}
    for check in checks:
        lines.append(
            f"| `{check.name}` | {badge[check.status]} | {_md_cell(check.description)} | {_md_cell(check.message)} |"
        )
    for check in failed:
        lines += ["", f"## {check.name}", "", check.message]
        if check.record_ids:
            lines += ["", "Records: " + ", ".join(f"`{rid}`" for rid in check.record_ids)]
        if check.unexpected:
            lines += ["", "Examples:", *[f"- `{_md_cell(json.dumps(_plain(u)), 200)}`" for u in check.unexpected[:5]]]
    report.report_md.write_text("\n".join(lines) + "\n")
    return report
