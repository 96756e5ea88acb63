"""Test session set-up: the network guard, offline switches, and shared fixtures.

The guard (tests/netguard/sitecustomize.py) refuses any socket connection or name
lookup beyond loopback, in this process and in every Python process the tests
start (Ray workers, DVC stages, servers): they inherit PYTHONPATH and the log
path. The session fails at the end if anything was refused.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NETGUARD_DIR = Path(__file__).resolve().parent / "netguard"
_NETGUARD_LOG = PROJECT_ROOT / ".tmp" / f"netguard-{os.getpid()}.log"


def _install_network_guard() -> None:
    _NETGUARD_LOG.parent.mkdir(parents=True, exist_ok=True)
    _NETGUARD_LOG.write_text("")
    os.environ["RADCLIP_NETGUARD_LOG"] = str(_NETGUARD_LOG)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(NETGUARD_DIR), str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    sys.path.insert(0, str(NETGUARD_DIR))
    import sitecustomize  # noqa: F401  (the guard module; installs the audit hook when imported with the log set)

    if getattr(sitecustomize, "_guard", None) is None:
        raise RuntimeError(f"network guard not loaded from {NETGUARD_DIR}")


_install_network_guard()
import radclip  # noqa: E402,F401  (applies the offline switches for this process and its children)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
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
