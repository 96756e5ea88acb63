"""The Optuna sweep of the adapter (radclip.io.optuna_sweep, run by the job radclip.jobs.sweep): resumes after a
kill without losing or repeating trials (a RUNNING trial of a dead process ends FAIL and its params run again, on
the journal and, by heartbeat, on PostgreSQL), several processes share one study, prunes a bad region, nests one
MLflow run per trial under the sweep run, writes the best params that the final adapter training uses, and the
dashboard serves the study on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import PROJECT_ROOT, tiny_params_dict
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from tracking_server import free_port

from radclip.config import Params, load_params

# What a trial draws before it trains: a process killed while a trial still draws leaves fewer params, and its
# retry draws the rest anew, so the tests that check "its params run again" kill a trial that is training.
SEARCHED = {"reducer", "heads", "lr", "temperature"}
SWEEP = {"n_trials": 4, "epochs": 6, "startup_trials": 2, "warmup_epochs": 1, "sampler": "random", "apply_best": False,
         "space": {"heads": [2, 4], "lr": [1e-3, 3e-2], "temperature": [0.05, 0.1]}}


@pytest.fixture(scope="module")
def project(tmp_path_factory, mlflow_store):
    """Tiny phantoms (more volumes than the shared ones: a validation loss that can move), curated, a 2D
    encoder (in-process, 2 epochs) and its slice cache; the module's own MLflow store."""
    from radclip.data.curate import curate
    from radclip.data.phantoms import generate
    from radclip.jobs import embed_slices, pretrain_2d

    tmp = tmp_path_factory.mktemp("sweep")
    raw = tiny_params_dict(str(tmp), train_2d={"engine": "local", "epochs": 2, "num_workers": 1}, sweep=SWEEP)
    raw["phantoms"]["train_3d"] = 60  # validation batches with several captions: a loss that can move
    raw["curate"]["split"] = {"train": 0.5, "val": 0.5, "test": 0.0}
    params_file = tmp / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    params = load_params(params_file)
    generate(params)
    curate(params, progress=False)
    pretrain_2d.run(params, progress=False)
    embed_slices.run(params, progress=False)
    return params, params_file


def _with_sweep(params_file: Path, tmp: Path, **sweep) -> tuple[Params, Path]:
    raw = yaml.safe_load(params_file.read_text())
    raw["sweep"] = {**raw["sweep"], **sweep}
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_params(path), path


def _study(params: Params) -> optuna.Study:
    from radclip.io.optuna_sweep import cache_fingerprint, open_study
    from radclip.jobs.common import slice_cache_dir

    return open_study(params, cache_fingerprint(slice_cache_dir(params)))[0]


def _sweep_command(params_file: Path, *, job: bool = True) -> list[str]:
    """A process running the sweep job on ``params_file``, or (``job=False``) only the study: no files written."""
    load = f"from radclip.config import load_params; p = load_params({str(params_file)!r}); "
    if job:
        return [sys.executable, "-c", load + "from radclip.jobs import sweep; sweep.run(p, progress=False)"]
    return [sys.executable, "-c", load + "from radclip.io.optuna_sweep import sweep; "
            "from radclip.jobs.common import MODEL_2D, model_dir, slice_cache_dir; "
            "sweep(p, data_dir=slice_cache_dir(p), model_source=model_dir(p, MODEL_2D))"]


def test_code_fingerprint_follows_every_source_byte_and_nothing_else(tmp_path):
    from radclip.io.optuna_sweep import code_fingerprint

    package = tmp_path / "pkg"
    (package / "core").mkdir(parents=True)
    (package / "core" / "adapter.py").write_text("WEIGHTS = True\n")
    (package / "loop.py").write_text("EPOCHS = 3\n")
    before = code_fingerprint(package)
    (package / "notes.txt").write_text("not code")
    (package / "core" / "__pycache__").mkdir()
    (package / "core" / "__pycache__" / "adapter.cpython-312.pyc").write_bytes(b"\x00")
    assert code_fingerprint(package) == before
    (package / "core" / "adapter.py").write_text("WEIGHTS = False\n")
    edited = code_fingerprint(package)
    assert edited != before
    (package / "core" / "adapter.py").rename(package / "adapter.py")  # same bytes, another module
    assert code_fingerprint(package) not in (before, edited)


def test_a_code_change_starts_a_new_study(tmp_path):
    """`dvc repro -f` after an edit of the adapter must retrain the trials, not reload the finished study."""
    from radclip.io.optuna_sweep import PACKAGE_ROOT, code_fingerprint, study_name

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params_dict(str(tmp_path), sweep=SWEEP)))
    params = load_params(params_file)
    assert study_name(params, "cache") == study_name(params, "cache", code_fingerprint(PACKAGE_ROOT))
    assert study_name(params, "cache", "0" * 16) != study_name(params, "cache", "1" * 16)
    assert study_name(params, "cache", "0" * 16).startswith(params.sweep.study + "-")


def test_fail_interrupted_trials_fails_running_trials_of_dead_processes_only():
    from radclip.io.optuna_sweep import WORKER_ATTR, fail_interrupted_trials

    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # a process of this machine that is gone
    dead.wait()
    host = socket.gethostname()
    study = optuna.create_study(direction="minimize")
    workers = {"dead": f"{host}:{dead.pid}", "alive": f"{host}:{os.getpid()}", "elsewhere": f"other-host.invalid:{dead.pid}"}
    trials = {}
    for name, worker in workers.items():
        trial = study.ask()
        trial.set_user_attr(WORKER_ATTR, worker)
        trials[name] = trial.number
    complete = study.ask()
    complete.set_user_attr(WORKER_ATTR, workers["dead"])
    study.tell(complete, 1.0)

    params = Params()
    assert fail_interrupted_trials(study, params) == [trials["dead"]]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[trials["dead"]] == TrialState.FAIL
    assert states[trials["alive"]] == TrialState.RUNNING  # this process is alive
    assert states[trials["elsewhere"]] == TrialState.RUNNING  # another machine's: its heartbeat decides
    assert states[complete.number] == TrialState.COMPLETE  # finished trials are never touched
    [retry] = study.get_trials(states=(TrialState.WAITING,))  # the dead one's params, enqueued once
    assert retry.system_attrs["failed_trial"] == trials["dead"]
    assert fail_interrupted_trials(study, params) == []  # idempotent
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1


def test_a_zombie_worker_is_dead_and_a_live_one_alive():
    """A sweep helper killed before its parent joined it is a zombie: its trial runs no more (waiting on it would
    hang the parent's sweep, which joins its helpers only at the end)."""
    from radclip.io.optuna_sweep import _alive_here

    host = socket.gethostname()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits; not reaped until wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive_here(f"{host}:{zombie.pid}"):
        time.sleep(0.05)
    assert os.path.exists(f"/proc/{zombie.pid}")  # still in the process table: os.kill(pid, 0) would succeed
    assert _alive_here(f"{host}:{zombie.pid}") is False
    zombie.wait()
    assert _alive_here(f"{host}:{zombie.pid}") is False
    assert _alive_here(f"{host}:{os.getpid()}") is True
    assert _alive_here(f"other-host.invalid:{os.getpid()}") is None


def test_a_failed_trial_is_retried_at_most_max_retries_times():
    from radclip.io.optuna_sweep import WORKER_ATTR, fail_interrupted_trials

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    params = Params().with_values({"sweep.max_retries": 2})
    # the trial dies, its retry runs and dies, and so on
    study = optuna.create_study(direction="minimize")
    running = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    lr = running.params["lr"]
    failed = []
    while True:
        running.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{dead.pid}")
        failed += fail_interrupted_trials(study, params)
        waiting = study.get_trials(states=(TrialState.WAITING,))
        if not waiting:
            break
        running = study.ask()
        assert running.number == waiting[0].number and running.params == {"lr": lr}  # the same params again
    assert len(failed) == 3  # the original trial and its two retries
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL] * 3
    assert study.get_trials()[-1].system_attrs["retry_history"] == failed[:2]


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_losing_or_repeating_trials(project, tmp_path):
    from radclip.jobs import sweep

    params, params_file = _with_sweep(project[1], tmp_path, study="resume", epochs=40, pruner="none")
    child = subprocess.Popen(_sweep_command(params_file), cwd=PROJECT_ROOT, env=os.environ.copy(), start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and child.poll() is None:  # kill mid-trial, after two finished
            trials = _study(params).get_trials(deepcopy=False)
            training = any(t.state == TrialState.RUNNING and set(t.params) == SEARCHED for t in trials)
            if sum(t.state == TrialState.COMPLETE for t in trials) >= 2 and training:
                break
            time.sleep(0.3)
        assert child.poll() is None, "the sweep ended before it could be killed mid-trial"
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    before = {t.number: (t.params, t.value) for t in _study(params).get_trials(states=(TrialState.COMPLETE,))}
    assert len(before) >= 2 and any(t.state == TrialState.RUNNING for t in _study(params).get_trials())

    result = sweep.run(params, progress=False)

    trials = _study(params).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # the interrupted trial ended FAIL
    assert [t.state for t in trials].count(TrialState.FAIL) == 1
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == params.sweep.n_trials
    after = {t.number: (t.params, t.value) for t in trials if t.number in before}
    assert after == before  # nothing completed was lost, redone or changed
    assert result.trials["COMPLETE"] + result.trials["PRUNED"] == params.sweep.n_trials
    [killed] = [t for t in trials if t.state == TrialState.FAIL]
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]  # its params, once more
    assert retry.params == killed.params and retry.state == TrialState.COMPLETE


@pytest.mark.slow
def test_on_postgresql_a_dead_workers_trial_fails_by_its_heartbeat_and_is_retried(project, tmp_path,
                                                                                 postgres_database_uri):
    """Two sweep processes fill one study on PostgreSQL; one is killed mid-trial. Its trial stops beating, the
    other process's next trial fails it (Optuna's stale-trial check) and runs its params again: nothing lost,
    nothing run twice, and no trial left RUNNING."""
    params, params_file = _with_sweep(project[1], tmp_path, study="heartbeat", n_trials=5, pruner="none", epochs=40,
                                      storage=postgres_database_uri, heartbeat_seconds=1, grace_seconds=3)
    workers = [subprocess.Popen(_sweep_command(params_file, job=False), cwd=PROJECT_ROOT, env=os.environ.copy(),
                                start_new_session=True) for _ in range(2)]
    victim, survivor = workers
    def victims_running_trial() -> int | None:
        trials = _study(params).get_trials(deepcopy=False)
        mine = [t.number for t in trials if t.state == TrialState.RUNNING and set(t.params) == SEARCHED
                and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]
        return mine[0] if mine and any(t.state == TrialState.COMPLETE for t in trials) else None

    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and victim.poll() is None:  # kill it mid-trial
            if victims_running_trial() is not None:
                os.killpg(victim.pid, signal.SIGSTOP)  # frozen: its trial cannot finish between look and kill
                if victims_running_trial() is not None:
                    break
                os.killpg(victim.pid, signal.SIGCONT)  # it finished in between: wait for its next one
            time.sleep(0.2)
        assert victim.poll() is None, "the worker ended before it could be killed mid-trial"
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        assert survivor.wait(timeout=300) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
    trials = _study(params).get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    [killed] = [t for t in trials if t.state == TrialState.FAIL]
    assert killed.user_attrs["worker"].endswith(f":{victim.pid}")
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.params == killed.params and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["worker"].endswith(f":{survivor.pid}")
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert params.sweep.n_trials <= len(finished) <= params.sweep.n_trials + 1  # both may start the last one
    assert len({t.number for t in trials}) == len(trials)


@pytest.mark.slow
def test_a_worker_past_the_target_waits_for_live_trials_and_retries_dead_ones(project, tmp_path):
    """The study already holds n_trials finished trials, plus one RUNNING trial of a dead process and one of a
    process still alive (it exits a few seconds later). The sweep must not end with either left over: it fails the
    dead one and runs its retry, waits for the live one, then fails that one too and runs its retry."""
    from radclip.io.optuna_sweep import FINISHED, WORKER_ATTR
    from radclip.jobs import sweep

    params, _ = _with_sweep(project[1], tmp_path, study="settle", n_trials=2, pruner="none")
    sweep.run(params, progress=False)
    study = _study(params)
    [done, *_] = study.get_trials(states=(TrialState.COMPLETE,))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(6)"])
    host = socket.gethostname()
    orphans = {}
    for name, pid in (("dead", dead.pid), ("alive", alive.pid)):
        trial = study.ask(fixed_distributions=done.distributions)
        trial.set_user_attr(WORKER_ATTR, f"{host}:{pid}")
        orphans[name] = trial.number
    try:
        sweep.run(params, progress=False)
        assert alive.poll() is not None, "the sweep ended while the live process's trial was still running"
    finally:
        alive.kill()
    trials = {t.number: t for t in _study(params).get_trials()}
    assert not [t for t in trials.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for number in orphans.values():
        assert trials[number].state == TrialState.FAIL
        [retry] = [t for t in trials.values() if t.system_attrs.get("failed_trial") == number]
        assert retry.params == trials[number].params and retry.state in FINISHED
    assert sum(t.state in FINISHED for t in trials.values()) == params.sweep.n_trials + 2  # the two retries


@pytest.mark.slow
def test_two_sweep_processes_share_one_study(project, tmp_path):
    params, params_file = _with_sweep(project[1], tmp_path, study="parallel", n_trials=6, pruner="none")
    workers = [subprocess.Popen(_sweep_command(params_file, job=False), cwd=PROJECT_ROOT, env=os.environ.copy())
               for _ in range(2)]
    assert [worker.wait(timeout=300) for worker in workers] == [0, 0]
    trials = _study(params).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # each worker stops once the study holds n_trials; both may start the last one at the same time
    assert params.sweep.n_trials <= len(finished) <= params.sweep.n_trials + 1
    assert len({t.number for t in trials}) == len(trials)
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both processes ran trials


@pytest.mark.slow
def test_the_pruner_stops_trials_in_a_bad_region(project, tmp_path):
    from radclip.io.optuna_sweep import OBJECTIVE, sweep
    from radclip.jobs.common import MODEL_2D, model_dir, slice_cache_dir

    # one adapter design: the enqueued trials below differ in lr and τ only
    space = {"reducers": ["attention"], "heads": [2, 4], "lr": [1e-7, 3e-2], "temperature": [0.01, 2.0]}
    params, _ = _with_sweep(project[1], tmp_path, study="prune", n_trials=6, pruner="median", warmup_epochs=1,
                            startup_trials=2, space=space)
    study = _study(params)
    # Three trials that can learn, then three stuck (lr 1e-7) at τ = 0.01: a softmax that sharp on the
    # tiny encoder's noisy similarities is confidently wrong, far above the others' loss.
    for _ in range(3):
        study.enqueue_trial({"heads": 4, "lr": 2e-2, "temperature": 1.0})
    for _ in range(3):
        study.enqueue_trial({"heads": 4, "lr": 1e-7, "temperature": 0.01})
    result = sweep(params, data_dir=slice_cache_dir(params), model_source=model_dir(params, MODEL_2D))

    trials = _study(params).get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.params["lr"] == 1e-7 for t in pruned)
    assert all(len(t.intermediate_values) < params.sweep.epochs for t in pruned)  # stopped early
    assert result.best_params["lr"] == 2e-2

    # one MLflow child run per trial under the sweep run, tagged with its trial and final state
    client = MlflowClient()
    experiment = client.get_experiment_by_name(params.mlflow.experiment).experiment_id
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{result.mlflow_run_id}'")
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == sorted(t.number for t in trials)
    states = {int(r.data.tags["optuna.trial"]): r.data.tags["optuna.state"] for r in children}
    assert states == {t.number: t.state.name for t in trials}
    # the dashboard and MLflow point at each other: the study names its objective, each trial its run
    assert _study(params).metric_names == [OBJECTIVE]
    runs = {int(r.data.tags["optuna.trial"]): r.info.run_id for r in children}
    assert {t.number: t.user_attrs["mlflow_run_id"] for t in trials} == runs
    assert {"optimization_history.png", "param_importances.png"} <= {
        Path(a.path).name for a in client.list_artifacts(result.mlflow_run_id, "optuna")}


@pytest.mark.slow
def test_best_params_reach_the_final_adapter_training(project, tmp_path):
    from radclip.io.optuna_sweep import OBJECTIVE
    from radclip.jobs import sweep
    from radclip.jobs.common import best_params_path, effective_params_path
    from radclip.jobs.pretrain_adapter import adapter_params

    # Reducers other than the configured one (attention): the chosen one must reach the final training.
    space = {**SWEEP["space"], "reducers": ["mhsa_mean", "residual_mean"]}
    params, _ = _with_sweep(project[1], tmp_path, study="best", n_trials=2, apply_best=True, space=space)
    result = sweep.run(params, progress=False)
    written = yaml.safe_load(best_params_path(params).read_text())
    assert written["params"] == result.best_params and written["best_trial"] == result.best_trial
    assert written["objective"] == OBJECTIVE and written["value"] == pytest.approx(result.best_value)
    assert yaml.safe_load(effective_params_path(params, "sweep").read_text())["stage"] == "sweep"
    final = adapter_params(params)
    assert params.model.adapter.reducer == "attention"
    assert final.model.adapter.reducer == result.best_params["reducer"] in ("mhsa_mean", "residual_mean")
    assert final.model.adapter.heads == result.best_params["heads"]
    assert final.train_adapter.lr == pytest.approx(result.best_params["lr"])
    assert final.loss.temperature == pytest.approx(result.best_params["temperature"])


@pytest.mark.slow
def test_sweep_workers_fill_one_study_under_one_mlflow_run(project, tmp_path):
    from radclip.jobs import sweep

    params, _ = _with_sweep(project[1], tmp_path, study="one-run", n_trials=6, pruner="none", workers=2,
                            epochs=40)  # trials long enough that the spawned process joins before the study is full
    result = sweep.run(params, progress=False)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(params.mlflow.experiment).experiment_id
    parents = client.search_runs([experiment], f"tags.`radclip.stage` = 'sweep' and "
                                               f"tags.`optuna.study` = '{result.study}'")
    assert [run.info.run_id for run in parents] == [result.mlflow_run_id]  # one run, not one per process
    trials = [t for t in _study(params).get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes ran trials
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{result.mlflow_run_id}'")
    assert {r.info.run_id for r in children} == {t.user_attrs["mlflow_run_id"] for t in trials}


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(project, tmp_path, monkeypatch):
    from radclip.io import optuna_sweep
    from radclip.jobs.common import MODEL_2D, model_dir, slice_cache_dir

    params, _ = _with_sweep(project[1], tmp_path, study="one-fails", n_trials=3, pruner="none", epochs=2)
    real_fit = optuna_sweep.fit

    def fit_failing_trial_1(*args, run_name, **kwargs):
        if run_name == "trial-1":
            raise RuntimeError("out of memory in trial 1")
        return real_fit(*args, run_name=run_name, **kwargs)

    monkeypatch.setattr(optuna_sweep, "fit", fit_failing_trial_1)
    result = optuna_sweep.sweep(params, data_dir=slice_cache_dir(params), model_source=model_dir(params, MODEL_2D))
    states = {t.number: t.state for t in _study(params).get_trials()}
    assert states[1] == TrialState.FAIL
    assert sum(state == TrialState.COMPLETE for state in states.values()) == 3  # the budget was still filled
    assert result.trials["FAIL"] == 1


def test_consecutive_failures_stop_the_sweep_before_it_burns_the_budget(project, tmp_path, monkeypatch):
    from radclip.io import optuna_sweep
    from radclip.jobs.common import MODEL_2D, model_dir, slice_cache_dir

    params, _ = _with_sweep(project[1], tmp_path, study="all-fail", n_trials=10, max_consecutive_failures=3)

    def broken_fit(*args, **kwargs):
        raise ValueError("a systematic bug")

    monkeypatch.setattr(optuna_sweep, "fit", broken_fit)
    with pytest.raises(RuntimeError, match="no trial completed"):
        optuna_sweep.sweep(params, data_dir=slice_cache_dir(params), model_source=model_dir(params, MODEL_2D))
    assert [t.state for t in _study(params).get_trials()] == [TrialState.FAIL] * 3


@pytest.mark.slow
def test_dashboard_serves_the_study_on_loopback(tmp_path):
    from optuna.distributions import FloatDistribution

    from radclip.io.optuna_sweep import JOURNAL_FILE, storage_for

    raw = tiny_params_dict(str(tmp_path))
    params = Params.model_validate(raw)
    storage, location = storage_for(params)
    study = optuna.create_study(study_name="dashboard-check", storage=storage, direction="minimize")
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1e-1, log=True)},
                                              value=1.5))
    journal = Path(location)
    assert journal.name == JOURNAL_FILE and journal.exists()
    port = free_port()
    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    server = subprocess.Popen([str(dashboard), str(journal), "--host", "127.0.0.1", "--port", str(port),
                               "--server", "wsgiref"], env={**os.environ, "HOME": str(tmp_path)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, body = time.monotonic() + 30, ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    body = response.read().decode()
                break
            except OSError:
                time.sleep(0.3)
        assert "dashboard-check" in body  # the study of this journal file is listed
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
