"""A two-node Ray cluster on this machine, started and stopped by the tests (pytest plugin).

``ray_cluster`` (module): ``ray start --head`` on 127.0.0.2 and a second ``ray start --address=…`` on 127.0.0.3,
each with its own temp dir and a custom resource naming it (``node_a``, ``node_b``): two raylets, two object
stores, workers on both. Both addresses are loopback (127.0.0.0/8), so nothing leaves the machine; Ray would
otherwise advertise the machine's interface address, and its single-node switch
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which the project's local Ray uses) refuses a second node. The
processes share the project's local Ray ``HOME`` (``ray_bootstrap_config.yaml``: no cloud metadata probe) and
its token, and the session's network guard; they are stopped by their temp dirs, never by
``ray stop`` (which would stop every Ray of this user).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tracking_server import free_port

from radclip.io.ray_cluster import _ray_home  # our own helper (private to radclip): the HOME every local Ray uses

HEAD_IP, SECOND_IP = "127.0.0.2", "127.0.0.3"
CPUS_PER_NODE = 2  # logical CPUs: one Ray Train worker per node, and room for the tasks around it


@dataclass(frozen=True)
class RayCluster:
    address: str  # host:port of the head's GCS, what ray.address takes
    head_ip: str
    second_ip: str
    storage: Path  # a folder both nodes reach (the same machine): ray.storage_path
    root: Path

    def ray_params(self) -> dict:
        return {"address": self.address, "node_ip_address": self.head_ip, "storage_path": str(self.storage),
                "placement_strategy": "STRICT_SPREAD"}


def _cluster_env(home: Path, token: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env.update({"HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                "RAY_USAGE_STATS_ENABLED": "0", "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
                "GLOO_SOCKET_IFNAME": "lo"})
    env.setdefault("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    return env


def _processes_under(temp_dirs: list[Path]) -> list[int]:
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info.get("cmdline") or [])
        if any(str(directory) in command for directory in temp_dirs):
            found.append(process.info["pid"])
    return found


def _stop(temp_dirs: list[Path]) -> None:
    # The GCS, the raylets and the autoscaler monitor outlive SIGTERM by more than 10 s, and a throwaway cluster
    # needs none of their graceful shutdown: a second, then SIGKILL; their workers exit with their raylet.
    for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 5.0)):
        pids = _processes_under(temp_dirs)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline and _processes_under(temp_dirs):
            time.sleep(0.2)


def _reload_ray_config() -> None:
    # The driver reads RAY_AUTH_MODE through Ray's RayConfig, which a process caches the first time Ray asks for
    # it; a process whose cache says "disabled" (no local Ray before it, as on a pytest-xdist worker) joined the
    # token-auth cluster without its token and was refused. No public call re-reads it: this is what Ray's own
    # token set-up (ray._private.authentication) calls after it sets RAY_AUTH_MODE.
    from ray._raylet import Config

    Config.initialize("")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    with two_node_cluster() as cluster:
        yield cluster


@contextlib.contextmanager
def two_node_cluster() -> Iterator[RayCluster]:
    """The two nodes, until the block ends; inside it this process has the cluster's token (to join it)."""
    root = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))  # short: Ray's unix socket paths nest under it
    head_dir, second_dir, storage = root / "a", root / "b", root / "storage"
    for directory in (head_dir, second_dir, storage):
        directory.mkdir()
    # The project's local Ray HOME (ray_bootstrap_config.yaml inside) and its token: a process that started a
    # local Ray before keeps that token cached for every later ray.init, so the cluster must accept the same one.
    home = _ray_home()
    token_file = home / ".ray" / "auth_token"
    if not token_file.is_file():
        token_file.parent.mkdir(mode=0o700, exist_ok=True)
        token_file.write_text(secrets.token_hex(32))
    token = token_file.read_text().strip()
    env = _cluster_env(home, token)
    ray_cli = str(Path(sys.executable).parent / "ray")
    port = free_port()
    address = f"{HEAD_IP}:{port}"
    commands = [
        [ray_cli, "start", "--head", "--node-ip-address", HEAD_IP, "--port", str(port), "--temp-dir", str(head_dir),
         "--num-cpus", str(CPUS_PER_NODE), "--resources", '{"node_a": 1}', "--dashboard-host", HEAD_IP,
         "--dashboard-port", str(free_port()), "--disable-usage-stats"],
        [ray_cli, "start", "--address", address, "--node-ip-address", SECOND_IP, "--temp-dir", str(second_dir),
         "--num-cpus", str(CPUS_PER_NODE), "--resources", '{"node_b": 1}', "--disable-usage-stats"],
    ]
    try:
        for command in commands:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RAY_AUTH_MODE", "token")
            patch.setenv("RAY_AUTH_TOKEN", token)
            patch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
            _reload_ray_config()
            yield RayCluster(address=address, head_ip=HEAD_IP, second_ip=SECOND_IP, storage=storage, root=root)
    finally:
        _reload_ray_config()  # the restored environment's auth mode, for the process's later Rays
        _stop([head_dir, second_dir])
        shutil.rmtree(root, ignore_errors=True)
