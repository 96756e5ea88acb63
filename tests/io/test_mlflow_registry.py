"""radclip.io.mlflow_registry: versions carry lineage and gate metrics, the gate promotes or refuses by the mean of
the gate metrics, decisions are recorded, and rollback restores the previous champion keeping all history."""

from __future__ import annotations

import json

import mlflow
import pytest
import yaml
from helpers import git_commit, tiny_params
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from radclip.data.curate import preprocessing_from_params
from radclip.io import mlflow_registry as registry
from radclip.training.build import build_model

# MLflow's own deprecated calls (SQLAlchemy loader option, a pandas comparison); not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.filterwarnings("ignore:Operation with range is deprecated"),
]

MODEL_NAME = "radclip-registry-test"
GATE_METRICS = ["suite.a.probe_accuracy_mean", "suite_b.probe_accuracy_mean"]  # a suite name may hold a dot
CURATED_MD5 = "0123456789abcdef0123456789abcdef.dir"
TINY_MODEL = {
    "projection_dim": 16,
    "vision": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 8},
    "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    "adapter": {"heads": 2, "max_slices": 8},
}


def _evaluation(a: float, b: float) -> dict:
    return {"suite.a": {"probe_accuracy_mean": a, "kind": "2d"}, "suite_b": {"probe_accuracy_mean": b, "kind": "3d"}}


@pytest.fixture(scope="module")
def project(tmp_path_factory, mlflow_store):
    """A git-committed tmp project (DVC_ROOT) whose dvc.lock records the curated data, the module's tmp
    MLflow store, and a tiny saved model carrying the preprocessing contract (the pyfunc needs it)."""
    tmp = tmp_path_factory.mktemp("registry")
    root = tmp / "project"
    root.mkdir()
    params = tiny_params(tmp, model=TINY_MODEL, registry={"model_name": MODEL_NAME, "gate_metrics": GATE_METRICS,
                                                          "min_improvement": 0.01},
                         mlflow={"artifact_root": str(mlflow_store.artifacts), "experiment": "registry-test"})
    lock = {"schema": "2.0", "stages": {"curate": {"outs": [{"path": str(tmp / "curated"), "md5": CURATED_MD5}]}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    head = git_commit(root, "dvc.lock")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DVC_ROOT", str(root))
        patch.setenv("GIT_CEILING_DIRECTORIES", str(tmp))  # no repository above tmp may answer
        model = build_model(params, ["Normal Chest CT", "Chest CT with COVID-19"],
                            preprocessing=preprocessing_from_params(params))
        model_dir = model.save_pretrained(tmp / "model")
        yield {"params": params, "model_dir": model_dir, "commit": head}


@pytest.fixture(scope="module")
def decisions(project):
    """Four registrations in order: first (no champion), worse, better, and better again."""
    params, model_dir = project["params"], project["model_dir"]
    extra = {"optuna.study": "radclip-adapter", "optuna.best_trial": 7}
    return [
        registry.register(params, model_dir=model_dir, evaluation=_evaluation(0.60, 0.70), extra_tags=extra),
        registry.register(params, model_dir=model_dir, evaluation=_evaluation(0.55, 0.70)),  # mean 0.625 < 0.65
        registry.register(params, model_dir=model_dir, evaluation=_evaluation(0.65, 0.70)),  # +0.025 >= 0.01
        registry.register(params, model_dir=model_dir, evaluation=_evaluation(0.70, 0.70)),  # +0.025 >= 0.01
    ]


def _aliases() -> dict[str, str]:
    return {alias: str(version) for alias, version in MlflowClient().get_registered_model(MODEL_NAME).aliases.items()}


def _tags(version: int) -> dict[str, str]:
    return MlflowClient().get_model_version(MODEL_NAME, str(version)).tags


def test_first_version_is_promoted_when_there_is_no_champion(decisions):
    first = decisions[0]
    assert (first.version, first.decision, first.reason) == (1, "promoted", "no champion yet")
    assert first.champion_version is None and first.value == pytest.approx(0.65)
    assert _tags(1)["gate.decision"] == "promoted"


def test_version_tags_carry_lineage_extra_tags_and_gate_metrics(project, decisions):
    tags = _tags(1)
    assert tags["git.commit"] == project["commit"]
    assert tags["data.curated_hash"] == CURATED_MD5
    assert tags["params.digest"] == project["params"].digest()
    assert tags["optuna.study"] == "radclip-adapter" and tags["optuna.best_trial"] == "7"
    assert float(tags["metric.suite.a.probe_accuracy_mean"]) == 0.60
    assert float(tags["metric.suite_b.probe_accuracy_mean"]) == 0.70
    assert "optuna.study" not in _tags(2)  # extra tags belong to the registration that passed them


def test_worse_challenger_is_refused_and_the_decision_recorded_with_both_values(decisions):
    refused = decisions[1]
    assert (refused.version, refused.decision, refused.champion_version) == (2, "refused", 1)
    assert refused.value == pytest.approx(0.625) and refused.champion_value == pytest.approx(0.65)
    assert refused.champion == 1
    tags = _tags(2)
    assert tags["gate.decision"] == "refused"
    assert float(tags["gate.value"]) == pytest.approx(0.625) and float(tags["gate.champion_value"]) == pytest.approx(0.65)
    assert tags["gate.champion_version"] == "1" and tags["gate.time"]
    assert "refused" in refused.summary() and "champion: v1" in refused.summary()


def test_better_challengers_are_promoted_and_the_aliases_follow(decisions):
    assert [d.decision for d in decisions[2:]] == ["promoted", "promoted"]
    assert [d.champion_version for d in decisions[2:]] == [1, 3]
    # The refused version 2 never became champion; the last registration is the challenger.
    assert _aliases() == {"champion": "4", "challenger": "4"}


def test_rollback_restores_the_previous_champion_and_history_keeps_every_entry(project, decisions):
    params = project["params"]
    first = registry.rollback(params)
    assert (first.version, first.champion_version, first.decision) == (3, 4, "rolled back")
    assert _aliases()["champion"] == "3"
    second = registry.rollback(params)  # goes further back, not forth to version 4
    assert (second.version, second.champion_version) == (1, 3)
    assert _aliases()["champion"] == "1"
    with pytest.raises(registry.RegistryError, match="no previous champion to roll back to"):
        registry.rollback(params)
    history = registry.champion_history(params)
    assert [(entry["action"], entry["version"]) for entry in history] == [
        ("gate", 1), ("gate", 3), ("gate", 4), ("rollback", 3), ("rollback", 1)
    ]
    assert all(entry["time"] and entry["reason"] for entry in history)

    refused = registry.promote(params, 2)  # the gate again: v2 still loses to v1
    assert refused.decision == "refused" and _aliases()["champion"] == "1"
    manual = registry.promote(params, 2, force=True)  # by hand, past the gate that refused it
    assert (manual.decision, manual.champion_version) == ("promoted", 1)
    assert _aliases()["champion"] == "2"
    assert len(registry.champion_history(params)) == 6


def test_a_missing_gate_metric_is_an_error_naming_the_metric(project):
    def versions() -> int:
        return len(MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'"))

    before = versions()
    evaluation = {"suite.a": {"probe_accuracy_mean": 0.9}}
    with pytest.raises(registry.RegistryError, match="'suite_b.probe_accuracy_mean'"):
        registry.register(project["params"], model_dir=project["model_dir"], evaluation=evaluation)
    assert versions() == before  # checked before anything is logged or registered


def test_a_model_without_its_preprocessing_contract_is_not_registered(project, tmp_path):
    """The served pyfunc prepares inputs by the model's own contract: a model without one gets no version."""
    params = project["params"]
    bare = build_model(params, ["Normal Chest CT", "Chest CT with COVID-19"]).save_pretrained(tmp_path / "bare")
    assert not (bare / "preprocessing.json").exists()
    before = len(MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'"))
    with pytest.raises(FileNotFoundError, match="preprocessing.json"):
        registry.register(params, model_dir=bare, evaluation=_evaluation(0.9, 0.9))
    assert len(MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'")) == before


def _sql_tag_value_width() -> int:
    # The width a SQL tracking server's schema gives a registered-model tag value (VARCHAR(5000)); sqlite ignores
    # it, PostgreSQL and MySQL enforce it. Read from MLflow's own table definition (no public getter exists).
    from mlflow.store.model_registry.dbmodels.models import SqlRegisteredModelTag

    return int(SqlRegisteredModelTag.__table__.c.value.type.length)


def _promote_and_roll_back_a_hundred_times(params, versions: tuple[int, int]) -> None:
    """200 champion changes (forced promotions between two versions, each followed by a rollback): the history
    holds every one in order, rollback still replays it, and no registered-model tag outgrows the SQL column."""
    first, second = versions
    client = MlflowClient()
    before = len(registry.champion_history(params))
    for round_ in range(100):
        current = int(_aliases()["champion"])
        target = first if current != first else second
        registry.promote(params, target, force=True)
        assert _aliases()["champion"] == str(target)
        restored = registry.rollback(params)
        assert (restored.version, _aliases()["champion"]) == (current, str(current)), round_
    history = registry.champion_history(params)
    assert len(history) == before + 200
    assert [entry["action"] for entry in history[before:]] == ["promote", "rollback"] * 100
    width = _sql_tag_value_width()
    assert width == 5000
    values = client.get_registered_model(MODEL_NAME).tags.values()
    assert max(len(value) for value in values) < width / 10  # each change is small, not a growing list


def test_a_hundred_promotions_and_rollbacks_keep_every_tag_within_the_sql_width(project, decisions):
    """On the module's SQLite store, after the tests above (versions 2 and 3 take turns)."""
    _promote_and_roll_back_a_hundred_times(project["params"], versions=(2, 3))


@pytest.fixture
def postgres_params(project, postgres_database_uri, tmp_path):
    """The project's params on a fresh PostgreSQL store (tests/postgres_server.py) for one test.

    The URI goes into MLFLOW_TRACKING_URI as well as params: the module's SQLite store is exported there, and the
    variable wins over params. Artifacts go to tmp as a file:// URI, not a path: for a store that is not local
    radclip leaves an experiment's artifact location to MLflow, whose default is ./mlruns in the working
    directory (the project's own mlruns/). Afterwards MLflow's process-wide URIs are forgotten, so the next
    tests find the module's SQLite store again."""
    params = project["params"]
    mlflow_section = params.mlflow.model_copy(update={"tracking_uri": postgres_database_uri,
                                                      "artifact_root": (tmp_path / "artifacts").as_uri()})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", postgres_database_uri)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        try:
            yield params.model_copy(update={"mlflow": mlflow_section})
        finally:
            mlflow.set_tracking_uri(None)  # before the patch restores the SQLite URI (this clears the variables)
            mlflow.set_registry_uri(None)


def test_a_hundred_promotions_and_rollbacks_fit_the_sql_width_on_postgresql(project, postgres_params):
    """The same 200 changes where the width is enforced: PostgreSQL, which refuses a longer value (next test)."""
    model_dir = project["model_dir"]
    first = registry.register(postgres_params, model_dir=model_dir, evaluation=_evaluation(0.60, 0.70))
    second = registry.register(postgres_params, model_dir=model_dir, evaluation=_evaluation(0.65, 0.70))
    assert [(d.version, d.decision) for d in (first, second)] == [(1, "promoted"), (2, "promoted")]
    _promote_and_roll_back_a_hundred_times(postgres_params, versions=(1, 2))
    # The history written as one list, as an earlier version kept it, would not have fitted: PostgreSQL would
    # have refused the write long before the 200th change.
    history = registry.champion_history(postgres_params)
    assert len(json.dumps(history)) > _sql_tag_value_width()


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_postgresql_refuses_a_registered_model_tag_wider_than_the_sql_column_and_sqlite_does_not(
        store, request, tmp_path):
    """What makes the PostgreSQL test above meaningful: the server enforces VARCHAR(5000), SQLite does not."""
    if store == "postgresql":
        uri = request.getfixturevalue("postgres_database_uri")
    else:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    width = _sql_tag_value_width()
    client.create_registered_model("width-test")
    client.set_registered_model_tag("width-test", "fits", "x" * width)  # at the width: both stores keep it
    if store == "postgresql":
        with pytest.raises(MlflowException, match=rf"value too long for type character varying\({width}\)"):
            client.set_registered_model_tag("width-test", "too_wide", "x" * (width + 1))
    else:
        client.set_registered_model_tag("width-test", "too_wide", "x" * (width + 1))
    tags = client.get_registered_model("width-test").tags
    assert len(tags["fits"]) == width
    assert len(tags.get("too_wide", "")) == (0 if store == "postgresql" else width + 1)


def test_a_history_written_as_one_list_by_an_earlier_version_is_read_first(project, decisions):
    params = project["params"]
    client = MlflowClient()
    current = registry.champion_history(params)
    legacy = [{"version": 1, "time": "2026-01-01T00:00:00+00:00", "action": "gate", "reason": "no champion yet",
               "previous": None}]
    client.set_registered_model_tag(MODEL_NAME, registry.HISTORY_TAG, json.dumps(legacy))
    try:
        assert registry.champion_history(params) == legacy + current
    finally:
        client.delete_registered_model_tag(MODEL_NAME, registry.HISTORY_TAG)
