"""Great Expectations plumbing for curated-data validation.

One ephemeral GX 1.x context per process (pandas data source, no analytics, no
progress bars); each derived frame gets one dataframe asset and a whole-frame
batch definition, and a suite is validated against it with a bounded result format.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

SAMPLE_SIZE = 10  # offending values / record ids kept per check


# --------------------------------------------------------------------------- Great Expectations runtime


class _GxRuntime:
    """One ephemeral context per process: creating contexts and assets is the slow part."""

    def __init__(self) -> None:
        # Imported here: GE takes seconds to import and most radclip commands never validate.
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        config = DataContextConfig(
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),  # no tqdm noise in stage logs
            store_backend_defaults=InMemoryStoreBackendDefaults(),
        )
        self.gx = gx
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        self.source = self.context.data_sources.add_pandas("radclip_curated")
        self._batch_definitions: dict[str, Any] = {}

    def validate(self, frame_name: str, frame: pd.DataFrame, expectations: list, index_columns: list[str]) -> list:
        """Validate ``frame`` against ``expectations``; returns GE's per-expectation results."""
        if not expectations:
            return []
        if frame_name not in self._batch_definitions:
            asset = self.source.add_dataframe_asset(frame_name)
            self._batch_definitions[frame_name] = asset.add_batch_definition_whole_dataframe("whole")
        batch = self._batch_definitions[frame_name].get_batch(batch_parameters={"dataframe": frame})
        suite = self.gx.ExpectationSuite(name=f"radclip.{frame_name}", expectations=expectations)
        # SUMMARY keeps a bounded sample of offenders (COMPLETE would hold every one).
        result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_SIZE}
        if index_columns:
            result_format["unexpected_index_column_names"] = index_columns
        return list(batch.validate(suite, result_format=result_format).results)


_runtime: _GxRuntime | None = None


def _gx() -> _GxRuntime:
    global _runtime
    if _runtime is None:
        _runtime = _GxRuntime()
    return _runtime
