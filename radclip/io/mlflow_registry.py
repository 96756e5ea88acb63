"""Model registry and promotion: one registered model, versions moved between aliases (no stages).

``register`` registers the LoggedModel that the training run logged the final model as (the pyfunc of
:func:`radclip.io.mlflow_pyfunc.log_model`) as a new version of ``params.registry.model_name``, in a
``register`` run that records the decision; it tags the version with the training run, the evaluation
run and the model id, the lineage the training run recorded (git commit, curated-data hash, params
digest), the caller's extra tags (the Optuna study and best trial) and every gate metric value
(``metric.<dotted key>``), points the ``challenger`` alias at it and runs the gate.

The gate compares the mean of ``params.registry.gate_metrics`` of the challenger and
the current ``champion`` (both read from version tags, so a champion is judged by the
numbers it was registered with) and promotes when there is no champion or the
challenger's mean is at least ``min_improvement`` higher. Every decision is recorded
on the challenger's version tags (``gate.*``). Each change of champion (gate,
manual ``promote``, ``rollback``) is one registered-model tag of its own,
``champion_history.<6-digit sequence number>`` holding that change as JSON: a few hundred
characters, far below the 5,000 that a SQL tracking server's schema allows a tag value, so the
history never has to be truncated however long it grows (one JSON list in one tag overflowed
that width on PostgreSQL/MySQL after a few dozen changes; a store written that way is still read,
its list first). ``rollback`` replays the history to find the champion before the current one.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, cast

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from radclip.config import Params
from radclip.io import mlflow_pyfunc
from radclip.io import mlflow_tracking as tracking

log = logging.getLogger("radclip.registry")

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"  # a single JSON list in earlier versions: read, never written
HISTORY_ENTRY_PREFIX = HISTORY_TAG + "."
METRIC_TAG_PREFIX = "metric."
GATE_TAG_PREFIX = "gate."
TRAINING_RUN_TAG = "training.run_id"
EVALUATION_RUN_TAG = "evaluation.run_id"
MODEL_ID_TAG = "model.id"
LINEAGE_TAGS = (tracking.TAG_GIT_COMMIT, tracking.TAG_GIT_DIRTY, tracking.TAG_DATA_HASH, tracking.TAG_PARAMS_DIGEST,
                tracking.TAG_PROFILE)

Outcome = Literal["promoted", "refused", "rolled back"]
Action = Literal["gate", "promote", "rollback"]


class RegistryError(RuntimeError):
    """A registry operation that cannot go ahead (a missing metric, no champion to roll back to...)."""


@dataclass(frozen=True)
class Decision:
    """What one registry operation decided about ``version`` (the challenger, or the version restored)."""

    model_name: str
    version: int
    action: Action
    decision: Outcome
    reason: str
    value: float | None  # mean of the gate metrics of `version`
    champion_version: int | None  # the champion compared against (gate), replaced (promote) or demoted (rollback)
    champion_value: float | None
    min_improvement: float
    time: str

    @property
    def champion(self) -> int | None:
        """The champion after this decision."""
        return self.champion_version if self.decision == "refused" else self.version

    def summary(self) -> str:
        return (f"{self.model_name} v{self.version}: {self.decision} ({self.reason}); "
                f"champion: {'v' + str(self.champion) if self.champion else 'none'}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "champion": self.champion}


# What a registry command reports as a refusal (exit 1 with the reason) rather than a crash.
REGISTRY_ERRORS: tuple[type[Exception], ...] = (RegistryError, FileNotFoundError, MlflowException)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _client(params: Params) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking.tracking_uri(params), registry_uri=tracking.registry_uri(params))


def _format(value: float | None) -> str:
    return "none" if value is None else repr(value)  # full precision: tags are read back as numbers


# --------------------------------------------------------------------------- gate metrics


_MISSING = object()


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    """``a.b.c`` in nested dicts; a key may itself hold dots (collection names may), longest first."""
    if dotted in tree:
        return tree[dotted]
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if isinstance(tree.get(head), Mapping):
            found = _lookup(tree[head], ".".join(parts[cut:]))
            if found is not _MISSING:
                return found
    return _MISSING


def gate_metric_values(params: Params, evaluation: Mapping[str, Any]) -> dict[str, float]:
    """Each ``params.registry.gate_metrics`` key's value in the evaluation results (reports/evaluate.json)."""
    if not params.registry.gate_metrics:
        raise RegistryError("registry.gate_metrics is empty: the promotion gate needs at least one metric")
    values = {}
    for key in params.registry.gate_metrics:
        value = _lookup(evaluation, key)
        if value is _MISSING:
            raise RegistryError(f"gate metric {key!r} (registry.gate_metrics) is not in the evaluation results "
                                f"(top-level keys: {sorted(evaluation)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RegistryError(f"gate metric {key!r} is {value!r} in the evaluation results, not a finite number")
        values[key] = float(value)
    return values


def _gate_mean(params: Params, version: ModelVersion) -> float | None:
    """Mean of the gate metrics recorded on a version's tags; None when one is missing."""
    values = [version.tags.get(METRIC_TAG_PREFIX + key) for key in params.registry.gate_metrics]
    if not values or any(value is None for value in values):
        return None
    present = cast(list[str], values)  # none is None (checked above)
    return sum(float(value) for value in present) / len(present)


def _missing_metrics(params: Params, version: ModelVersion) -> list[str]:
    return [key for key in params.registry.gate_metrics if METRIC_TAG_PREFIX + key not in version.tags]


# --------------------------------------------------------------------------- aliases and history


def _version(client: MlflowClient, name: str, version: int | str) -> ModelVersion:
    return client.get_model_version(name, str(version))


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return dict(client.get_registered_model(name).aliases)


def _alias(client: MlflowClient, name: str, alias: str) -> int | None:
    aliases = _aliases(client, name)
    return int(aliases[alias]) if alias in aliases else None


def alias_version(params: Params, alias: str) -> int:
    """The version ``alias`` names in the registered model; a RegistryError saying what exists if none."""
    client, name = _client(params), params.registry.model_name
    try:
        aliases = _aliases(client, name)
    except MlflowException:
        raise RegistryError(f"no registered model {name!r} in {tracking.registry_uri(params)} "
                            "(run `dvc repro` or `radclip register` first)") from None
    if alias not in aliases:
        raise RegistryError(f"registered model {name!r} has no alias {alias!r} (aliases: "
                            f"{', '.join(sorted(aliases)) or 'none'})")
    return int(aliases[alias])


def _history(tags: Mapping[str, str]) -> list[dict[str, Any]]:
    """The history in a registered model's tags: an earlier version's single list, then one tag per change in
    sequence order."""
    entries = list(json.loads(tags.get(HISTORY_TAG, "[]")))
    numbered = sorted((int(key[len(HISTORY_ENTRY_PREFIX):]), value) for key, value in tags.items()
                      if key.startswith(HISTORY_ENTRY_PREFIX) and key[len(HISTORY_ENTRY_PREFIX):].isdigit())
    return entries + [json.loads(value) for _, value in numbered]


def champion_history(params: Params) -> list[dict[str, Any]]:
    """Every change of champion, oldest first: ``{"version", "time", "action", "reason", "previous"}``."""
    return _history(_client(params).get_registered_model(params.registry.model_name).tags)


def _crown(client: MlflowClient, decision: Decision) -> None:
    """Point ``champion`` at the decision's version and add the change to the history as a tag of its own."""
    name = decision.model_name
    client.set_registered_model_alias(name, CHAMPION, str(decision.version))
    sequence = len(_history(client.get_registered_model(name).tags))
    entry = {"version": decision.version, "time": decision.time, "action": decision.action,
             "reason": decision.reason, "previous": decision.champion_version}
    client.set_registered_model_tag(name, f"{HISTORY_ENTRY_PREFIX}{sequence:06d}",
                                    json.dumps(entry, separators=(",", ":")))


def _record_gate(client: MlflowClient, decision: Decision) -> None:
    """The gate's decision as ``gate.*`` tags on the challenger (manual changes live in the history only)."""
    tags = {"decision": decision.decision, "reason": decision.reason,
            "value": _format(decision.value), "champion_version": decision.champion_version or "none",
            "champion_value": _format(decision.champion_value), "min_improvement": decision.min_improvement,
            "time": decision.time}
    for key, value in tags.items():
        client.set_model_version_tag(decision.model_name, str(decision.version), GATE_TAG_PREFIX + key, str(value))


# --------------------------------------------------------------------------- operations


def gate(params: Params, version: int) -> Decision:
    """Promote ``version`` to champion when there is none or its gate mean beats the champion's by
    ``min_improvement``; record the decision on the version either way."""
    client, name = _client(params), params.registry.model_name
    challenger = _version(client, name, version)
    missing = _missing_metrics(params, challenger)
    if missing:
        raise RegistryError(f"{name} v{version} has no tag for gate metric(s) {missing} (registered before "
                            f"registry.gate_metrics changed?); register it again from its evaluation")
    value = _gate_mean(params, challenger)
    champion = _alias(client, name, CHAMPION)
    if champion == int(version):
        raise RegistryError(f"{name} v{version} is already the champion")
    minimum = params.registry.min_improvement
    champion_value = None
    if champion is None:
        promoted, reason = True, "no champion yet"
    else:
        champion_version = _version(client, name, champion)
        champion_value = _gate_mean(params, champion_version)
        if champion_value is None:
            raise RegistryError(f"champion {name} v{champion} has no tag for gate metric(s) "
                                f"{_missing_metrics(params, champion_version)}: cannot compare; "
                                f"promote a challenger by hand (radclip promote --version N)")
        # The challenger has every gate metric tagged (checked above) and the champion's mean exists,
        # so gate_metrics is non-empty and the challenger's mean exists too.
        assert value is not None
        gain = value - champion_value
        promoted = gain >= minimum
        comparison = ">=" if promoted else "<"
        reason = (f"gate mean {value:.4f} vs champion v{champion} {champion_value:.4f}: "
                  f"{gain:+.4f} {comparison} min improvement {minimum:g}")
    decision = Decision(name, int(version), "gate", "promoted" if promoted else "refused", reason, value,
                        champion, champion_value, minimum, _now())
    _record_gate(client, decision)
    if promoted:
        _crown(client, decision)
    return decision


def register(
    params: Params, *, model_dir: Path, evaluation: Mapping[str, Any], extra_tags: Mapping[str, Any] | None = None
) -> Decision:
    """Register the model in ``model_dir`` as a new version, tag it, make it the challenger, gate it.

    The version is the LoggedModel the training run logged these weights as (found by their digest), so its
    source is that run; it is tagged with the training run, the evaluation run that tagged the model and the
    lineage the training run recorded. Weights this store never logged (trained against another store) are
    logged here, in the ``register`` run, with a warning that the lineage to their training is lost.
    """
    metrics = gate_metric_values(params, evaluation)  # before anything is logged: a bad metric logs nothing
    name = params.registry.model_name
    client = _client(params)
    logged = tracking.find_logged_model(params, model_dir)
    with tracking.start_run(params, stage="register", run_name=f"register-{name}") as run:
        if logged is None:
            log.warning("%s: no LoggedModel of these weights in %s; logging them in this register run (the "
                        "version's lineage stops here, not at the run that trained it)", model_dir,
                        tracking.tracking_uri(params))
            model_id = mlflow_pyfunc.log_model(Path(model_dir), tags={tracking.TAG_STAGE: "register"}).model_id
            logged = client.get_logged_model(model_id)
        source_run = logged.source_run_id or run.info.run_id
        # models:/<model id>: the version's source is the LoggedModel and its run the one that logged it.
        version = str(mlflow.register_model(f"models:/{logged.model_id}", name).version)
        lineage = client.get_run(source_run).data.tags  # what the training run recorded (git, data, params)
        tags: dict[str, Any] = {key: lineage[key] for key in LINEAGE_TAGS if key in lineage}
        tags.update({TRAINING_RUN_TAG: source_run, MODEL_ID_TAG: logged.model_id,
                     EVALUATION_RUN_TAG: logged.tags.get(tracking.TAG_EVALUATION_RUN, "none")})
        tags.update({str(key): value for key, value in (extra_tags or {}).items()})
        tags.update({METRIC_TAG_PREFIX + key: value for key, value in metrics.items()})
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, str(value))
        client.set_registered_model_alias(name, CHALLENGER, version)
        tracking.log_metrics({f"gate.{key}": value for key, value in metrics.items()})
        decision = gate(params, int(version))
        tracking.set_tags({"registry.version": version, "registry.decision": decision.decision,
                           MODEL_ID_TAG: logged.model_id})
    return decision


def promote(params: Params, version: int | None = None, *, force: bool = False) -> Decision:
    """Run the gate for ``version`` (default: the ``challenger`` alias): it becomes champion only if it
    wins. ``force`` makes it champion regardless — the operator's call, recorded as such."""
    client, name = _client(params), params.registry.model_name
    if version is None:
        version = _alias(client, name, CHALLENGER)
        if version is None:
            raise RegistryError(f"{name} has no {CHALLENGER!r} alias: give a version (radclip promote --version N)")
    if not force:
        return gate(params, int(version))
    target = _version(client, name, version)
    champion = _alias(client, name, CHAMPION)
    if champion == int(version):
        raise RegistryError(f"{name} v{version} is already the champion")
    champion_value = _gate_mean(params, _version(client, name, champion)) if champion is not None else None
    decision = Decision(name, int(version), "promote", "promoted", "promoted by hand", _gate_mean(params, target),
                        champion, champion_value, params.registry.min_improvement, _now())
    _crown(client, decision)
    return decision


def _champion_stack(history: list[dict[str, Any]]) -> list[int]:
    """Replay the history: promotions push a champion, rollbacks pop one (a second rollback goes further back)."""
    stack: list[int] = []
    for entry in history:
        if entry["action"] == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(int(entry["version"]))
    return stack


def rollback(params: Params) -> Decision:
    """Move ``champion`` back to the champion before the current one (per the history) and log it there."""
    client, name = _client(params), params.registry.model_name
    current = _alias(client, name, CHAMPION)
    history = champion_history(params)
    stack = _champion_stack(history)
    if current is None or len(stack) < 2:
        raise RegistryError(f"{name}: no previous champion to roll back to "
                            f"({len(history)} champion change(s) in its {HISTORY_TAG!r} tags)")
    restored = stack[-2]
    decision = Decision(name, restored, "rollback", "rolled back", f"rolled back from v{current}",
                        _gate_mean(params, _version(client, name, restored)), current,
                        _gate_mean(params, _version(client, name, current)), params.registry.min_improvement, _now())
    _crown(client, decision)
    return decision
