"""The data stages under DVC: repro, no-op second repro, param-scoped reruns, push/pull into a fresh clone.

Each stage runs its job (``python pipelines/<stage>.py`` calls ``radclip.jobs.<stage>.main``) and writes
the params it ran with to ``<reports>/params/<stage>.yaml``. Only the data stages (up to ``validate``) run here;
training stages have their own tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import PROJECT_ROOT, tiny_params_dict

pytestmark = pytest.mark.slow
DATA_STAGES = "validate"  # repro target: phantoms -> curate -> validate
STAGE_NAMES = ("phantoms", "curate", "validate")


def _run(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
               **(extra_env or {}))
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory) -> Path:
    """A copy of the project (pipeline, stages, library sources) with tiny params, reproduced once."""
    project = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", "pipelines", "radclip", "params"):
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, project / name)
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict("data"), sort_keys=False))
    remote = tmp_path_factory.mktemp("remote")
    _run(["git", "init", "-q"], project)
    _run(["git", "config", "user.email", "ci@example.invalid"], project)
    _run(["git", "config", "user.name", "ci"], project)
    _run(["dvc", "init", "-q"], project)
    _run(["dvc", "config", "core.analytics", "false"], project)
    _run(["dvc", "remote", "add", "-d", "storage", str(remote)], project)
    _run(["dvc", "repro", DATA_STAGES], project)
    _run(["git", "add", "-A"], project)
    _run(["git", "commit", "-qm", "pipeline"], project)
    return project


def test_repro_writes_every_stage_output(dvc_project):
    assert (dvc_project / "data/raw/train/index.csv").exists()
    assert (dvc_project / "data/curated/manifest.parquet").exists()
    assert (dvc_project / "data/reports/validation/report.md").exists()
    assert (dvc_project / "data/curated/preprocessing.json").exists()  # the contract every model will carry
    lock = yaml.safe_load((dvc_project / "dvc.lock").read_text())
    for stage in STAGE_NAMES:
        assert lock["stages"][stage]["cmd"] == f"python pipelines/{stage}.py"
        effective = yaml.safe_load((dvc_project / f"data/reports/params/{stage}.yaml").read_text())
        assert effective["stage"] == stage and effective["profile"] == "default"


def test_second_repro_does_nothing(dvc_project):
    out = _run(["dvc", "repro", DATA_STAGES], dvc_project)
    assert "Running stage" not in out
    assert "up to date" in _run(["dvc", "status", "--with-deps", DATA_STAGES], dvc_project)


def test_changing_one_param_reruns_only_its_stages(dvc_project):
    params_file = dvc_project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["validate"]["max_quarantine_rate"] = 0.5
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = _run(["dvc", "repro", DATA_STAGES], dvc_project)
        assert "Running stage 'validate'" in out
        assert "Running stage 'curate'" not in out and "Running stage 'phantoms'" not in out
        effective = yaml.safe_load((dvc_project / "data/reports/params/validate.yaml").read_text())
        assert effective["params"]["validate"]["max_quarantine_rate"] == 0.5  # what it ran with
    finally:
        params_file.write_text(original)
        _run(["dvc", "repro", DATA_STAGES], dvc_project)


def test_push_then_pull_restores_curated_data_in_a_fresh_clone(dvc_project, tmp_path):
    _run(["dvc", "push"], dvc_project)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(dvc_project), str(clone)], tmp_path)
    _run(["dvc", "pull", "--with-deps", DATA_STAGES], clone)
    original = dvc_project / "data/curated"
    for path in sorted(p for p in original.rglob("*") if p.is_file()):
        restored = clone / "data/curated" / path.relative_to(original)
        assert _digest(restored) == _digest(path), f"{restored} differs after dvc pull"
    status = _run(["dvc", "status", "--with-deps", DATA_STAGES], clone)
    assert "up to date" in status, status  # nothing to re-run: curation is not repeated


def test_push_to_an_s3_remote_then_pull_into_a_fresh_clone(dvc_project, tmp_path, s3_endpoint):
    """The same round trip through an S3-compatible endpoint (moto's server on 127.0.0.1; dvc-s3)."""
    from tracking_server import S3_ENV

    url = f"s3://{s3_endpoint.bucket}/dvc-{tmp_path.name}"
    remote = ["dvc", "remote", "add", "--local", "-f", "s3", url]
    endpoint = ["dvc", "remote", "modify", "--local", "s3", "endpointurl", s3_endpoint.url]
    _run(remote, dvc_project)  # --local: this checkout's config only, nothing committed
    _run(endpoint, dvc_project)
    _run(["dvc", "push", "-r", "s3"], dvc_project, S3_ENV)
    assert any(key.startswith(f"dvc-{tmp_path.name}/files/md5/") for key in s3_endpoint.keys(f"dvc-{tmp_path.name}"))

    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(dvc_project), str(clone)], tmp_path)
    _run([*remote[:4], "-d", *remote[4:]], clone)
    _run(endpoint, clone)
    _run(["dvc", "pull", "--with-deps", DATA_STAGES], clone, S3_ENV)
    original = dvc_project / "data/curated"
    for path in sorted(p for p in original.rglob("*") if p.is_file()):
        restored = clone / "data/curated" / path.relative_to(original)
        assert _digest(restored) == _digest(path), f"{restored} differs after dvc pull from S3"
    assert "up to date" in _run(["dvc", "status", "--with-deps", DATA_STAGES], clone)
