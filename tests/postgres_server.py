"""A throwaway PostgreSQL server for the tests (a pytest plugin, registered in tests/conftest.py).

Why: MLflow's SQL schema declares tag values ``VARCHAR(5000)``; SQLite ignores the width, PostgreSQL enforces
it, so what holds on the SQLite store is checked on PostgreSQL too (tests/io/test_mlflow_registry.py).

The server is the one in the ``pgserver`` wheel (a test dependency in pyproject.toml): its bundled ``initdb`` and
``pg_ctl``, driven directly rather than through ``pgserver.get_server``, because that helper, run as root (as
the development machines run the tests), creates a system user with ``useradd`` and makes every parent folder
of the data directory world-readable; it also keeps a lock and pid lists under the user's runtime folder.
Here the server lives in pytest's tmp folder, and as root it runs as the existing ``nobody`` account
(PostgreSQL refuses to run as root).

No TCP at all: ``listen_addresses=''``, the server accepts connections on a unix socket in its data folder
only (checked once it is up). libpq connects through that socket from C, below the network guard's audit
hook (tests/netguard/sitecustomize.py), which has nothing to refuse there anyway.

Fixtures:

* ``postgres_server`` (session): the running server; stopped and its data deleted when the session ends;
* ``postgres_uri`` (session): an SQLAlchemy URI for a database of its own on that server;
* ``postgres_database_uri`` (per test): an SQLAlchemy URI for a fresh, empty database, dropped after the test.

URIs name the driver (``postgresql+psycopg2://``): SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3,
which is not installed. MLflow accepts them as they are (an MLflow store: ``MlflowClient(tracking_uri=uri)``;
its tables are created by MLflow's alembic migrations on first use: about a second per database here).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "postgres"  # the server's superuser (initdb -U), authenticated by trust on the socket only
UNPRIVILEGED_ACCOUNT = "nobody"  # who runs the server when the tests run as root
_SOCKET_PATH_MAX = 107  # sun_path (108 bytes with the NUL) on Linux


def _bin_dir() -> Path:
    """pgserver's bundled PostgreSQL binaries, found without importing the package: importing it runs code at
    class definition (platformdirs warns when XDG_RUNTIME_DIR is unset) that none of this uses."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise RuntimeError("pgserver is not installed (a test dependency: pip install -c constraints.txt -e '.[test]')")
    return Path(spec.origin).parent / "pginstall" / "bin"


@dataclass(frozen=True)
class PostgresServer:
    data: Path  # PGDATA; also holds the unix socket (.s.PGSQL.5432) and the server log

    def uri(self, database: str) -> str:
        # host=<folder>: libpq takes a path as the folder of the unix socket (no TCP).
        return f"postgresql+psycopg2://{SUPERUSER}@/{database}?host={self.data}"

    def execute(self, sql: str) -> None:
        """Run one statement on the ``postgres`` database outside a transaction (CREATE/DROP DATABASE need that)."""
        import psycopg2

        connection = psycopg2.connect(dbname="postgres", user=SUPERUSER, host=str(self.data))
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(sql)
        finally:
            connection.close()

    def create_database(self, prefix: str = "radclip") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"  # lower case: no quoting needed
        self.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        """FORCE ends the connections MLflow keeps pooled (its engines are cached per URI for the process; a
        dropped database's URI is never used again)."""
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _run_as(account: pwd.struct_passwd | None) -> dict:
    """subprocess arguments that run a command as ``account`` (None: as ourselves), with a minimal environment."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
    if account is None:
        return {"env": env}
    return {"env": env, "user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _let_account_traverse(path: Path, basetemp: Path) -> None:
    """Root only: pytest makes its tmp folders 0700, so the unprivileged server could not reach its data folder.
    Add search permission for others (x, not read: nothing becomes listable) to ``path`` and its ancestors up to
    pytest's own root ``pytest-of-<user>`` (which pytest sets back to 0700 at its next session; under pytest-xdist
    a worker's basetemp is one level deeper, ``pytest-of-<user>/pytest-N/popen-gwK``), or up to the ``--basetemp``
    given; above that, every folder must already be searchable."""
    stop = next((folder for folder in basetemp.parents if folder.name.startswith("pytest-of-")), basetemp)
    below = True
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            if not below:
                raise RuntimeError(f"{folder} is not searchable by others, so PostgreSQL (run as "
                                   f"{UNPRIVILEGED_ACCOUNT!r}) cannot reach {path}; use another --basetemp")
            folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
        below = below and folder != stop


def _check_no_tcp(data: Path) -> None:
    """The postmaster.pid file lists the addresses listened on (line 6): empty means unix socket only; psutil
    confirms the postmaster holds no internet socket."""
    import psutil

    lines = (data / "postmaster.pid").read_text().splitlines()
    assert lines[5].strip() == "", f"PostgreSQL listens on TCP: {lines[5]!r}"
    inet = psutil.Process(int(lines[0])).net_connections(kind="inet")
    assert not inet, f"PostgreSQL holds internet sockets: {inet}"


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory) -> Iterator[PostgresServer]:
    """PostgreSQL 16 from the pgserver wheel, on a unix socket in a tmp folder, for the whole session."""
    with running_postgres(tmp_path_factory.mktemp("postgres").resolve(),
                          tmp_path_factory.getbasetemp().resolve()) as server:
        yield server


@contextlib.contextmanager
def running_postgres(base: Path, traverse_from: Path) -> Iterator[PostgresServer]:
    """PostgreSQL in ``base`` (empty) until the block ends; as root, the account it runs as may traverse the
    folders from ``traverse_from`` down to ``base`` (the fixture's pytest tmp; a benchmark's temp folder)."""
    bin_dir = _bin_dir()
    data = base / "data"
    socket_path = data / ".s.PGSQL.5432"
    if len(str(socket_path)) > _SOCKET_PATH_MAX:
        raise RuntimeError(f"unix socket path too long ({len(str(socket_path))} > {_SOCKET_PATH_MAX}): {socket_path}; "
                           "use a shorter --basetemp")
    data.mkdir(mode=0o700)
    account = None
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam(UNPRIVILEGED_ACCOUNT)
        except KeyError:
            raise RuntimeError(f"running as root, PostgreSQL needs an unprivileged account to run as: no "
                               f"{UNPRIVILEGED_ACCOUNT!r} on this machine") from None
    if account is not None:
        os.chown(data, account.pw_uid, account.pw_gid)
        _let_account_traverse(base, traverse_from)
    run = _run_as(account)
    output = base / "pg_ctl.out"  # pg_ctl's own messages; the server logs to data/server.log
    log = data / "server.log"

    def pg(*args: str) -> None:
        # Output to a file, not a pipe: the server started by pg_ctl could hold a pipe open past pg_ctl's exit.
        with output.open("a") as out:
            subprocess.run([str(bin_dir / args[0]), *args[1:]], check=True, stdout=out, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, cwd=base, timeout=120, **run)

    def failure(what: str) -> str:
        server_log = log.read_text() if log.exists() else ""
        return f"{what}\n--- {output}:\n{output.read_text() if output.exists() else ''}\n--- {log}:\n{server_log}"

    try:
        try:
            # --no-sync, fsync=off and friends: a throwaway server; durability would only cost time.
            # max_connections: one session's server serves every PostgreSQL test of its (xdist) worker, and the
            # test process keeps MLflow's and Optuna's pooled connections to each database it used until it
            # ends; the default 100 ran out once under xdist's module order.
            pg("initdb", "-D", str(data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--no-locale",
               "--no-sync")
            options = (f"-c listen_addresses='' -k {shlex.quote(str(data))} -c max_connections=400 "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            pg("pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            raise RuntimeError(failure(f"PostgreSQL did not start: {error}")) from error
        _check_no_tcp(data)
        yield PostgresServer(data=data)
    finally:  # also when start-up or a check failed half-way, so that no server outlives the session
        if (data / "postmaster.pid").exists():
            _stop(pg, data)
        shutil.rmtree(data, ignore_errors=True)


def _stop(pg, data: Path) -> None:
    """Fast shutdown (disconnects MLflow's pooled connections); if that fails, SIGQUIT: PostgreSQL's immediate
    shutdown (the postmaster ends its backends and exits without a checkpoint; nothing here needs one)."""
    try:
        pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        pid_file = data / "postmaster.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)
            except (ProcessLookupError, ValueError):
                pass


@pytest.fixture(scope="session")
def postgres_uri(postgres_server) -> str:
    """An SQLAlchemy URI for a database of the session's own on the test server (shared by its users)."""
    return postgres_server.uri(postgres_server.create_database("radclip_session"))


@pytest.fixture
def postgres_database_uri(postgres_server) -> Iterator[str]:
    """An SQLAlchemy URI for a fresh, empty database, so tests share no state; dropped after the test."""
    name = postgres_server.create_database()
    yield postgres_server.uri(name)
    postgres_server.drop_database(name)
