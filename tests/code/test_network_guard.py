"""The network guard itself: it must refuse non-loopback traffic here and in child processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

import radclip_netguard as netguard  # registered by conftest.py, whichever way it loaded the guard


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0", socket.gethostname(), None])
def test_loopback_hosts_are_allowed(host):
    assert netguard._is_loopback_host(host)


@pytest.mark.parametrize("host", ["169.254.169.254", "metadata.google.internal", "example.com", "10.0.0.1", "8.8.8.8"])
def test_other_hosts_are_refused(host):
    assert not netguard._is_loopback_host(host)


def test_guard_refuses_a_connection_before_it_is_made(tmp_path, monkeypatch):
    log = tmp_path / "guard.log"
    monkeypatch.setenv("RADCLIP_NETGUARD_LOG", str(log))
    with pytest.raises(OSError, match="network guard"):
        socket.getaddrinfo("metadata.google.internal", 80)
    assert "metadata.google.internal" in log.read_text()


def test_child_processes_inherit_the_guard(tmp_path):
    log = tmp_path / "child.log"
    env = dict(os.environ, RADCLIP_NETGUARD_LOG=str(log))
    code = "import socket\ntry:\n    socket.getaddrinfo('169.254.169.254', 80)\nexcept OSError as e:\n    print('refused', e)\n"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("refused")
    assert "169.254.169.254" in log.read_text()


def test_offline_switches_are_set_for_every_library():
    from radclip.offline import OFFLINE_ENV

    for key in ("HF_HUB_OFFLINE", "DVC_NO_ANALYTICS", "MLFLOW_DISABLE_TELEMETRY", "RAY_USAGE_STATS_ENABLED"):
        assert os.environ[key] == OFFLINE_ENV[key]


def test_a_refusal_in_an_xdist_worker_fails_the_whole_session(tmp_path, project_root):
    # TEST_WORKERS=2 make test runs the suite on pytest-xdist workers, whose exit status never reaches the controller:
    # the workers must log to the controller's file and the controller must fail the session on what they logged.
    (tmp_path / "test_refused.py").write_text(
        "import socket\n\n\n"
        "def test_swallows_a_refusal():\n"
        "    try:\n"
        "        socket.getaddrinfo('metadata.google.internal', 80)\n"
        "    except OSError:\n"
        "        pass\n\n\n"
        "def test_other():\n"
        "    assert True\n"
    )
    env = {key: value for key, value in os.environ.items()
           if key not in ("RADCLIP_NETGUARD_LOG", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT")}
    env["PYTHONPATH"] = os.pathsep.join([str(project_root / "tests"), str(project_root), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-n", "1", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_refused.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert "2 passed" in result.stdout, result.stdout + result.stderr
    assert result.returncode != 0
    assert "NETWORK GUARD" in result.stdout and "metadata.google.internal" in result.stdout
