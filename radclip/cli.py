"""``radclip`` command line: the same functions the DVC stages call (pipelines/ call these commands).

Every command reads params once (``--params``, ``--profile``), runs one library
function and prints what it did. Progress goes to the terminal with rich.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from radclip.config import Params, ParamsError, load_params
from radclip.reports import write_metrics

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RadCLIP: train, tune, evaluate, track and ship.")
console = Console(stderr=True)
_state: dict = {}


@app.callback()
def _global_options(
    params_file: Annotated[Optional[Path], typer.Option("--params", help="params file (default: ./params.yaml)")] = None,
    profile: Annotated[Optional[str], typer.Option(help="overlay params/<profile>.yaml (e.g. paper)")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    _state.update(params_file=params_file, profile=profile, quiet=quiet)
    # Our own progress at INFO; libraries (GE is chatty at INFO) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("radclip").setLevel(logging.INFO)


def _params() -> Params:
    if "params" not in _state:
        try:
            _state["params"] = load_params(_state.get("params_file"), profile=_state.get("profile"))
        except ParamsError as error:
            console.print(f"[red]params error[/red]\n{error}")
            raise typer.Exit(2) from None
    return _state["params"]


@app.command("params")
def show_params() -> None:
    """Print the effective params (after the profile overlay) as YAML, and their digest."""
    import yaml

    params = _params()
    typer.echo(yaml.safe_dump(params.model_dump(mode="json", by_alias=True), sort_keys=False))
    console.print(f"params digest: {params.digest()}")


@app.command()
def phantoms() -> None:
    """Write the synthetic phantom collection (real formats) to paths.raw."""
    from radclip.data.phantoms import generate

    params = _params()
    summary = generate(params)
    console.print(f"phantoms written to {params.resolve(params.paths.raw)}: {json.dumps(summary.get('totals', summary))}")


@app.command()
def curate() -> None:
    """Curate every configured collection into shards + manifest + quarantine table."""
    from radclip.data.curate import curate as run_curation

    params = _params()
    summary = run_curation(params, progress=not _state.get("quiet"))
    metrics = {k: v for k, v in vars(summary).items() if k != "quarantine_reasons"}
    write_metrics(params, "curate.json", metrics)
    console.print(
        f"curated {summary.records} records ({summary.records_2d} 2D, {summary.records_3d} 3D) from {summary.items} "
        f"inputs in {summary.seconds:.1f}s; quarantined {summary.quarantined} (duplicates {summary.duplicates})"
    )
    for reason, count in summary.quarantine_reasons.items():
        console.print(f"  quarantine: {count} × {reason}")


@app.command()
def validate() -> None:
    """Run the Great Expectations suite on the curated dataset; fails on a violation."""
    from radclip.data.validation import ValidationFailed, validate_curated

    params = _params()
    try:
        report = validate_curated(params)
    except ValidationFailed as failure:
        console.print(f"[red]validation failed[/red]\n{failure}")
        raise typer.Exit(1) from None
    console.print(f"validation passed: {len(report.checks)} checks; report in {params.resolve(params.paths.reports) / 'validation'}")


def _print_fit(stage: str, result) -> None:
    console.print(
        f"{stage}: best val loss {result.best_val_loss:.4f} at epoch {result.best_epoch} "
        f"({len(result.history)} epochs, {result.workers} worker(s), {result.seconds:.0f}s); model in {result.model_dir}; "
        f"MLflow run {result.mlflow_run_id}"
    )


@app.command("pretrain-2d")
def pretrain_2d() -> None:
    """Fine-tune the 2D image encoder (text tower frozen) with Ray Train; logs to MLflow."""
    from radclip.training.stages import pretrain_2d as run

    _print_fit("pretrain_2d", run(_params()))


@app.command("embed-slices")
def embed_slices() -> None:
    """Encode every slice of every curated volume once with the frozen 2D encoder (slice cache)."""
    from radclip.training.stages import embed_slices as run

    params = _params()
    info = run(params, progress=not _state.get("quiet"))
    metrics = {k: info[k] for k in ("count", "embedding_dim", "max_slices", "seconds", "volumes_per_second")}
    write_metrics(params, "embed_slices.json", metrics)
    console.print(f"embed_slices: {info['count']} volumes cached at {info['volumes_per_second']:.1f} volumes/s")


@app.command("pretrain-adapter")
def pretrain_adapter() -> None:
    """Train the slice pooling adapter on the slice cache (encoders frozen); logs to MLflow."""
    from radclip.training.stages import pretrain_adapter as run

    _print_fit("pretrain_adapter", run(_params()))


@app.command()
def evaluate(
    model: Annotated[Optional[Path], typer.Option(help="RadCLIP directory (default: the final model of the pipeline)")] = None,
    suite: Annotated[Optional[list[str]], typer.Option(help="evaluation collection(s); default: all")] = None,
) -> None:
    """Linear probe, image–text matching, zero-shot and retrieval on the evaluation suites."""
    from radclip.evaluation.evaluate import evaluate as run, write_report
    from radclip.training.stages import CACHE_FINETUNED, MODEL_FINAL, model_dir

    params = _params()
    results = run(
        params,
        model_dir=model or model_dir(params, MODEL_FINAL),
        slice_cache=params.resolve(params.paths.slice_cache) / CACHE_FINETUNED,
        suites=suite or None,
    )
    if model is None and not suite:
        write_report(params, results)
    for name, metrics in results.items():
        console.print(
            f"{name} ({metrics['kind']}): probe acc {metrics['probe_accuracy_mean']:.3f} ± {metrics['probe_accuracy_std']:.3f}, "
            f"F1 {metrics['probe_macro_f1_mean']:.3f} ± {metrics['probe_macro_f1_std']:.3f}; matching P@1 {metrics['matching_p1']:.3f}; "
            f"zero-shot top-1 {metrics['zero_shot_top1']:.3f}"
        )


def main() -> None:
    app(prog_name="radclip")


def run_stage(stage: str) -> None:
    """Entry for pipelines/<stage>.py: the DVC stage runs the CLI command of the same name."""
    app([*sys.argv[1:], stage.replace("_", "-")], prog_name=f"pipelines/{stage}.py")
