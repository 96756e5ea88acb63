"""``radclip`` command line: the same functions the DVC stages call (pipelines/ call these commands).

Every command reads params once (``--params``, ``--profile``), runs one library
function and prints what it did. Progress goes to the terminal with rich.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
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


@contextlib.contextmanager
def _model_location(params: Params, model: Optional[str]) -> Iterator[Path]:
    """``--model``: a RadCLIP directory, an MLflow URI (downloaded for the block), or the pipeline's final model."""
    import tempfile

    from radclip import tracking
    from radclip.training.stages import MODEL_FINAL, model_dir

    if model is None:
        yield model_dir(params, MODEL_FINAL)
    elif tracking.is_model_uri(model):
        with tempfile.TemporaryDirectory(prefix="radclip-model-") as scratch:
            yield tracking.download_model(params, model, Path(scratch))
    else:
        yield Path(model)


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


@app.command("init-model")
def init_model() -> None:
    """Save the starting weights (pretrained CLIP or the small config-built one): the vanilla encoder."""
    from radclip.training.stages import init_model as run

    console.print(f"init_model: starting weights in {run(_params())}")


@app.command("pretrain-2d")
def pretrain_2d() -> None:
    """Fine-tune the 2D image encoder (text tower frozen) with Ray Train; logs to MLflow."""
    from radclip.training.stages import pretrain_2d as run

    _print_fit("pretrain_2d", run(_params()))


EncoderOption = Annotated[str, typer.Option(help="2D encoder: finetuned (the pipeline) or vanilla (ablation)")]


@app.command("embed-slices")
def embed_slices(encoder: EncoderOption = "finetuned") -> None:
    """Encode every slice of every curated volume once with a frozen 2D encoder (slice cache)."""
    from radclip.training.stages import embed_slices as run, report_name

    params = _params()
    info = run(params, encoder=encoder, progress=not _state.get("quiet"))
    metrics = {k: info[k] for k in ("count", "embedding_dim", "max_slices", "seconds", "volumes_per_second")}
    write_metrics(params, f"{report_name('embed_slices', encoder)}.json", metrics)
    console.print(f"embed_slices ({encoder}): {info['count']} volumes cached at {info['volumes_per_second']:.1f} volumes/s")


@app.command("pretrain-adapter")
def pretrain_adapter(encoder: EncoderOption = "finetuned") -> None:
    """Train the slice pooling adapter on one encoder's slice cache (encoders frozen); logs to MLflow."""
    from radclip.training.stages import pretrain_adapter as run

    _print_fit(f"pretrain_adapter ({encoder})", run(_params(), encoder=encoder))


@app.command()
def sweep(
    trials: Annotated[Optional[int], typer.Option(help="finished trials the study should hold (default: sweep.n_trials)")] = None,
) -> None:
    """Optuna sweep over adapter heads, lr and temperature; continues the study if it exists.

    Run it in several terminals (or machines sharing sweep.storage) to work on one study together.
    """
    import multiprocessing

    from radclip.tuning import sweep as run, write_best

    params = _params()
    # Extra local workers share the study through its storage; this process is one of them.
    context = multiprocessing.get_context("spawn")
    helpers = [context.Process(target=run, args=(params,), kwargs={"n_trials": trials, "write_outputs": False})
               for _ in range(params.sweep.workers - 1)]
    for helper in helpers:
        helper.start()
    result = run(params, n_trials=trials)
    for helper in helpers:
        helper.join()
    if helpers:  # they may have finished trials after this process wrote its outputs
        result = write_best(params, result.mlflow_run_id)
    console.print(
        f"sweep {result.study}: best val loss {result.best_value:.4f} at trial {result.best_trial} {result.best_params}; "
        f"trials {result.trials['COMPLETE']} complete, {result.trials['PRUNED']} pruned, {result.trials['FAIL']} failed; "
        f"dashboard: optuna-dashboard {result.storage}"
    )


@app.command()
def evaluate(
    model: Annotated[Optional[str], typer.Option(
        help="RadCLIP directory or MLflow URI (models:/<name>@<alias>, models:/<name>/<version>); default: the pipeline's final model")] = None,
    suite: Annotated[Optional[list[str]], typer.Option(help="evaluation collection(s); default: all")] = None,
) -> None:
    """Linear probe, image–text matching, zero-shot, retrieval and multi-label AUROC on the evaluation suites."""
    from radclip.evaluation.evaluate import evaluate as run, write_report
    from radclip.training.stages import slice_cache_dir

    params = _params()
    pipeline_default = model is None and not suite
    with _model_location(params, model) as location:
        results = run(params, model_dir=location, slice_cache=slice_cache_dir(params), suites=suite or None,
                      figures=pipeline_default)
    if pipeline_default:
        write_report(params, results)
    for name, metrics in results.items():
        console.print(
            f"{name} ({metrics['kind']}): probe acc {metrics['probe_accuracy_mean']:.3f} ± {metrics['probe_accuracy_std']:.3f}, "
            f"F1 {metrics['probe_macro_f1_mean']:.3f} ± {metrics['probe_macro_f1_std']:.3f}; matching P@1 {metrics['matching_p1']:.3f}; "
            f"zero-shot top-1 {metrics['zero_shot_top1']:.3f}"
        )


@app.command()
def ablate() -> None:
    """The 2×2 ablation (RadCLIP Table III): {vanilla, fine-tuned} encoder × {average pooling, adapter}."""
    from radclip.evaluation.ablation import ENCODERS, ablate as run
    from radclip.training.stages import ADAPTED_MODELS, model_dir, slice_cache_dir

    params = _params()
    summary = run(
        params,
        models={encoder: model_dir(params, ADAPTED_MODELS[encoder]) for encoder in ENCODERS},
        slice_caches={encoder: slice_cache_dir(params, encoder) for encoder in ENCODERS},
    )
    typer.echo(summary["markdown"])
    for suite, check in summary["ordering"].items():
        verdict = "holds" if check["holds"] else "does NOT hold"
        console.print(f"{suite}: fine-tuned+adapter − vanilla+average = {check['gap']:+.3f} "
                      f"(fold std {check['fold_std']:.3f}): ordering {verdict}")


# --------------------------------------------------------------------------- serving and the model registry

ModelOption = Annotated[Optional[str], typer.Option(
    help="RadCLIP directory or MLflow URI (models:/<name>@<alias>, models:/<name>/<version>); default: the pipeline's final model")]
InputsArgument = Annotated[list[Path], typer.Argument(
    help="PNG/JPEG images, DICOM files or series folders, NIfTI (.nii/.nii.gz), .npy arrays")]


def _predictor(model: Optional[str]):
    """The model (directory or MLflow URI) ready to predict, preprocessing inputs as params.curate says."""
    from radclip.serving import Predictor, Preprocessing

    params = _params()
    try:
        with _model_location(params, model) as location:
            # Loaded into memory here, so the downloaded copy may go with the scratch folder.
            return Predictor.from_directory(location, Preprocessing.from_params(params))
    except FileNotFoundError as error:
        console.print(f"[red]model error[/red] {error}")
        raise typer.Exit(1) from None


def _input_error_exits(operation):
    from radclip.data.records import InputError

    try:
        return operation()
    except InputError as error:
        console.print(f"[red]input error[/red] {error}")
        raise typer.Exit(1) from None


@app.command()
def embed(
    paths: InputsArgument,
    model: ModelOption = None,
    output: Annotated[Optional[Path], typer.Option(help="save the (N, D) float32 embeddings as .npy instead of printing")] = None,
) -> None:
    """Embed images and volumes with RadCLIP, preprocessed as curation prepares records."""
    import numpy as np

    predictor = _predictor(model)
    embeddings = _input_error_exits(lambda: predictor.embed(paths))
    if output is None:
        for path, embedding in zip(paths, embeddings):
            typer.echo(json.dumps({"path": str(path), "embedding": [round(float(v), 6) for v in embedding]}))
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    np.save(output, embeddings)
    console.print(f"saved {len(paths)} embedding(s) of dimension {embeddings.shape[1]} to {output}")


@app.command("zero-shot")
def zero_shot(
    path: Annotated[Path, typer.Argument(help="an image, DICOM file or series folder, NIfTI or .npy array")],
    labels: Annotated[list[str], typer.Option("--labels", help="a candidate caption; repeat for each (--labels A --labels B)")],
    model: ModelOption = None,
) -> None:
    """Zero-shot classification: the probability of each candidate caption for one image or volume."""
    predictor = _predictor(model)
    result = _input_error_exits(lambda: predictor.zero_shot(predictor.embed([path]), labels))
    for label, probability, score in zip(result.candidates, result.probabilities[0], result.scores[0]):
        typer.echo(f"{probability:.4f}  {label}  (cosine {score:+.4f})")
    console.print(f"prediction: {result.predictions[0]}")


def _registry_decision(operation):
    """Run a registry operation; its refusals (a missing metric, nothing to roll back) exit 1 with the reason."""
    from mlflow.exceptions import MlflowException

    from radclip.registry import RegistryError

    try:
        decision = operation()
    except (RegistryError, FileNotFoundError, MlflowException) as error:
        console.print(f"[red]registry error[/red] {error}")
        raise typer.Exit(1) from None
    console.print(decision.summary())
    return decision


@app.command()
def register() -> None:
    """Register the final model (alias challenger); the gate makes it champion if its metrics beat the champion's."""
    import yaml

    from radclip import registry
    from radclip.training.stages import MODEL_FINAL, model_dir
    from radclip.tuning import best_params_path

    params = _params()
    report = params.resolve(params.paths.reports) / "evaluate.json"
    if not report.is_file():
        console.print(f"[red]registry error[/red] {report}: no evaluation results (run `radclip evaluate` first)")
        raise typer.Exit(1)
    evaluation = json.loads(report.read_text())
    best = best_params_path(params)
    sweep_result = (yaml.safe_load(best.read_text()) or {}) if best.exists() else {}
    extra_tags = {f"optuna.{key}": sweep_result[key] for key in ("study", "best_trial") if key in sweep_result}
    decision = _registry_decision(lambda: registry.register(
        params, model_dir=model_dir(params, MODEL_FINAL), evaluation=evaluation, extra_tags=extra_tags))
    write_metrics(params, "registry.json", decision.as_dict())


@app.command()
def promote(
    version: Annotated[Optional[int], typer.Option(help="model version to promote (default: the challenger alias)")] = None,
    force: Annotated[bool, typer.Option(help="make it champion even if the gate refuses (recorded as a manual promotion)")] = False,
) -> None:
    """Run the promotion gate for a version: it becomes champion only if it beats the current one."""
    from radclip import registry

    params = _params()
    _registry_decision(lambda: registry.promote(params, version, force=force))


@app.command()
def rollback() -> None:
    """Move the champion alias back to the previous champion; recorded in the champion history."""
    from radclip import registry

    params = _params()
    _registry_decision(lambda: registry.rollback(params))


def main() -> None:
    app(prog_name="radclip")


def run_stage(stage: str) -> None:
    """Entry for pipelines/<stage>.py: the DVC stage runs the CLI command of the same name.

    Arguments are global options (``--quiet``), then after ``--`` the command's own
    (``pipelines/embed_slices.py --quiet -- --encoder vanilla``).
    """
    args = sys.argv[1:]
    split = args.index("--") if "--" in args else len(args)
    app([*args[:split], stage.replace("_", "-"), *args[split + 1 :]], prog_name=f"pipelines/{stage}.py")
