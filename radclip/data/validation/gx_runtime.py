"""Great Expectations plumbing for curated-data validation.

One ephemeral GX 1.x context per process (pandas data source, no analytics, no
progress bars); each derived frame gets one dataframe asset and a whole-frame
batch definition, and its suite runs through a Checkpoint (one validation definition,
bounded result format). Inside :func:`data_docs` the Checkpoint's UpdateDataDocsAction
also renders GE's Data Docs (HTML: each suite and each validation result) into a folder.

The rendered pages' remote logo, whose URL GE stamps with the render time (a view counter for GE's
servers), is pointed at the site's own copy; the pages still load GE's styles and scripts from public CDNs
when a browser opens them (GE's template: nothing radclip runs sends anything).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import pandas as pd

SAMPLE_SIZE = 10  # offending values / record ids kept per check
DATA_DOCS_INDEX = "index.html"
_docs_site: ContextVar[str | None] = ContextVar("radclip_gx_docs_site", default=None)
_REMOTE_LOGO = re.compile(r"https://great-expectations-web-assets\.s3\.[a-z0-9-]+\.amazonaws\.com/logo-long\.png[^\"']*")
LOCAL_LOGO = "static/images/logo-long.png"  # shipped into every site by GE's SiteBuilder


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
        self._sites: set[str] = set()

    def docs_site(self, directory: Path) -> str:
        """The Data Docs site (a local folder) that renders into ``directory``, added to the context once."""
        directory = directory.resolve()
        name = "radclip-" + hashlib.sha1(str(directory).encode()).hexdigest()[:12]
        if name not in self._sites:
            self.context.add_data_docs_site(site_name=name, site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(directory)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            })
            self._sites.add(name)
        return name

    def validate(self, frame_name: str, frame: pd.DataFrame, expectations: list, index_columns: list[str]) -> list:
        """Validate ``frame`` against ``expectations`` through a Checkpoint; returns GE's per-expectation results."""
        if not expectations:
            return []
        gx = self.gx
        if frame_name not in self._batch_definitions:
            asset = self.source.add_dataframe_asset(frame_name)
            self._batch_definitions[frame_name] = asset.add_batch_definition_whole_dataframe("whole")
        name = f"radclip.{frame_name}"
        suite = self.context.suites.add_or_update(gx.ExpectationSuite(name=name, expectations=expectations))
        definition = self.context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=name, data=self._batch_definitions[frame_name], suite=suite))
        # SUMMARY keeps a bounded sample of offenders (COMPLETE would hold every one).
        result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_SIZE}
        if index_columns:
            result_format["unexpected_index_column_names"] = index_columns
        site = _docs_site.get()
        actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[site])] if site else []
        checkpoint = self.context.checkpoints.add_or_update(gx.Checkpoint(
            name=name, validation_definitions=[definition], actions=actions, result_format=result_format))
        outcome = checkpoint.run(batch_parameters={"dataframe": frame})
        [validation] = outcome.run_results.values()  # one validation definition: one result
        return list(validation.results)


_runtime: _GxRuntime | None = None


def _gx() -> _GxRuntime:
    global _runtime
    if _runtime is None:
        _runtime = _GxRuntime()
    return _runtime


@contextlib.contextmanager
def data_docs(directory: Path) -> Iterator[None]:
    """Within the block, every validation also renders into GE's Data Docs in ``directory`` (its
    :data:`DATA_DOCS_INDEX` the start page)."""
    token = _docs_site.set(_gx().docs_site(directory))
    try:
        yield
    finally:
        _docs_site.reset(token)
    _local_logo(directory)


def _local_logo(directory: Path) -> None:
    """Point each page's remote, time-stamped logo at the site's own copy (relative to the page)."""
    for page in directory.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        local = Path(*[".."] * (len(page.relative_to(directory).parts) - 1), LOCAL_LOGO).as_posix()
        rewritten = _REMOTE_LOGO.sub(local, html)
        if rewritten != html:
            page.write_text(rewritten, encoding="utf-8")
