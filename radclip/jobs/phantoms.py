"""Stage ``phantoms``: the synthetic raw collection (real formats) in ``paths.raw``."""

from __future__ import annotations

import json

from radclip.config import Params
from radclip.data.phantoms import generate
from radclip.jobs.common import log, stage_main, write_effective_params

STAGE = "phantoms"
PARAMS = ("profile", "paths.raw", "phantoms")


def run(params: Params, *, progress: bool = True) -> dict:
    summary = generate(params)
    write_effective_params(params, STAGE, PARAMS)
    log.info("phantoms written to %s: %s", params.resolve(params.paths.raw), json.dumps(summary.get("totals", summary)))
    return summary


def main() -> None:
    stage_main(run)
