"""The checks on a curated dataset: what is validated and how results are folded.

The manifest suite, derived frames (class counts, patient -> splits, quarantine
rate) as GE expectations, plain checks on the shard files, the result objects
(:class:`CheckResult`, :class:`ValidationReport`) and :class:`ValidationFailed`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radclip.config import CaptionTemplate, Params
from radclip.data.captions import caption_pattern
from radclip.data.validation.gx_runtime import SAMPLE_SIZE, _gx

QUARANTINE_FILE = "quarantine.parquet"
SUMMARY_FILE = "summary.json"

STAT_COLUMNS = ("mean", "std", "min", "max")
REQUIRED_COLUMNS = (
    "record_id", "collection", "role", "kind", "split", "source_path", "region", "modality",
    "conditions", "label", "caption", "patient_hash", "plane", "shard", "shard_index",
    "slices", "height", "width", "content_hash", *STAT_COLUMNS,
)  # fmt: skip
PLANES = ("axial", "coronal", "sagittal")
SPLITS_OF_ROLE = {"train": ("train", "val", "test"), "finetune": ("train", "val", "test"), "eval": ("eval",)}

# 3D volumes are z-scored per volume: whole-volume std ~1, mean ~0. The band
# leaves room for resampling after z-scoring (smoothing lowers std) and float16
# rounding, and still catches raw HU (std in the hundreds), a [0, 1]-scaled
# volume (std ~0.3) or a constant one (std 0).
ZSCORE_STD_BAND = (0.5, 2.0)
ZSCORE_MEAN_BAND = (-1.0, 1.0)
UINT8_RANGE = (0, 255)
FINITE_BOUND = 1e300  # "between +-1e300" rejects inf; NaN is caught by the not-null expectation


class ValidationFailed(Exception):
    """Checks failed and ``validate.fail_on_violation`` is set: names them and the report."""

    def __init__(self, report: ValidationReport, message: str | None = None):
        self.report = report
        names = ", ".join(check.name for check in report.failed)
        super().__init__(
            message
            or f"curated data failed {len(report.failed)} of {len(report.checks)} checks: {names}; "
            f"see {report.report_md}"
        )


class CuratedDataError(ValidationFailed):
    """The curated dataset cannot be read at all: the message names the missing/broken file."""


@dataclass
class CheckResult:
    """One named check: one or more GE expectations, or a plain check on the shard files."""

    name: str
    description: str
    success: bool
    skipped: bool = False  # not run because a column it needs is missing (that fails manifest.columns)
    message: str = ""  # what was wrong, readable; empty on success
    observed: Any = None
    unexpected: list = field(default_factory=list)  # a few offending values
    record_ids: list[str] = field(default_factory=list)  # a few offending records
    expectations: list[dict] = field(default_factory=list)  # per GE expectation: type, kwargs, outcome

    @property
    def status(self) -> str:
        return "skip" if self.skipped else ("pass" if self.success else "fail")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "status": self.status,
            "success": self.success,
            "message": self.message,
            "observed": self.observed,
            "unexpected": self.unexpected,
            "record_ids": self.record_ids,
            "expectations": self.expectations,
        }


@dataclass
class ValidationReport:
    success: bool
    checks: list[CheckResult]
    records: int
    quarantine_rate: float | None
    report_json: Path
    report_md: Path
    metrics_json: Path

    @property
    def failed(self) -> list[CheckResult]:
        return [check for check in self.checks if not check.success and not check.skipped]

    def check(self, name: str) -> CheckResult:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"no check named {name!r}; checks: {[c.name for c in self.checks]}")

    def raise_for_failures(self) -> None:
        if not self.success:
            raise ValidationFailed(self)


# --------------------------------------------------------------------------- reading


def _read_manifest(path: Path) -> tuple[pd.DataFrame | None, str]:
    """The manifest, or None and why not (naming the file)."""
    if not path.is_file():
        return None, f"{path}: manifest not found (run the curate stage first)"
    try:
        return pd.read_parquet(path), ""
    except Exception as exc:  # pyarrow raises several types for truncated/foreign files
        return None, f"{path}: not a readable Parquet manifest: {exc}"


def _read_summary(path: Path) -> tuple[dict | None, str | None]:
    if not path.is_file():
        return None, None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"{path}: not readable JSON: {exc}"
    if not isinstance(summary, dict):
        return None, f"{path}: expected a JSON object, got {type(summary).__name__}"
    return summary, None


# --------------------------------------------------------------------------- planning and folding expectations


@dataclass
class _Planned:
    check: str
    expectation: Any
    columns: tuple[str, ...]  # columns it reads (incl. its row condition): missing ones skip the check


def _expect(
    check: str, name: str, columns: Iterable[str], where: dict[str, str] | None = None, **kwargs: Any
) -> _Planned:
    """An expectation tagged with its check name (``meta``) so results map back to checks.

    ``where`` restricts it to rows whose columns equal the given values (GE row
    condition objects; the string form is deprecated since GX 1.9).
    """
    cls = getattr(_gx().gx.expectations, name)
    meta: dict[str, Any] = {"check": check}
    if where:
        from great_expectations.expectations.row_conditions import Column, Condition

        conditions = [Column(column) == value for column, value in where.items()]
        condition: Condition = conditions[0]
        for extra in conditions[1:]:
            condition = condition & extra
        kwargs["row_condition"] = condition
        meta["where"] = " and ".join(f"{column} == {value!r}" for column, value in where.items())
        columns = (*columns, *where)
    return _Planned(check, cls(meta=meta, **kwargs), tuple(columns))


def _run_checks(
    frame_name: str,
    frame: pd.DataFrame,
    planned: list[_Planned],
    descriptions: dict[str, str],
    index_columns: list[str],
) -> list[CheckResult]:
    """Run the planned expectations on ``frame`` and fold their results into named checks."""
    present = set(frame.columns)
    runnable = [p for p in planned if set(p.columns) <= present]
    index_columns = [c for c in index_columns if c in present]
    results = _gx().validate(frame_name, frame, [p.expectation for p in runnable], index_columns)

    by_check: dict[str, list] = {name: [] for name in descriptions}
    for result in results:
        by_check.setdefault(result.expectation_config.meta["check"], []).append(result)

    missing_by_check: dict[str, set[str]] = {}
    for p in planned:
        if not set(p.columns) <= present:
            missing_by_check.setdefault(p.check, set()).update(set(p.columns) - present)

    checks = []
    for name, description in descriptions.items():
        if not by_check.get(name) and name not in missing_by_check:
            continue  # nothing planned (e.g. no collection of that kind)
        if not by_check.get(name):
            missing = ", ".join(sorted(missing_by_check[name]))
            checks.append(
                CheckResult(
                    name, description, success=False, skipped=True, message=f"not run: missing column(s) {missing}"
                )
            )
            continue
        checks.append(_fold_results(name, description, by_check[name], index_columns))
    return checks


def _fold_results(name: str, description: str, results: list, index_columns: list[str]) -> CheckResult:
    check = CheckResult(name, description, success=all(r.success for r in results))
    messages, observed = [], []
    for result in results:
        config, outcome = result.expectation_config, result.result or {}
        kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "condition_parser", "row_condition")}
        if config.meta.get("where"):
            kwargs["where"] = config.meta["where"]  # readable form of the row condition
        error = _exception_message(result)
        check.expectations.append(
            {
                "type": config.type,
                "kwargs": kwargs,
                "success": bool(result.success),
                "observed_value": outcome.get("observed_value"),
                "element_count": outcome.get("element_count"),
                "unexpected_count": outcome.get("unexpected_count"),
                "error": error,
            }
        )
        if "observed_value" in outcome:
            observed.append(outcome["observed_value"])
        if result.success:
            continue
        offenders = outcome.get("partial_unexpected_index_list") or []
        for offender in offenders[:SAMPLE_SIZE]:
            if len(check.unexpected) < SAMPLE_SIZE:
                check.unexpected.append(offender)
            record_id = offender.get("record_id") if isinstance(offender, dict) else None
            if record_id is not None and record_id not in check.record_ids and len(check.record_ids) < SAMPLE_SIZE:
                check.record_ids.append(record_id)
        if not offenders:
            check.unexpected.extend(outcome.get("partial_unexpected_list", [])[: SAMPLE_SIZE - len(check.unexpected)])
        messages.append(_describe_failure(config.type, kwargs, outcome, error, index_columns))
    check.observed = observed[0] if len(observed) == 1 else (observed or None)
    check.message = "; ".join(messages)
    return check


def _evaluation_error(check: CheckResult) -> bool:
    return any(e.get("error") for e in check.expectations)


def _exception_message(result) -> str | None:
    info = result.exception_info or {}
    if info.get("raised_exception"):
        return info.get("exception_message")
    for value in info.values():  # metric errors come keyed by metric id
        if isinstance(value, dict) and value.get("raised_exception"):
            return value.get("exception_message")
    return None


def _describe_failure(etype: str, kwargs: dict, outcome: dict, error: str | None, index_columns: list[str]) -> str:
    """One readable line: which column, which rows, what was expected, a few examples."""
    column = kwargs.get("column") or ", ".join(
        kwargs.get("column_list") or [kwargs[k] for k in ("column_A", "column_B") if k in kwargs]
    )
    where = f" where {kwargs['where']}" if kwargs.get("where") else ""
    subject = f"{column}{where}" if column else "table"
    if error:
        return f"{subject}: could not be evaluated: {error}"
    if etype == "expect_table_columns_to_match_set":
        missing = (outcome.get("details") or {}).get("mismatched", {}).get("missing", [])
        return f"missing column(s): {', '.join(missing)}"
    if etype == "expect_column_distinct_values_to_contain_set":
        return f"{subject}: no rows for {', '.join(map(str, outcome.get('partial_missing_list', [])))}"
    if "observed_value" in outcome:  # aggregate expectations (column max, ...)
        return f"{subject}: observed {_short(outcome.get('observed_value'))}, expected {_expected_text(etype, kwargs)}"
    count, total = outcome.get("unexpected_count", 0), outcome.get("element_count", 0)
    examples = []
    for offender in (outcome.get("partial_unexpected_index_list") or [])[:3]:
        if isinstance(offender, dict):
            keys = [k for k in index_columns if k in offender]
            value = {k: v for k, v in offender.items() if k not in keys}
            key_text = "/".join(str(offender[k]) for k in keys)
            value_text = ", ".join(_short(v) for v in value.values())
            examples.append(f"{key_text}: {value_text}" if value_text and key_text else key_text or value_text)
    if not examples:
        examples = [_short(v) for v in (outcome.get("partial_unexpected_list") or [])[:3]]
    examples = list(dict.fromkeys(examples))
    example_text = f" (e.g. {'; '.join(examples)})" if examples else ""
    return f"{subject}: {count} of {total} row(s) {_expected_text(etype, kwargs, negate=True)}{example_text}"


def _expected_text(etype: str, kwargs: dict, negate: bool = False) -> str:
    if etype == "expect_column_values_to_not_be_null":
        return "null or NaN" if negate else "no nulls"
    if etype in ("expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"):
        return "duplicated" if negate else "unique"
    if etype == "expect_column_values_to_be_in_set":
        return f"{'not ' if negate else ''}in {list(kwargs.get('value_set', []))}"
    if etype == "expect_column_values_to_match_regex":
        return f"{'not ' if negate else ''}matching /{kwargs.get('regex')}/"
    if "between" in etype:
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        band = f">= {low}" if high is None else (f"<= {high}" if low is None else f"in [{low}, {high}]")
        return f"not {band}" if negate else band
    if etype == "expect_column_pair_values_a_to_be_greater_than_b":
        rel = ">=" if kwargs.get("or_equal") else ">"
        return f"{'not ' if negate else ''}{kwargs.get('column_A')} {rel} {kwargs.get('column_B')}"
    return "unexpected" if negate else etype


def _short(value: Any, limit: int = 80) -> str:
    value = _plain(value)
    text = f"{value:.4g}" if isinstance(value, float) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- JSON-safe values (messages and report)


def _plain(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to strings (strict JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


# --------------------------------------------------------------------------- manifest suite


def _template_of(params: Params, collection) -> CaptionTemplate:
    return collection.caption or params.data.caption


def _manifest_checks(params: Params, manifest: pd.DataFrame) -> list[CheckResult]:
    curate = params.curate
    collections = params.data.collections
    descriptions: dict[str, str] = {
        "manifest.columns": "every required manifest column exists",
        "manifest.not_null": "required columns have no null values",
        "manifest.record_id_unique": "record_id is unique",
        "manifest.values": "collection/role/kind/split/plane take known values; patient_hash is 16 hex digits",
        "manifest.collections_present": "every configured collection has curated records",
    }
    E = _expect
    planned: list[_Planned] = [
        E("manifest.columns", "ExpectTableColumnsToMatchSet", (), column_set=list(REQUIRED_COLUMNS), exact_match=False),
        *[
            E("manifest.not_null", "ExpectColumnValuesToNotBeNull", (column,), column=column)
            for column in REQUIRED_COLUMNS
            if column not in STAT_COLUMNS  # NaN statistics are reported by statistics.finite
        ],
        E("manifest.record_id_unique", "ExpectColumnValuesToBeUnique", ("record_id",), column="record_id"),
        E("manifest.values", "ExpectColumnValuesToBeInSet", ("collection",), column="collection",
          value_set=[c.name for c in collections]),
        E("manifest.values", "ExpectColumnValuesToBeInSet", ("kind",), column="kind", value_set=["2d", "3d"]),
        E("manifest.values", "ExpectColumnValuesToBeInSet", ("role",), column="role", value_set=list(SPLITS_OF_ROLE)),
        *[
            E("manifest.values", "ExpectColumnValuesToBeInSet", ("split",), column="split",
              value_set=list(splits), where={"role": role})
            for role, splits in SPLITS_OF_ROLE.items()
        ],  # fmt: skip
        E("manifest.values", "ExpectColumnValuesToMatchRegex", ("patient_hash",), column="patient_hash",
          regex=r"^[0-9a-f]{16}$"),
        E("manifest.collections_present", "ExpectColumnDistinctValuesToContainSet", ("collection",),
          column="collection", value_set=[c.name for c in collections]),
        # Two records in one shard slot would silently read the same pixels.
        E("shards.slots_unique", "ExpectCompoundColumnsToBeUnique", ("shard", "shard_index"),
          column_list=["shard", "shard_index"]),
    ]  # fmt: skip
    descriptions["shards.slots_unique"] = "no two records point at the same (shard, shard_index)"

    for collection in collections:
        check = f"captions.template[{collection.name}]"
        descriptions[check] = f"captions of {collection.name} match its caption template"
        planned.append(
            E(check, "ExpectColumnValuesToMatchRegex", ("caption",), column="caption",
              regex=caption_pattern(_template_of(params, collection)), where={"collection": collection.name})
        )  # fmt: skip
        planned.append(
            E("manifest.values", "ExpectColumnValuesToBeInSet", ("role",), column="role",
              value_set=[collection.role], where={"collection": collection.name})
        )  # fmt: skip

    size = curate.image_size
    descriptions["shapes.2d"] = f"2D records are {size}x{size}, 1 slice, no plane"
    for column, value in (("height", size), ("width", size), ("slices", 1), ("plane", "")):
        planned.append(
            E(
                "shapes.2d",
                "ExpectColumnValuesToBeInSet",
                (column,),
                column=column,
                value_set=[value],
                where={"kind": "2d"},
            )
        )
    descriptions["shapes.3d"] = "3D records have a plane and (slices, size, size) as curate.volume[plane] says"
    planned.append(
        E(
            "shapes.3d",
            "ExpectColumnValuesToBeInSet",
            ("plane",),
            column="plane",
            value_set=list(PLANES),
            where={"kind": "3d"},
        )
    )
    for plane, shape in curate.volume.items():
        condition = {"kind": "3d", "plane": plane}
        for column, value in (("slices", shape.slices), ("height", shape.size), ("width", shape.size)):
            planned.append(
                E("shapes.3d", "ExpectColumnValuesToBeInSet", (column,), column=column,
                  value_set=[value], where=condition)
            )  # fmt: skip

    descriptions["statistics.finite"] = "mean/std/min/max are finite numbers"
    descriptions["statistics.consistent"] = "min <= mean <= max and std >= 0; 2D values within uint8 range"
    descriptions["statistics.zscore_3d"] = (
        f"3D volumes look z-scored: std in {list(ZSCORE_STD_BAND)}, mean in {list(ZSCORE_MEAN_BAND)}"
    )
    for column in STAT_COLUMNS:
        planned += [
            E("statistics.finite", "ExpectColumnValuesToNotBeNull", (column,), column=column),
            E("statistics.finite", "ExpectColumnValuesToBeBetween", (column,), column=column,
              min_value=-FINITE_BOUND, max_value=FINITE_BOUND),
        ]  # fmt: skip
    planned += [
        E("statistics.consistent", "ExpectColumnValuesToBeBetween", ("std",), column="std", min_value=0),
        E("statistics.consistent", "ExpectColumnPairValuesAToBeGreaterThanB", ("mean", "min"),
          column_A="mean", column_B="min", or_equal=True),
        E("statistics.consistent", "ExpectColumnPairValuesAToBeGreaterThanB", ("max", "mean"),
          column_A="max", column_B="mean", or_equal=True),
        *[
            E("statistics.consistent", "ExpectColumnValuesToBeBetween", (column,), column=column,
              min_value=UINT8_RANGE[0], max_value=UINT8_RANGE[1], where={"kind": "2d"})
            for column in ("min", "max")
        ],
        E("statistics.zscore_3d", "ExpectColumnValuesToBeBetween", ("std",), column="std",
          min_value=ZSCORE_STD_BAND[0], max_value=ZSCORE_STD_BAND[1], where={"kind": "3d"}),
        E("statistics.zscore_3d", "ExpectColumnValuesToBeBetween", ("mean",), column="mean",
          min_value=ZSCORE_MEAN_BAND[0], max_value=ZSCORE_MEAN_BAND[1], where={"kind": "3d"}),
    ]  # fmt: skip
    return _run_checks("manifest", manifest, planned, descriptions, index_columns=["record_id"])


# --------------------------------------------------------------------------- derived frames


def _class_counts(params: Params, manifest: pd.DataFrame) -> pd.DataFrame:
    """(collection, class, count): eval suites by label; training data by caption condition.

    Training counts are per condition ("" = normal), not per full caption: a rare
    combination of conditions is fine, a condition seen only twice is not.
    """
    roles = {c.name: c.role for c in params.data.collections}
    rows = manifest[["collection", "label", "conditions"]].copy()
    rows["role"] = rows["collection"].map(roles).fillna(manifest.get("role", "train"))
    is_eval = rows["role"] == "eval"
    eval_classes = pd.DataFrame(
        {"collection": rows.loc[is_eval, "collection"], "class": rows.loc[is_eval, "label"].astype(str)}
    )
    train_conditions = rows.loc[~is_eval, "conditions"].fillna("").astype(str).str.split("|")
    train_classes = pd.DataFrame(
        {"collection": rows.loc[~is_eval, "collection"], "class": train_conditions}
    ).explode("class")
    train_classes["class"] = train_classes["class"].replace("", "normal")
    classes = pd.concat([eval_classes, train_classes], ignore_index=True).dropna()
    counts = classes.groupby(["collection", "class"], sort=True).size().rename("count").reset_index()
    return counts.astype({"collection": str, "class": str, "count": "int64"})


def _class_count_check(params: Params, manifest: pd.DataFrame) -> CheckResult:
    name = "classes.min_count"
    needed = {"collection", "label", "conditions"}
    minimum = params.validate_.min_class_count
    description = f"every class of every collection has at least {minimum} records (eval: label, train: condition)"
    if not needed <= set(manifest.columns):
        missing = ", ".join(sorted(needed - set(manifest.columns)))
        return CheckResult(name, description, False, skipped=True, message=f"not run: missing column(s) {missing}")
    counts = _class_counts(params, manifest)
    planned = [_expect(name, "ExpectColumnValuesToBeBetween", ("count",), column="count", min_value=minimum)]
    (check,) = _run_checks("class_counts", counts, planned, {name: description}, index_columns=["collection", "class"])
    small = counts[counts["count"] < minimum]
    check.observed = {"classes": len(counts), "smallest": int(counts["count"].min()) if len(counts) else 0}
    if not check.success and not _evaluation_error(check):
        head = small.head(SAMPLE_SIZE)
        listed = "; ".join(f"{c}/{k}: {n}" for c, k, n in zip(head["collection"], head["class"], head["count"]))
        more = f" (+{len(small) - SAMPLE_SIZE} more)" if len(small) > SAMPLE_SIZE else ""
        check.message = f"{len(small)} class(es) with fewer than {minimum} records: {listed}{more}"
    return check


def _patient_splits(manifest: pd.DataFrame) -> pd.DataFrame:
    """patient_hash -> number of distinct splits (and which), over train and eval collections alike."""
    rows = manifest.dropna(subset=["patient_hash", "split"])
    grouped = rows.groupby("patient_hash", sort=True)
    return pd.DataFrame(
        {
            "n_splits": grouped["split"].nunique(),
            "splits": grouped["split"].agg(lambda s: "|".join(sorted(set(map(str, s))))),
            "collections": grouped["collection"].agg(lambda s: "|".join(sorted(set(map(str, s))))),
        }
    ).reset_index()


def _patient_split_check(manifest: pd.DataFrame) -> CheckResult:
    name = "patients.single_split"
    description = "no patient appears in two splits (train/val/test/eval): leakage into validation or evaluation"
    needed = {"patient_hash", "split", "collection"}
    if not needed <= set(manifest.columns):
        missing = ", ".join(sorted(needed - set(manifest.columns)))
        return CheckResult(name, description, False, skipped=True, message=f"not run: missing column(s) {missing}")
    patients = _patient_splits(manifest)
    planned = [_expect(name, "ExpectColumnValuesToBeInSet", ("n_splits",), column="n_splits", value_set=[1])]
    (check,) = _run_checks(
        "patient_splits",
        patients,
        planned,
        {name: description},
        index_columns=["patient_hash", "splits", "collections"],
    )
    several = int((patients["n_splits"] > 1).sum())
    check.observed = {"patients": len(patients), "in_several_splits": several}
    if not check.success and not _evaluation_error(check):
        leaks = [o for o in check.unexpected if isinstance(o, dict) and "patient_hash" in o]
        check.message = f"{several} patient(s) in several splits: " + "; ".join(
            f"{o['patient_hash']} in {o['splits']} ({o['collections']})" for o in leaks[:3]
        )
        if "record_id" in manifest.columns:
            leaked = manifest["patient_hash"].isin([o["patient_hash"] for o in leaks])
            check.record_ids = manifest.loc[leaked, "record_id"].astype(str).head(SAMPLE_SIZE).tolist()
    return check


def _quarantine_check(params: Params, curated_dir: Path, records: int) -> tuple[float | None, CheckResult]:
    name = "quarantine.rate"
    maximum = params.validate_.max_quarantine_rate
    description = f"at most {maximum:.1%} of inputs were quarantined"
    summary, summary_error = _read_summary(curated_dir / SUMMARY_FILE)
    quarantine_path = curated_dir / QUARANTINE_FILE
    quarantine = None
    if quarantine_path.is_file():
        try:
            quarantine = pd.read_parquet(quarantine_path)
        except Exception as exc:
            return None, CheckResult(
                name, description, False, message=f"{quarantine_path}: not readable Parquet: {exc}"
            )

    rate: float | None = None
    if summary is not None and summary.get("quarantine_rate") is not None:
        rate = float(summary["quarantine_rate"])
    elif summary is not None and summary.get("quarantined") is not None:
        quarantined = int(summary["quarantined"])
        total = int(summary.get("records", records)) + quarantined
        rate = quarantined / total if total else 0.0
    elif quarantine is not None:
        total = records + len(quarantine)
        rate = len(quarantine) / total if total else 0.0
    if rate is None:
        reason = summary_error or f"neither {SUMMARY_FILE} nor {QUARANTINE_FILE} found in {curated_dir}"
        return None, CheckResult(name, description, False, message=f"quarantine rate unknown: {reason}")

    frame = pd.DataFrame({"quarantine_rate": [rate]})
    planned = [
        _expect(name, "ExpectColumnMaxToBeBetween", ("quarantine_rate",), column="quarantine_rate", max_value=maximum)
    ]
    (check,) = _run_checks("quarantine", frame, planned, {name: description}, index_columns=[])
    check.observed = rate
    if not check.success and quarantine is not None and "reason" in quarantine.columns:
        top = quarantine["reason"].astype(str).value_counts().head(5)
        check.unexpected = [{"reason": reason, "count": int(count)} for reason, count in top.items()]
        check.message += "; top reasons: " + "; ".join(f"{reason} ({count})" for reason, count in top.items())
    return rate, check


# --------------------------------------------------------------------------- shard files (plain checks)


def _shard_checks(manifest: pd.DataFrame, curated_dir: Path) -> list[CheckResult]:
    """Shard files exist, agree with the manifest rows pointing into them, hold finite values.

    One shard is memory-mapped at a time and read one record at a time, so memory
    stays flat however large the dataset. Recomputing each record's statistics and
    comparing them with the manifest catches a record pointing at the wrong slot.
    """
    descriptions = {
        "shards.files": "every listed shard exists, loads, and has the dtype/rank of its kind "
        "(2D uint8 n*H*W, 3D float16 n*S*H*W)",
        "shards.shapes": "shard_index is within its shard and the shard's dimensions equal the manifest's",
        "shards.values": "stored values are finite and their mean/std/min/max match the manifest",
    }
    needed = {"record_id", "kind", "shard", "shard_index", "slices", "height", "width", *STAT_COLUMNS}
    missing = needed - set(manifest.columns)
    if missing:
        message = f"not run: missing column(s) {', '.join(sorted(missing))}"
        return [CheckResult(n, d, False, skipped=True, message=message) for n, d in descriptions.items()]

    problems: dict[str, list[tuple[str, str]]] = {name: [] for name in descriptions}  # check -> (record_id, what)
    shards_seen = 0
    rows_all = manifest.dropna(subset=["shard", "shard_index"])
    for shard, rows in rows_all.groupby("shard", sort=True):
        shards_seen += 1
        first_id = str(rows["record_id"].iloc[0])
        path = curated_dir / str(shard)
        if not path.is_file():
            problems["shards.files"].append((first_id, f"{shard}: file missing ({len(rows)} record(s) point at it)"))
            continue
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            problems["shards.files"].append((first_id, f"{shard}: cannot be loaded: {exc}"))
            continue
        kinds = sorted(set(rows["kind"].astype(str)))
        if len(kinds) != 1 or kinds[0] not in ("2d", "3d"):
            problems["shards.files"].append((first_id, f"{shard}: records of kinds {kinds} in one shard"))
            continue
        kind = kinds[0]
        dtype, rank = (np.dtype(np.uint8), 3) if kind == "2d" else (np.dtype(np.float16), 4)
        if array.dtype != dtype or array.ndim != rank:
            problems["shards.files"].append(
                (first_id, f"{shard}: {array.dtype} of rank {array.ndim}, expected {dtype} of rank {rank} for {kind}")
            )
            continue
        _check_shard_rows(str(shard), array, rows.sort_values("shard_index"), kind, problems)
        del array  # release the memory map before opening the next shard

    checks = []
    for name, description in descriptions.items():
        found = problems[name]
        check = CheckResult(
            name, description, success=not found, observed={"shards": shards_seen, "problems": len(found)}
        )
        if found:
            check.record_ids = list(dict.fromkeys(rid for rid, _ in found))[:SAMPLE_SIZE]
            check.unexpected = [what for _, what in found[:SAMPLE_SIZE]]
            more = f" (+{len(found) - 3} more)" if len(found) > 3 else ""
            check.message = "; ".join(f"{rid}: {what}" for rid, what in found[:3]) + more
        checks.append(check)
    return checks


def _check_shard_rows(shard: str, array: np.ndarray, rows: pd.DataFrame, kind: str, problems: dict) -> None:
    length, item_shape = array.shape[0], tuple(array.shape[1:])
    for row in rows.itertuples(index=False):
        record_id = str(row.record_id)
        try:
            _check_shard_row(shard, array, row, kind, length, item_shape, problems)
        except (TypeError, ValueError) as exc:  # e.g. a NaN height; the manifest checks name it too
            problems["shards.shapes"].append((record_id, f"{shard}: cannot check record: {exc}"))


def _check_shard_row(
    shard: str, array: np.ndarray, row, kind: str, length: int, item_shape: tuple, problems: dict
) -> None:
    record_id, index = str(row.record_id), int(row.shard_index)
    if not 0 <= index < length:
        problems["shards.shapes"].append((record_id, f"{shard}: shard_index {index} outside 0..{length - 1}"))
        return
    expected = (int(row.height), int(row.width)) if kind == "2d" else (int(row.slices), int(row.height), int(row.width))
    if item_shape != expected:
        problems["shards.shapes"].append((record_id, f"{shard}: stored shape {item_shape}, manifest says {expected}"))
        return
    values = np.asarray(array[index], dtype=np.float32)  # one record in memory, not the shard
    if kind == "3d" and not np.isfinite(values).all():
        problems["shards.values"].append((record_id, f"{shard}[{index}]: non-finite values"))
        return
    stored = {
        "mean": float(values.mean(dtype=np.float64)),
        "std": float(values.std(dtype=np.float64)),
        "min": float(values.min()),
        "max": float(values.max()),
    }
    listed = {stat: float(getattr(row, stat)) for stat in STAT_COLUMNS}
    # Statistics may be taken before uint8 rounding / float16 casting: compare loosely.
    # A non-finite listed value is statistics.finite's to report, not a mismatch here.
    scale = listed["std"] if math.isfinite(listed["std"]) else 0.0
    tolerance = max(1.0, 0.05 * scale) if kind == "2d" else max(0.05, 0.05 * scale)
    off = [
        f"{stat} {stored[stat]:.4g} vs {listed[stat]:.4g}"
        for stat in STAT_COLUMNS
        if math.isfinite(listed[stat]) and abs(stored[stat] - listed[stat]) > tolerance
    ]
    if off:
        problems["shards.values"].append(
            (record_id, f"{shard}[{index}]: stored statistics differ from manifest: {', '.join(off)}")
        )
