"""``radclip`` command line: the same functions the DVC stages call (pipelines/ call these commands).

Every command reads params once (``--params``, ``--profile``), runs one library
function and prints what it did. Progress goes to the terminal with rich.
"""

from __future__ import annotations

import contextlib
import enum
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from radclip.config import Params, ParamsError, load_params
from radclip.jobs.common import configure_logging


class Device(str, enum.Enum):  # typer's choices: the values of InferenceParams.device
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


app = typer.Typer(add_completion=False, no_args_is_help=True, help="RadCLIP: train, tune, evaluate, track and ship.")
console = Console(stderr=True)
_state: dict = {}


@app.callback()
def _global_options(
    params_file: Annotated[
        Optional[Path], typer.Option("--params", help="params file (default: ./params.yaml)")
    ] = None,
    profile: Annotated[Optional[str], typer.Option(help="overlay params/<profile>.yaml (e.g. paper)")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    device: Annotated[Optional[Device], typer.Option(
        help="where models run for inference (embed, zero-shot, evaluate, ablate, serve...; default: params' "
             "inference.device); auto: CUDA when torch sees a GPU")] = None,
) -> None:
    _state.clear()  # one invocation's params: a second one in the same process reads its own --params
    _state.update(params_file=params_file, profile=profile, quiet=quiet, device=device)
    configure_logging()


def _params() -> Params:
    if "params" not in _state:
        try:
            params = load_params(_state.get("params_file"), profile=_state.get("profile"))
            if _state.get("device") is not None:
                params = params.with_values({"inference.device": _state["device"].value})
            _state["params"] = params
        except ParamsError as error:
            console.print(f"[red]params error[/red]\n{error}")
            raise typer.Exit(2) from None
    return _state["params"]


@contextlib.contextmanager
def _model_location(params: Params, model: Optional[str]) -> Iterator[Optional[Path]]:
    """``--model``: a RadCLIP directory, an MLflow URI (downloaded for the block), or None (the pipeline's)."""
    import tempfile

    from radclip.io import mlflow_tracking as tracking

    if model is None:
        yield None
    elif tracking.is_model_uri(model):
        with tempfile.TemporaryDirectory(prefix="radclip-model-") as scratch:
            yield tracking.download_model(params, model, Path(scratch))
    else:
        yield Path(model)


@app.command("params")
def show_params(
    stage: Annotated[Optional[str], typer.Option(
        help="print what this stage last ran with "
             "(reports/params/<stage>.yaml: overlay and sweep best params applied)")] = None,
) -> None:
    """Print the effective params (after the profile overlay) as YAML and their digest, or a stage's as it ran."""
    import yaml

    from radclip.jobs.common import effective_params_path

    params = _params()
    if stage is not None:
        path = effective_params_path(params, stage)
        if not path.is_file():
            console.print(f"[red]params error[/red] {path}: stage {stage!r} has not run here (run `dvc repro` or "
                          f"`radclip {stage.replace('_', '-').split('-vanilla')[0]}`)")
            raise typer.Exit(1)
        typer.echo(path.read_text(), nl=False)
        return
    typer.echo(yaml.safe_dump(params.model_dump(mode="json", by_alias=True), sort_keys=False))
    console.print(f"params digest: {params.digest()}")


def _progress() -> bool:
    return not _state.get("quiet") and sys.stderr.isatty()  # bars only where a person watches


@app.command()
def phantoms() -> None:
    """Write the synthetic phantom collection (real formats) to paths.raw."""
    from radclip.jobs import phantoms as job

    job.run(_params(), progress=_progress())


@app.command()
def curate() -> None:
    """Curate every configured collection into shards + manifest + quarantine table + preprocessing contract."""
    from radclip.jobs import curate as job

    job.run(_params(), progress=_progress())


@app.command()
def validate() -> None:
    """Run the Great Expectations suite on the curated dataset; fails on a violation."""
    from radclip.data.validation import ValidationFailed
    from radclip.jobs import validate as job

    try:
        job.run(_params(), progress=_progress())
    except ValidationFailed as failure:
        console.print(f"[red]validation failed[/red]\n{failure}")
        raise typer.Exit(1) from None


@app.command("pretrain-general")
def pretrain_general() -> None:
    """Generate the general-domain corpus and train the embedded default's vanilla CLIP (both towers) on it."""
    from radclip.jobs import pretrain_general as job

    job.run(_params(), progress=_progress())


@app.command("init-model")
def init_model() -> None:
    """Save the starting weights (model.pretrained: the vanilla encoder) and their random-init baseline."""
    from radclip.jobs import init_model as job

    job.run(_params(), progress=_progress())


@app.command("pretrain-2d")
def pretrain_2d() -> None:
    """Fine-tune the 2D image encoder (text tower frozen) with Ray Train; logs to MLflow."""
    from radclip.jobs import pretrain_2d as job

    job.run(_params(), progress=_progress())


EncoderOption = Annotated[str, typer.Option(
    help="2D encoder: finetuned (the pipeline), vanilla or random (the ablation's baselines)")]


@app.command("embed-slices")
def embed_slices(encoder: EncoderOption = "finetuned") -> None:
    """Encode every slice of every curated volume once with a frozen 2D encoder (slice cache)."""
    from radclip.jobs import embed_slices as job

    job.run(_params(), encoder=encoder, progress=_progress())


@app.command("pretrain-adapter")
def pretrain_adapter() -> None:
    """Train RadCLIP's slice pooling adapter on the fine-tuned encoder's slice cache; logs to MLflow."""
    from radclip.jobs import pretrain_adapter as job

    job.run(_params(), progress=_progress())


@app.command()
def sweep(
    trials: Annotated[
        Optional[int], typer.Option(help="finished trials the study should hold (default: sweep.n_trials)")
    ] = None,
) -> None:
    """Optuna sweep over adapter heads, lr and temperature; continues the study if it exists.

    Run it in several terminals (or machines sharing sweep.storage) to work on one study together.
    """
    from radclip.jobs import sweep as job

    job.run(_params(), progress=_progress(), n_trials=trials)


@app.command()
def evaluate(
    model: Annotated[Optional[str], typer.Option(
        help="RadCLIP directory or MLflow URI (models:/<name>@<alias>, models:/<name>/<version>); "
             "default: the pipeline's final model")] = None,
    suite: Annotated[Optional[list[str]], typer.Option(help="evaluation collection(s); default: all")] = None,
) -> None:
    """Linear probe, image–text matching, zero-shot, retrieval and multi-label AUROC on the evaluation suites.

    3D suites are encoded with the evaluated model's own 2D encoder (a slice cache per encoder fingerprint).
    """
    from radclip.jobs import evaluate as job

    params = _params()
    with _model_location(params, model) as location:
        job.run(params, model=location, suites=suite or None, progress=_progress())


@app.command()
def ablate() -> None:
    """The ablation (RadCLIP Table III, widened): {random, vanilla, fine-tuned} encoder × {average pooling, adapter}
    plus the paper's mean-of-MHSA reducer, over ablate.seeds seeds, with the pre-registered verdicts."""
    from radclip.jobs import ablate as job

    job.run(_params(), progress=_progress())


@app.command("pretrain-lrclr")
def pretrain_lrclr() -> None:
    """LRCLR fine-tuning from the fine-tuned 2D encoder, two arms (lrclr: λ > 0; control: λ = 0), Ray Train."""
    from radclip.jobs import pretrain_lrclr as job

    job.run(_params(), progress=_progress())


@app.command()
def localise() -> None:
    """LRCLR's heatmaps against the lesion boxes of lrclr.suite, zero-shot of both arms, the verdicts."""
    from radclip.jobs import localise as job

    job.run(_params(), progress=_progress())


@app.command("finetune-cml")
def finetune_cml() -> None:
    """CXR-CML from the fine-tuned 2D encoder on cml.collection: arms control, meta, gauss and t (Ray Train),
    scored on cml.suite (macro AUROC total / base / rare, paired CIs, the verdicts)."""
    from radclip.jobs import finetune_cml as job

    job.run(_params(), progress=_progress())


# --------------------------------------------------------------------------- serving and the model registry

ModelOption = Annotated[Optional[str], typer.Option(
    help="RadCLIP directory or MLflow URI (models:/<name>@<alias>, models:/<name>/<version>); "
         "default: the pipeline's final model")]
InputsArgument = Annotated[list[Path], typer.Argument(
    help="PNG/JPEG/BMP/TIFF images, DICOM files or series folders, NIfTI (.nii/.nii.gz), .npy arrays")]
CollectionOption = Annotated[Optional[str], typer.Option(
    help="the collection the inputs come from: its CT window, as in curation")]
RegionOption = Annotated[
    str, typer.Option(help="region of the inputs (e.g. Chest): with --modality, picks the CT window")
]
ModalityOption = Annotated[str, typer.Option(help="modality of the inputs (e.g. CT)")]


def _source(collection: Optional[str], region: str, modality: str):
    from radclip.serving import Source

    return Source(collection=collection, region=region, modality=modality)


def _predictor(model: Optional[str]):
    """The model (directory or MLflow URI) ready to predict, preprocessing inputs by its own contract."""
    from radclip.core.device import DeviceUnavailable
    from radclip.core.preprocessing import ContractError
    from radclip.jobs.common import MODEL_FINAL, model_dir
    from radclip.serving import Predictor

    params = _params()
    try:
        with _model_location(params, model) as location:
            # Loaded into memory here, so the downloaded copy may go with the scratch folder.
            return Predictor.from_directory(location or model_dir(params, MODEL_FINAL),
                                            device=params.inference.device, bf16=params.inference.bf16)
    except (FileNotFoundError, ContractError) as error:
        console.print(f"[red]model error[/red] {error}")
        raise typer.Exit(1) from None
    except DeviceUnavailable as error:
        console.print(f"[red]device error[/red] {error}")
        raise typer.Exit(1) from None


def _input_error_exits(operation):
    from radclip.core.records import InputError

    try:
        return operation()
    except InputError as error:
        console.print(f"[red]input error[/red] {error}")
        raise typer.Exit(1) from None


@app.command()
def embed(
    paths: InputsArgument,
    model: ModelOption = None,
    output: Annotated[
        Optional[Path], typer.Option(help="save the (N, D) float32 embeddings as .npy instead of printing")
    ] = None,
    collection: CollectionOption = None,
    region: RegionOption = "",
    modality: ModalityOption = "",
) -> None:
    """Embed images and volumes with RadCLIP, preprocessed by the model's contract as curation prepared its data."""
    import numpy as np

    predictor = _predictor(model)
    embeddings = _input_error_exits(lambda: predictor.embed(paths, _source(collection, region, modality)))
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
    labels: Annotated[
        list[str], typer.Option("--labels", help="a candidate caption; repeat for each (--labels A --labels B)")
    ],
    model: ModelOption = None,
    collection: CollectionOption = None,
    region: RegionOption = "",
    modality: ModalityOption = "",
) -> None:
    """Zero-shot classification: the probability of each candidate caption for one image or volume."""
    predictor = _predictor(model)
    origin = _source(collection, region, modality)
    result = _input_error_exits(lambda: predictor.zero_shot(predictor.embed([path], origin), labels))
    for label, probability, score in zip(result.candidates, result.probabilities[0], result.scores[0]):
        typer.echo(f"{probability:.4f}  {label}  (cosine {score:+.4f})")
    console.print(f"prediction: {result.predictions[0]}")


def _registry_decision(operation):
    """Run a registry operation; its refusals (a missing metric, nothing to roll back) exit 1 with the reason."""
    from radclip.io.mlflow_registry import REGISTRY_ERRORS

    try:
        decision = operation()
    except REGISTRY_ERRORS as error:
        console.print(f"[red]registry error[/red] {error}")
        raise typer.Exit(1) from None
    console.print(decision.summary())
    return decision


@app.command()
def register() -> None:
    """Register the final model (alias challenger); the gate makes it champion if its metrics beat the champion's."""
    from radclip.jobs import register as job

    params = _params()
    _registry_decision(lambda: job.run(params, progress=_progress()))


@app.command()
def promote(
    version: Annotated[
        Optional[int], typer.Option(help="model version to promote (default: the challenger alias)")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="make it champion even if the gate refuses (recorded as a manual promotion)")
    ] = False,
) -> None:
    """Run the promotion gate for a version: it becomes champion only if it beats the current one."""
    from radclip.io import mlflow_registry as registry

    params = _params()
    _registry_decision(lambda: registry.promote(params, version, force=force))


@app.command()
def rollback() -> None:
    """Move the champion alias back to the previous champion; recorded in the champion history."""
    from radclip.io import mlflow_registry as registry

    params = _params()
    _registry_decision(lambda: registry.rollback(params))


@app.command()
def serve(
    alias: Annotated[str, typer.Option(help="the registered model's alias to serve")] = "champion",
    model: Annotated[
        Optional[str], typer.Option(help="an MLflow model URI instead (models:/name/3, runs:/id/model)")
    ] = None,
    host: Annotated[str, typer.Option(help="address to bind; other than 127.0.0.1 exposes the server")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 5001,
    workers: Annotated[int, typer.Option(help="server worker processes (each loads the model)")] = 1,
    path_root: Annotated[
        Optional[Path], typer.Option(help="accept server-side paths under this folder (default: uploads only)")
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="largest uploaded file, MiB")] = 64.0,
    max_rows: Annotated[int, typer.Option(help="most rows per request")] = 256,
) -> None:
    """Serve the registered model (by alias) over HTTP: POST /invocations with base64 images, captions or paths."""
    from radclip.core.device import DeviceUnavailable
    from radclip.io.mlflow_registry import REGISTRY_ERRORS
    from radclip.jobs import serve as job

    params = _params()
    refusals: tuple[type[Exception], ...] = (*REGISTRY_ERRORS, ValueError, DeviceUnavailable)
    try:
        status = job.run(params, model=model, alias=alias, host=host, port=port, workers=workers,
                         path_root=path_root, max_upload_bytes=int(max_upload_mb * 2**20), max_rows=max_rows)
    except refusals as error:
        console.print(f"[red]serve error[/red] {error}")
        raise typer.Exit(1) from None
    raise typer.Exit(status)


def main() -> None:
    app(prog_name="radclip")
