"""Stage ``curate``: raw collections → shards, manifest, quarantine table and the preprocessing contract."""

from __future__ import annotations

from radclip.config import Params
from radclip.data.curate import CurationSummary, curate
from radclip.io import ray_cluster
from radclip.jobs.common import log, stage_main, write_effective_params, write_metrics

STAGE = "curate"
PARAMS = ("profile", "paths.curated", "data", "curate")


def run(params: Params, *, progress: bool = True) -> CurationSummary:
    settings = params.curate
    if settings.engine == "serial":
        summary = curate(params, progress=progress)
    else:
        # Ray tasks, 2 × workers in flight: memory stays flat, results in order (deterministic output). Kept
        # rather than Ray Data: a chunk returns its records' arrays and manifest rows, which the driver checks
        # for duplicates across chunks and writes into shards in input order; Ray Data would only add a
        # conversion of variable-shape pixels into Arrow blocks, while ordered gets over a bounded queue already
        # give the back-pressure, and a failed chunk is retried as a unit.
        with ray_cluster.ray_session(params, num_cpus=settings.workers if not params.ray.address else None):
            summary = curate(params, progress=progress, executor=lambda function, tasks: ray_cluster.run_ordered(
                function, tasks, in_flight=2 * settings.workers))
    write_metrics(params, "curate.json", {k: v for k, v in vars(summary).items() if k != "quarantine_reasons"})
    write_effective_params(params, STAGE, PARAMS)
    log.info("curated %d records (%d 2D, %d 3D) from %d inputs in %.1fs; quarantined %d (duplicates %d)",
             summary.records, summary.records_2d, summary.records_3d, summary.items, summary.seconds,
             summary.quarantined, summary.duplicates)
    for reason, count in summary.quarantine_reasons.items():
        log.info("  quarantine: %d × %s", count, reason)
    return summary


def main() -> None:
    stage_main(run)
