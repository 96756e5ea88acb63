"""Test session set-up: the network guard, offline switches, and shared fixtures.

The guard (tests/netguard/sitecustomize.py) refuses any socket connection or name
lookup beyond loopback, in this process and in every Python process the tests
start (Ray workers, DVC stages, servers): they inherit PYTHONPATH and the log
path. The session fails at the end if anything was refused.

Layout: tests/<layer>/test_<module>.py mirrors radclip/<layer>/<module>.py (tests/code:
cross-cutting checks; tests/test_serving.py: radclip/serving.py). There are no
``__init__.py`` files: pytest's default (prepend) import mode puts each test folder and,
through this conftest.py, tests/ itself on sys.path, so ``helpers`` imports everywhere and
test file names must be unique across folders (tests/code/test_layout.py checks it).

Shared fixtures:

* ``mlflow_store``: an empty MLflow store per test module (SQLite + artifacts in tmp);
* ``tiny_curated``: the tiny phantom dataset of ``helpers.tiny_params``, generated and
  curated once per session; read-only by contract (checked when the session ends).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# tests/postgres_server.py: a throwaway PostgreSQL server; tests/tracking_server.py: an S3-compatible endpoint and
# an MLflow tracking server on them (fixtures)
pytest_plugins = ["postgres_server", "tracking_server", "ray_cluster"]
PROJECT_ROOT = Path(__file__).resolve().parent.parent
NETGUARD_DIR = Path(__file__).resolve().parent / "netguard"
# Under pytest-xdist (``TEST_WORKERS=2 make test``) a worker appends to the log its controller made and
# exported before starting it; only the controller reads it at the end, because a worker's exit status does not
# reach the controller.
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _XDIST_WORKER:
    # A temp root per worker, set before anything asks tempfile for it: local Ray keeps its HOME and auth token
    # under it (radclip.io.ray_cluster._ray_home), and two workers sharing one token file raced on it (a
    # two-node-cluster test then failed to authenticate). Short: a local Ray whose temp dir falls back to
    # <temp root>/radclip-ray-<digest> nests unix sockets under it, and /tmp/radclip-<8 hex>-gw1 left
    # .../session_<date>_<time>_<usec>_<pid>/sockets/dash_MetricsHead (the dashboard's longest) past the
    # 107-byte limit: that module died at start-up and the worker's Ray tests failed.
    import tempfile

    _worker_tmp = Path("/tmp") / f"rc{os.environ.get('PYTEST_XDIST_TESTRUNUID', 'xdist')[:6]}{_XDIST_WORKER}"
    _worker_tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(_worker_tmp)
    tempfile.tempdir = None  # tempfile caches its first answer
_INHERITED_LOG = os.environ.get("RADCLIP_NETGUARD_LOG") if _XDIST_WORKER else None
_NETGUARD_LOG = Path(_INHERITED_LOG) if _INHERITED_LOG else PROJECT_ROOT / ".tmp" / f"netguard-{os.getpid()}.log"


def _install_network_guard() -> None:
    _NETGUARD_LOG.parent.mkdir(parents=True, exist_ok=True)
    if not _INHERITED_LOG:
        _NETGUARD_LOG.write_text("")
    os.environ["RADCLIP_NETGUARD_LOG"] = str(_NETGUARD_LOG)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(NETGUARD_DIR), str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    sys.path.insert(0, str(NETGUARD_DIR))
    import sitecustomize  # noqa: F401  (the guard module; installs the audit hook when imported with the log set)

    guard = sitecustomize
    if getattr(guard, "_guard", None) is None:
        # This interpreter imported a sitecustomize of its own at start-up (Debian's python3 ships one), so the
        # name is taken in this process: load the guard from its file. Child processes get ours first on
        # PYTHONPATH, ahead of the interpreter's.
        import importlib.util

        spec = importlib.util.spec_from_file_location("radclip_netguard", NETGUARD_DIR / "sitecustomize.py")
        if spec is None or spec.loader is None:
            raise RuntimeError(f"network guard not loadable from {NETGUARD_DIR}")
        guard = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(guard)
        if getattr(guard, "_guard", None) is None:
            raise RuntimeError(f"network guard not loaded from {NETGUARD_DIR}")
    sys.modules["radclip_netguard"] = guard  # the guard module under one name, whichever way it was loaded


_install_network_guard()
from radclip.config import CurateParams  # noqa: E402  (after the guard)

# Curation refuses a collection that is not the pipeline's phantom data without a PHI salt in the
# environment (fail closed); the tests curate many such tmp collections, so the session sets one: the
# phantom fallback's own value, so phantom data splits exactly as without the variable. Tests of the
# refusal and of the fallback remove it (tests/data/test_curate.py).
os.environ.setdefault(CurateParams().salt_env, CurateParams().salt)
from helpers import CuratedPhantoms, curate_phantoms  # noqa: E402  (imports radclip: after the guard)

# Ray's system metrics off for every Ray the tests start, as `make` sets them (the Makefile says why), also when
# pytest runs without make: with them on, once this process had joined the two-node cluster, the metrics
# exporter of the next local session held its ray.shutdown() for about 50 s (tests/io/test_ray_data.py after
# tests/io/test_ray_cluster.py: 61 s against 12 s alone).
os.environ.setdefault("RAY_enable_metrics_collection", "0")
# Ray Train's controller polls its workers every 2 s by default, and a fit ends only at the poll after it
# finished (two or three polls: about 7 s of every tiny fit here); make sets the same interval (Makefile).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")

import radclip  # noqa: E402,F401  (applies the offline switches for this process and its children)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _XDIST_WORKER:
        import shutil

        shutil.rmtree(os.environ["TMPDIR"], ignore_errors=True)  # this worker's temp root (see above)
    if _INHERITED_LOG:
        return  # an xdist worker: the controller reads the shared log
    refused = _NETGUARD_LOG.read_text().strip() if _NETGUARD_LOG.exists() else ""
    if refused:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter:
            reporter.write_line("NETWORK GUARD: connections beyond loopback were attempted:", red=True)
            for line in refused.splitlines():
                reporter.write_line(f"  {line}", red=True)
    else:
        _NETGUARD_LOG.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


# --------------------------------------------------------------------------- MLflow store


@dataclass(frozen=True)
class MlflowStore:
    root: Path  # tmp folder of this store
    uri: str  # sqlite:///<root>/mlflow.db, exported as MLFLOW_TRACKING_URI
    artifacts: Path  # an artifact root for params.mlflow.artifact_root


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> Iterator[MlflowStore]:
    """An empty MLflow store for one test module: an SQLite file in tmp exported as MLFLOW_TRACKING_URI
    (MLFLOW_REGISTRY_URI unset: the registry is the same store), forgotten when the module ends."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    store = MlflowStore(root=root, uri=f"sqlite:///{root / 'mlflow.db'}", artifacts=root / "artifacts")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store.uri)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        yield store
        mlflow.set_tracking_uri(None)  # forget the tmp store (also clears the exported variables)
        mlflow.set_registry_uri(None)


# --------------------------------------------------------------------------- the tiny curated dataset


def _tree_digest(*roots: Path) -> str:
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*")):
            digest.update(path.relative_to(root.parent).as_posix().encode())
            if path.is_file():
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def tiny_curated(tmp_path_factory) -> Iterator[CuratedPhantoms]:
    """The phantoms of ``tiny_params`` generated and curated (serially) once for the session.

    Shared by every test that needs "some curated phantoms": never write into ``raw/`` or
    ``curated/`` (tests that need other content build their own); write models, reports
    and caches elsewhere, e.g. under ``tiny_curated.workspace(tmp)``. The session checks at
    its end that ``raw/`` and ``curated/`` are byte for byte what generation and curation wrote.
    """
    data = curate_phantoms(tmp_path_factory.mktemp("tiny_curated"))
    before = _tree_digest(data.raw, data.curated_dir)
    yield data
    assert _tree_digest(data.raw, data.curated_dir) == before, (
        f"a test changed the shared tiny curated dataset under {data.base} (raw/ or curated/)")
