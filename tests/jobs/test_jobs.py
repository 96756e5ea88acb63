"""radclip.jobs: one job per DVC stage whose PARAMS are the stage's dvc.yaml params, the effective params each
stage writes (sweep best params applied) and `radclip params --stage`, and the schema defaults vs params.yaml."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from helpers import PROJECT_ROOT, tiny_params_dict
from radclip.config import Params, load_params

DVC_YAML = PROJECT_ROOT / "dvc.yaml"
PROFILE_KEY = "profile"
OVERLAY_FILE = "params/paper.yaml"  # the profile overlay: a mapping in a stage's params, not a key of params.yaml
EFFECTIVE_OUT = "${paths.reports}/params/%s.yaml"


def _stages() -> dict[str, dict]:
    return yaml.safe_load(DVC_YAML.read_text())["stages"]


def _definition(stage: dict) -> dict:
    """A stage's body: the ``do`` of a foreach stage, else the stage itself."""
    return stage["do"] if "foreach" in stage else stage


def _out_paths(definition: dict) -> list[str]:
    return [next(iter(out)) if isinstance(out, dict) else out for out in definition.get("outs", [])]


def _dvc_param_keys(definition: dict) -> set[str]:
    """The stage's params.yaml keys, without ``profile`` and the overlay file's mapping."""
    keys: set[str] = set()
    for entry in definition.get("params", []):
        if isinstance(entry, dict):
            unexpected = set(entry) - {OVERLAY_FILE}
            assert not unexpected, f"params from files other than params.yaml / {OVERLAY_FILE}: {sorted(unexpected)}"
            continue
        keys.add(entry)
    return keys - {PROFILE_KEY}


STAGES = sorted(_stages())


def test_dvc_yaml_has_every_stage_of_the_pipeline():
    assert {"phantoms", "curate", "validate", "init_model", "pretrain_2d", "embed_slices", "sweep",
            "pretrain_adapter", "evaluate", "ablate", "register"} <= set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_job_params_are_the_stage_params_of_dvc_yaml(stage):
    job = importlib.import_module(f"radclip.jobs.{stage}")
    assert job.STAGE == stage
    assert isinstance(job.PARAMS, tuple) and callable(job.run) and callable(job.main)
    definition = _definition(_stages()[stage])
    assert _dvc_param_keys(definition) == set(job.PARAMS) - {PROFILE_KEY}, (
        f"dvc.yaml stage {stage!r} params differ from radclip.jobs.{stage}.PARAMS")
    Params().digest(*job.PARAMS)  # every key names a section of the schema


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_outputs_its_effective_params(stage):
    from radclip.jobs.common import report_name

    raw = _stages()[stage]
    outs = _out_paths(_definition(raw))
    if "foreach" in raw:
        assert EFFECTIVE_OUT % "${item.report}" in outs
        for encoder, item in raw["foreach"].items():  # the item's report is the job's per-encoder report name
            assert item["report"] == report_name(stage, encoder), (stage, encoder)
    else:
        assert EFFECTIVE_OUT % stage in outs


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_runs_its_job_through_its_pipeline_script(stage):
    raw = _stages()[stage]
    definition = _definition(raw)
    expected = f"python pipelines/{stage}.py" + (" --encoder ${key}" if "foreach" in raw else "")
    assert definition["cmd"] == expected
    script = PROJECT_ROOT / "pipelines" / f"{stage}.py"
    assert f"from radclip.jobs.{stage} import main" in script.read_text()
    assert f"pipelines/{stage}.py" in definition["deps"] and f"radclip/jobs/{stage}.py" in definition["deps"]


# --------------------------------------------------------------------------- effective params

BEST = {"heads": 8, "lr": 0.0123, "temperature": 0.0456}  # none of them params.yaml's


@pytest.fixture
def tmp_project(tmp_path) -> tuple[Params, Path]:
    """Tiny params under ``tmp_path`` applying the sweep's best params, and a sweeps/best_params.yaml."""
    from radclip.jobs.common import best_params_path

    raw = tiny_params_dict(str(tmp_path), sweep={"apply_best": True})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(params_file)
    path = best_params_path(params)
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump({"study": "radclip-adapter-test", "best_trial": 3, "objective": "val_loss",
                                    "value": 1.25, "params": BEST}))
    return params, params_file


def test_effective_params_of_pretrain_adapter_show_the_sweeps_best_values(tmp_project):
    from radclip.jobs import pretrain_adapter
    from radclip.jobs.common import effective_params_path, write_effective_params

    params, _ = tmp_project
    assert (params.model.adapter.heads, params.train_adapter.lr, params.loss.temperature) != tuple(BEST.values())
    used = pretrain_adapter.adapter_params(params)
    path = write_effective_params(used, pretrain_adapter.STAGE, pretrain_adapter.PARAMS, {"encoder": "finetuned"})
    assert path == effective_params_path(params, "pretrain_adapter")
    assert path.parent == params.resolve(params.paths.reports) / "params"
    written = yaml.safe_load(path.read_text())
    assert written["stage"] == "pretrain_adapter" and written["options"] == {"encoder": "finetuned"}
    assert set(written["params"]) == set(pretrain_adapter.PARAMS)
    assert written["params"]["model.adapter"]["heads"] == BEST["heads"]
    assert written["params"]["train_adapter"]["lr"] == pytest.approx(BEST["lr"])
    assert written["params"]["loss"]["temperature"] == pytest.approx(BEST["temperature"])
    assert written["digest"] == used.digest(*pretrain_adapter.PARAMS) != params.digest(*pretrain_adapter.PARAMS)


@pytest.fixture
def cli():
    from radclip import cli

    return cli


def test_each_cli_invocation_reads_its_own_params_file(tmp_path, cli):
    # Regression: the parsed params were cached across invocations in one process.
    printed = []
    for seed in (1, 2):
        file = tmp_path / f"params-{seed}.yaml"
        file.write_text(f"evaluate:\n  protocol_seed: {seed}\n")
        result = CliRunner().invoke(cli.app, ["--params", str(file), "params"])
        assert result.exit_code == 0, result.output
        printed.append(yaml.safe_load(result.stdout)["evaluate"]["protocol_seed"])
    assert printed == [1, 2]


def test_cli_device_option_overrides_inference_device_for_every_command(tmp_path, cli):
    file = tmp_path / "params.yaml"
    file.write_text("inference:\n  device: cuda\n")
    from_file = CliRunner().invoke(cli.app, ["--params", str(file), "params"])
    overridden = CliRunner().invoke(cli.app, ["--params", str(file), "--device", "cpu", "params"])
    assert from_file.exit_code == 0 and overridden.exit_code == 0, from_file.output + overridden.output
    assert yaml.safe_load(from_file.stdout)["inference"]["device"] == "cuda"
    assert yaml.safe_load(overridden.stdout)["inference"] == {"device": "cpu", "bf16": True}
    refused = CliRunner().invoke(cli.app, ["--params", str(file), "--device", "gpu", "params"])
    assert refused.exit_code == 2 and "'gpu' is not one of" in refused.output.replace("\n", " ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal needs a machine without a GPU")
def test_cli_embed_on_cuda_without_a_gpu_exits_1_with_a_device_error(tmp_path, cli):
    image = tmp_path / "x.npy"
    np.save(image, np.zeros((8, 8), np.float32))
    model = tmp_path / "model"
    model.mkdir()  # never read: the device is refused before the model directory is opened
    result = CliRunner().invoke(cli.app, ["--device", "cuda", "embed", str(image), "--model", str(model)])
    assert result.exit_code == 1, result.output
    assert "device error" in result.output and "torch sees no CUDA device" in result.output.replace("\n", " ")


def test_ray_data_actors_run_where_ray_gives_them_gpus_and_contrary_settings_are_refused():
    from radclip.config import ParamsError
    from radclip.jobs.embed_slices import actor_device

    def settings(device: str, gpus: float) -> Params:
        return Params().with_values({"inference.device": device, "embed.num_gpus": gpus})

    assert actor_device(settings("auto", 0.0)) == actor_device(settings("cpu", 0.0)) == "cpu"
    assert actor_device(settings("auto", 1.0)) == actor_device(settings("cuda", 0.5)) == "cuda"
    with pytest.raises(ParamsError, match="inference.device is cuda but embed.num_gpus is 0"):
        actor_device(settings("cuda", 0.0))
    with pytest.raises(ParamsError, match="inference.device is cpu but embed.num_gpus is 1.0"):
        actor_device(settings("cpu", 1.0))


def test_cli_prints_the_effective_params_a_stage_ran_with(tmp_project, cli):
    from radclip.jobs import pretrain_adapter
    from radclip.jobs.common import write_effective_params

    params, params_file = tmp_project
    path = write_effective_params(pretrain_adapter.adapter_params(params), pretrain_adapter.STAGE,
                                  pretrain_adapter.PARAMS, {"encoder": "finetuned"})
    result = CliRunner().invoke(cli.app, ["--params", str(params_file), "params", "--stage", "pretrain_adapter"])
    assert result.exit_code == 0, result.output
    assert result.stdout == path.read_text()
    assert yaml.safe_load(result.stdout)["params"]["model.adapter"]["heads"] == BEST["heads"]


def test_cli_params_of_a_stage_that_has_not_run_exits_1_naming_the_file(tmp_project, cli):
    from radclip.jobs.common import effective_params_path

    params, params_file = tmp_project
    result = CliRunner().invoke(cli.app, ["--params", str(params_file), "params", "--stage", "no_such_stage"])
    assert result.exit_code == 1
    missing = effective_params_path(params, "no_such_stage")
    assert not missing.exists()
    assert str(missing) in result.output.replace("\n", "")  # rich folds long paths at the terminal width


# --------------------------------------------------------------------------- defaults in one place


def _differences(schema: Any, file: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ (lists compared whole), with (schema default, params.yaml)."""
    if isinstance(schema, dict) and isinstance(file, dict):
        found = []
        for key in sorted(set(schema) | set(file)):
            dotted = f"{prefix}.{key}" if prefix else key
            found += _differences(schema.get(key, "<absent>"), file.get(key, "<absent>"), dotted)
        return found
    return [] if schema == file else [(prefix, schema, file)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


# Not defaults but the embedded default's inputs: where the phantom collections live (the schema has no
# collections of its own: a user's data is configuration), and the starting CLIP, an output of this
# pipeline's pretrain_general stage (the schema's None builds a fresh CLIP, what library users and tests get),
# and the evaluation suites, which name those collections (the schema's [] scores every evaluation collection).
DATA_NOT_DEFAULTS = ("data.collections", "model.pretrained", "evaluate.suites")


def test_schema_defaults_equal_params_yaml():
    """Defaults live in one place: ``Params()`` (the schema's defaults) is what params.yaml says, section by section."""
    schema = Params().model_dump(mode="json", by_alias=True)
    file = load_params(PROJECT_ROOT / "params.yaml").model_dump(mode="json", by_alias=True)
    assert list(schema) == list(file)
    differing = [difference for section in schema for difference in _differences(schema[section], file[section], section)
                 if difference[0] not in DATA_NOT_DEFAULTS]
    assert not differing, "schema default != params.yaml:\n" + "\n".join(
        f"  {key}: {_short(default)} != {_short(value)}" for key, default, value in differing)


# --------------------------------------------------------------------------- progress


@pytest.mark.parametrize(("terminal", "argv", "bars"),
                         [(True, [], True), (True, ["--quiet"], False), (False, [], False)],
                         ids=["terminal", "terminal-quiet", "not-a-terminal"])
def test_stage_progress_bars_show_only_on_a_terminal_unless_quiet(monkeypatch, tmp_path, terminal, argv, bars):
    import io

    from radclip.jobs.common import stage_main

    class Stderr(io.StringIO):
        def isatty(self) -> bool:
            return terminal

    monkeypatch.setattr(sys, "stderr", Stderr())
    seen = {}
    stage_main(lambda params, progress: seen.update(progress=progress),
               argv=["--params", str(PROJECT_ROOT / "params.yaml"), *argv])
    assert seen == {"progress": bars}


def _top_level_plots() -> list[tuple[str, dict, list[str]]]:
    """dvc.yaml's top-level plots as (id, properties, the files or folders they read)."""
    plots = []
    for entry in yaml.safe_load(DVC_YAML.read_text())["plots"]:
        plot_id, props = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        props = props or {}
        sources = list(props["y"]) if isinstance(props.get("y"), dict) else [plot_id]
        plots.append((plot_id, props, sources))
    return plots


def test_every_plot_is_defined_once_on_a_stage_output_and_every_figure_is_an_image_plot():
    definitions = {name: _definition(stage) for name, stage in _stages().items()}
    assert not [name for name, d in definitions.items() if "plots" in d], "plots defined in a stage and at top level"
    outs = {path for d in definitions.values() for path in _out_paths(d)}
    sources = [source for _, _, files in _top_level_plots() for source in files]
    assert len(sources) == len(set(sources)), f"a file in two plot definitions: {sources}"
    for source in sources:  # each a stage's output, or a file inside an output folder
        assert any(source == out or source.startswith(out + "/") for out in outs), source
    figures = {out for out in outs if out.endswith(".png")} | {"${paths.reports}/figures"}
    assert figures <= set(sources), f"figures without an image plot: {sorted(figures - set(sources))}"


def test_plotted_columns_exist_in_the_committed_tables():
    from radclip.evaluation.evaluate import CONFUSION_DIR

    reports = PROJECT_ROOT / "reports"
    for plot_id, props, files in _top_level_plots():
        if props.get("template") == "confusion":
            assert plot_id == f"${{paths.reports}}/{CONFUSION_DIR}" and (props["x"], props["y"]) == ("predicted", "actual")
            continue
        if "y" not in props:
            continue  # an image
        for source, columns in props["y"].items():
            header = (reports / source.removeprefix("${paths.reports}/")).read_text().splitlines()[0].split(",")
            wanted = [props["x"], *([columns] if isinstance(columns, str) else columns)]
            assert set(wanted) <= set(header), (plot_id, sorted(set(wanted) - set(header)))
