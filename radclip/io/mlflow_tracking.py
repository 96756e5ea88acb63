"""The one place that talks to MLflow: where runs are stored, and what every run carries.

Metadata goes to SQLite (``<project>/mlflow.db``, an *absolute* path because Ray workers
and DVC experiments run in other directories; MLflow 3 keeps the ``./mlruns`` file store
in maintenance mode), artifacts to ``mlruns/<experiment>/<run id>/artifacts`` under the
project root. The ``MLFLOW_TRACKING_URI`` environment variable overrides both, e.g. for a
tracking server. ``configure`` exports the URI it chose (MLflow does), so processes started
afterwards (Ray workers, subprocesses) inherit the same store.

Every run made through ``start_run`` carries the effective params (flattened to dotted
keys) and lineage tags that tie it to the code (``git.commit``, ``git.dirty``), the data
(``data.curated_hash``: the curated dataset's md5 from ``dvc.lock``) and the config
(``params.digest``, ``params.profile``). Only params, metrics and our own files are
logged: nothing read from DICOM headers ever reaches the tracking store.

Other modules use the thin wrappers here instead of importing mlflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import mlflow
import yaml
from mlflow.entities import LoggedModel, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from radclip.config import Params, project_root

log = logging.getLogger("radclip.mlflow")

UNKNOWN = "unknown"
DB_FILE = "mlflow.db"
DVC_LOCK = "dvc.lock"
CURATE_STAGE = "curate"
PARAMS_ARTIFACT = "params.json"  # the full effective params, in case a flattened value was truncated
MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
_TRUNCATED = "...[truncated, see params.json]"
# A dict key may become part of a dotted param key only if it cannot be confused with the
# separator and MLflow accepts it; otherwise the whole dict is logged as one JSON value.
_PLAIN_KEY = re.compile(r"[\w\- ]{1,100}")
_GIT_TIMEOUT_S = 10

# Tag names, public so other modules and the report code can query runs by them.
TAG_STAGE = "radclip.stage"
TAG_GIT_COMMIT = "git.commit"
TAG_GIT_DIRTY = "git.dirty"
TAG_DATA_HASH = "data.curated_hash"
TAG_PARAMS_DIGEST = "params.digest"
TAG_PROFILE = "params.profile"
# On a LoggedModel: what its weights hash to (how a model directory finds the LoggedModel it was logged as),
# the stage that trained it, and the pipeline evaluation whose metrics `register` gates it on.
TAG_MODEL_DIGEST = "radclip.model_digest"
TAG_EVALUATION_RUN = "radclip.evaluation_run_id"


# --------------------------------------------------------------------------- where runs go


def _has_scheme(uri: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri) is not None


def _absolute_sqlite(uri: str) -> str:
    """``sqlite:///relative.db`` made absolute against the project root (other URIs unchanged)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri != prefix + ":memory:":
        return prefix + str(project_root() / uri[len(prefix) :])
    return uri


# mlflow.set_tracking_uri/set_registry_uri also export MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI
# (so child processes inherit them). A value we exported ourselves from params must not
# later count as the user's override, or the first params seen in a process would stick.
_exported_by_configure: dict[str, str] = {}


def _env_override(name: str) -> str | None:
    value = os.environ.get(name)
    if value and value != _exported_by_configure.get(name):
        return value
    return None


def tracking_uri(params: Params) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``params.mlflow.tracking_uri``, else the project's SQLite file."""
    from_env = _env_override("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    if params.mlflow.tracking_uri:
        return _absolute_sqlite(params.mlflow.tracking_uri)
    return f"sqlite:///{project_root() / DB_FILE}"


def registry_uri(params: Params) -> str:
    """``MLFLOW_REGISTRY_URI`` if set, else the tracking URI (one store for runs and models)."""
    return _env_override("MLFLOW_REGISTRY_URI") or tracking_uri(params)


def artifact_location(params: Params) -> str:
    """``params.mlflow.artifact_root`` as a URI: a path resolves against the project root (``file://``)."""
    root = params.mlflow.artifact_root
    if _has_scheme(root):
        return root
    return params.resolve(root).resolve().as_uri()


def experiment_artifact_location(params: Params) -> str:
    """Where a new experiment keeps its runs' artifacts: ``<artifact root>/<experiment name>``.

    MLflow puts a run's files at ``<experiment location>/<run id>/artifacts``; one folder per
    experiment keeps ``mlruns/`` readable when sweeps or tests use experiments of their own.
    """
    folder = re.sub(r"[^\w.-]+", "_", params.mlflow.experiment).strip("._") or "experiment"
    return f"{artifact_location(params).rstrip('/')}/{folder}"


def is_local_store(uri: str) -> bool:
    """A store only processes of this machine can write (SQLite, a file path), not a tracking server."""
    return uri.startswith("sqlite:") or uri.startswith("file:") or not _has_scheme(uri)


def configure(params: Params) -> str:
    """Point MLflow at the store, create or reuse the experiment; returns its id.

    A new experiment gets ``experiment_artifact_location`` as its artifact location when the store is local (or the
    artifact root is itself a URI); a tracking server otherwise decides where artifacts go. An
    existing experiment keeps the location it was created with (MLflow cannot move it).
    """
    uri, registry = tracking_uri(params), registry_uri(params)
    for name, value in (("MLFLOW_TRACKING_URI", uri), ("MLFLOW_REGISTRY_URI", registry)):
        if _env_override(name) is None:
            _exported_by_configure[name] = value
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry)
    client = MlflowClient(tracking_uri=uri)
    name = params.mlflow.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location: str | None = experiment_artifact_location(params)
        if not (is_local_store(uri) or _has_scheme(params.mlflow.artifact_root)):
            location = None
        try:
            experiment_id = client.create_experiment(name, artifact_location=location)
        except MlflowException:
            # Another process (a Ray worker, a parallel DVC experiment) created it first.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


# --------------------------------------------------------------------------- what runs carry


def _param_value(value: Any) -> str:
    # JSON spelling for null/booleans/lists, as in params.yaml, rather than Python's None/True.
    text = value if isinstance(value, str) else json.dumps(value)
    if len(text) > MAX_PARAM_VALUE:
        text = text[: MAX_PARAM_VALUE - len(_TRUNCATED)] + _TRUNCATED
    return text


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, Mapping) and value and all(isinstance(k, str) and _PLAIN_KEY.fullmatch(k) for k in value):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else key, out)
    else:
        out[prefix] = _param_value(value)


def flatten_params(params: Params) -> dict[str, str]:
    """Params as MLflow params: dotted keys (``curate.image_size``), lists and odd dicts as JSON."""
    flat: dict[str, str] = {}
    _flatten(params.model_dump(mode="json", by_alias=True), "", flat)
    return flat


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_state(root: Path | None = None) -> tuple[str, str]:
    """(HEAD commit, "true"/"false" for uncommitted changes to tracked files); "unknown" outside git."""
    root = root or project_root()
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return UNKNOWN, UNKNOWN
    # Tracked files only: untracked files (data, scratch) are not part of the code version.
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    dirty = UNKNOWN if status is None else ("true" if status else "false")
    return commit, dirty


def _dvc_lock_outputs(params: Params) -> dict[str, list[Mapping[str, Any]]]:
    """Each stage's outputs as ``dvc.lock`` records them (``{stage: [{"path", "md5", ...}]}``); empty without one."""
    try:
        # libyaml when present: dvc.lock lists every output and parses ~10x faster in C.
        lock = yaml.load((project_root() / DVC_LOCK).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        stages = lock["stages"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return {}
    if not isinstance(stages, Mapping):
        return {}
    return {str(name): [out for out in stage.get("outs") or [] if isinstance(out, Mapping) and "path" in out]
            for name, stage in stages.items() if isinstance(stage, Mapping)}


def dvc_output_hash(params: Params, path: str | Path, stage: str | None = None) -> str:
    """The md5 DVC recorded for the output at ``path`` (of ``stage``, or of any stage) in ``dvc.lock``, or
    "unknown" (no lock, or nothing there wrote that path)."""
    wanted = params.resolve(str(path)).resolve()
    for name, outs in _dvc_lock_outputs(params).items():
        if stage is not None and name != stage:
            continue
        for out in outs:
            if params.resolve(str(out["path"])).resolve() == wanted:
                return str(out.get("md5") or UNKNOWN)
    return UNKNOWN


def curated_data_hash(params: Params) -> str:
    """The md5 DVC recorded for the curate stage's curated output in ``dvc.lock``, or "unknown"."""
    return dvc_output_hash(params, params.paths.curated, CURATE_STAGE)


def lineage_tags(params: Params, stage: str) -> dict[str, str]:
    commit, dirty = git_state()
    return {
        TAG_STAGE: stage,
        TAG_GIT_COMMIT: commit,
        TAG_GIT_DIRTY: dirty,
        TAG_DATA_HASH: curated_data_hash(params),
        TAG_PARAMS_DIGEST: params.digest(),
        TAG_PROFILE: params.profile,
    }


# --------------------------------------------------------------------------- runs


def run_address(tracking: str, experiment_id: str, run_id: str) -> str:
    """Where a person opens a run: the tracking server's page, or for a local store the ``mlflow ui`` command
    that serves it and the page there."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    if tracking.startswith(("http://", "https://")):
        return f"{tracking.rstrip('/')}/{page}"
    return f"`mlflow ui --backend-store-uri {tracking}`, then http://127.0.0.1:5000/{page}"


def _end_through(run_id: str, status: str) -> None:
    """End the active runs down to and including ``run_id`` (runs the block left open first)."""
    while (active := mlflow.active_run()) is not None:
        mlflow.end_run(status)
        if active.info.run_id == run_id:
            return
    # Not on this thread's stack any more (someone ended it): make sure it is not left RUNNING.
    client = MlflowClient()
    if client.get_run(run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
        client.set_terminated(run_id, status)


@contextlib.contextmanager
def start_run(
    params: Params,
    *,
    stage: str,
    run_name: str | None = None,
    nested: bool = False,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """A run with the flattened params and lineage tags; FINISHED on success, FAILED on an exception.

    ``nested=True`` makes it a child of the active run (``mlflow.parentRunId``);
    ``parent_run_id`` names a parent that is not active in this thread (e.g. the driver's
    sweep run, seen from elsewhere). ``tags`` (e.g. ``{"ray.workers": 2}``) are added last.
    An interrupt (Ctrl-C) ends the run KILLED; the exception always propagates.
    """
    configure(params)
    run_tags = lineage_tags(params, stage)
    run_tags.update({str(key): str(value) for key, value in (tags or {}).items()})
    active = mlflow.start_run(run_name=run_name, nested=nested, parent_run_id=parent_run_id, tags=run_tags)
    run_id = active.info.run_id
    # A stage's own run is announced; its child runs (trials, cells, arms) only at debug level.
    log.log(logging.DEBUG if nested or parent_run_id else logging.INFO, "MLflow run %s (%s): %s", run_id,
            run_name or stage, run_address(mlflow.get_tracking_uri(), active.info.experiment_id, run_id))
    try:
        mlflow.log_params(flatten_params(params))
        mlflow.log_dict(params.model_dump(mode="json", by_alias=True), PARAMS_ARTIFACT)
        yield active
    except BaseException as exc:
        failed = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
        _end_through(run_id, RunStatus.to_string(failed))
        raise
    else:
        _end_through(run_id, RunStatus.to_string(RunStatus.FINISHED))


def active_run_id() -> str | None:
    """The id of this thread's active run, or None (to pass a parent to other processes)."""
    run = mlflow.active_run()
    return run.info.run_id if run else None


def log_metrics(metrics: Mapping[str, float], step: int | None = None, *, run_id: str | None = None,
                model_id: str | None = None) -> None:
    """Log numbers (floats, ints, 0-d tensors) to the active run, or to ``run_id`` from a thread where it is
    not active (the driver's thread that logs Ray Train's epochs).
    ``model_id`` links them to that LoggedModel as well (its metrics in MLflow's Logged Models view)."""
    values = {key: float(value) for key, value in metrics.items()}
    if run_id is None:
        mlflow.log_metrics(values, step=step, model_id=model_id)
        return
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, metrics=[Metric(key, value, now, step or 0) for key, value in values.items()])


def log_artifacts(local_dir: str | Path, artifact_path: str | None = None) -> None:
    """Copy a local folder's files into the active run's artifacts (under ``artifact_path``)."""
    mlflow.log_artifacts(str(local_dir), artifact_path)


def log_artifact(local_file: str | Path, artifact_path: str | None = None) -> None:
    """Copy one local file into the active run's artifacts (under ``artifact_path``)."""
    mlflow.log_artifact(str(local_file), artifact_path)


def log_artifact_to(run_id: str, local_file: str | Path, artifact_path: str | None = None) -> None:
    """A file into a run that may have ended (the effective params of a training job)."""
    MlflowClient().log_artifact(run_id, str(local_file), artifact_path)


def log_dict(obj: Mapping[str, Any] | list, name: str) -> None:
    """Write ``obj`` as an artifact file ``name`` (``.json`` or ``.yaml``/``.yml`` decides the format)."""
    mlflow.log_dict(cast(dict[str, Any], obj), name)  # MLflow's annotation says dict; it dumps lists as well


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set tags on the active run (values as strings)."""
    mlflow.set_tags({str(key): str(value) for key, value in tags.items()})


def set_run_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    """Set tags on a run that is not the active one (e.g. a finished sweep trial)."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, str(key), str(value))


# --------------------------------------------------------------------------- datasets and LoggedModels


def log_dataset_input(params: Params, data_dir: str | Path, *, context: str, model_id: str | None = None) -> None:
    """Record ``data_dir`` (the curated dataset, a slice cache) as an input of the active run, its digest the md5
    DVC recorded for it (``unknown`` outside a DVC pipeline); ``model_id`` links it to that LoggedModel too."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import LoggedModelInput

    path = params.resolve(str(data_dir)).resolve()
    with warnings.catch_warnings():
        # MLflow registers its local-artifact source class twice and warns that the path is ambiguous between them.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        source = resolve_dataset_source(str(path))
    # MetaDataset is MLflow's documented dataset-by-reference; its base class declares `profile` abstract for
    # type checkers only (it instantiates fine).
    dataset = MetaDataset(source=source, name=path.name, digest=dvc_output_hash(params, path))  # type: ignore[abstract]
    mlflow.log_input(dataset, context=context, model=LoggedModelInput(model_id) if model_id else None)


def tree_digest(root: str | Path, pattern: str = "*") -> str:
    """SHA-256 over the files under ``root`` that match ``pattern``: each relative path and its bytes, in
    sorted order, so a copy of the tree anywhere gives the same digest (files are read in blocks)."""
    root = Path(root)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob(pattern) if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def model_digest(model_dir: str | Path) -> str:
    """The :func:`tree_digest` of a saved model directory: the same weights, config and preprocessing
    contract give the same digest wherever the directory is copied."""
    return tree_digest(model_dir)


def find_logged_model(params: Params, model_dir: str | Path) -> LoggedModel | None:
    """The newest LoggedModel of the experiment whose weights are those in ``model_dir`` (by
    :func:`model_digest`), or None: then the directory was never logged in this store."""
    experiment_id = configure(params)
    found = mlflow.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"tags.`{TAG_MODEL_DIGEST}` = '{model_digest(model_dir)}'",
        order_by=[{"field_name": "creation_time", "ascending": False}], max_results=1, output_format="list")
    return found[0] if found else None


def set_logged_model_tags(model_id: str, tags: Mapping[str, Any]) -> None:
    mlflow.set_logged_model_tags(model_id, {str(key): str(value) for key, value in tags.items()})


# --------------------------------------------------------------------------- models by URI

MODEL_URI_SCHEMES = ("models:/", "runs:/")


def is_model_uri(value: str) -> bool:
    return str(value).startswith(MODEL_URI_SCHEMES)


def download_model(params: Params, uri: str, dst: Path) -> Path:
    """``models:/<name>@<alias>`` (or ``models:/<name>/<version>``, ``runs:/<id>/<path>``) → a local
    RadCLIP directory under ``dst``: the folder of the artifacts that holds the saved model's config."""
    from mlflow.exceptions import MlflowException

    configure(params)
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as error:
        raise FileNotFoundError(
            f"{uri}: cannot resolve in the MLflow registry at {registry_uri(params)}: {error}"
        ) from None
    from radclip.core.models.radclip import CONFIG_FILE, FORMAT_NAME

    candidates = [local] if (local / CONFIG_FILE).exists() else sorted(p.parent for p in local.rglob(CONFIG_FILE))
    for candidate in candidates:
        try:
            config = json.loads((candidate / CONFIG_FILE).read_text())
        except ValueError:
            continue  # some other JSON-ish config.json in the artifacts
        if isinstance(config, dict) and config.get("format") == FORMAT_NAME:
            return candidate
    raise FileNotFoundError(f"{uri}: the artifacts hold no RadCLIP model (no radclip {CONFIG_FILE} under {local})")

