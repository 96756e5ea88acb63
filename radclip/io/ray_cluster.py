"""Ray start-up in one place: join a configured cluster, or start a local one that stays on loopback.

A local Ray started naively sends traffic beyond loopback even with usage stats
off: its usage-stats dashboard module probes cloud metadata servers
(169.254.169.254, metadata.google.internal) unless ``~/ray_bootstrap_config.yaml``
exists, a "disabled" usage report goes out for clusters started by ``ray start``,
and nodes advertise the machine's public interface address instead of 127.0.0.1.
:func:`ray_session` closes each of these for the processes it starts:

- ``HOME`` of the Ray processes points at ``<system temp>/radclip-ray-home-<uid>`` holding a
  ``ray_bootstrap_config.yaml`` (``provider: local``), so no metadata probe runs;
  ``HF_HOME`` keeps pointing at the user's Hugging Face cache.
- ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes a single-node Ray bind and
  advertise 127.0.0.1.
- usage stats off, and their report URL set to a closed loopback port.

On a cluster (``ray.address`` set) the cluster's own start-up is in charge;
README's "Scaling out" shows the same settings for ``ray start``. The driver joins it with a
``runtime_env`` (:func:`cluster_runtime_env`) that ships this checkout's ``radclip`` package and the
offline and tracking settings to every worker, so the nodes run the driver's code, not whatever they have installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from radclip.config import Params

Task = TypeVar("Task")
Result = TypeVar("Result")

LOCAL_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",  # discard port: nothing leaves the machine
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # single node on 127.0.0.1
    "GLOO_SOCKET_IFNAME": "lo",  # torch.distributed gloo (Ray Train on CPU) on the loopback interface
}

# What the driver's environment tells every worker on a cluster: offline switches, tracking and rendezvous settings
# and curation's salt (README, Scaling out). Values stay in the job's runtime_env, visible to the cluster's operators.
FORWARDED_ENV = (
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY",
    "MLFLOW_TRACKING_URI", "RAY_USAGE_STATS_ENABLED", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "RADCLIP_PHI_SALT",
)
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # radclip/

# Unix socket paths are limited to 107 bytes; Ray nests several levels under its temp dir.
_MAX_TEMP_DIR_LENGTH = 40  # + "/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store" (~63)


def _ray_temp_dir(params: Params) -> Path:
    preferred = params.resolve(params.paths.tmp) / "ray"
    if len(str(preferred)) <= _MAX_TEMP_DIR_LENGTH:
        return preferred
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"radclip-ray-{digest}"


def _ray_home() -> Path:
    # One location per user, not per project: the driver caches Ray's auth token after its first
    # ray.init and later inits in the same process must find that same token under HOME/.ray.
    home = Path(tempfile.gettempdir()) / f"radclip-ray-home-{os.getuid()}"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text(
        "# Read by Ray's usage-stats module instead of probing cloud metadata servers.\n"
        "provider:\n  type: local\n"
    )
    return home


@contextlib.contextmanager
def _patched_environ(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cluster_runtime_env() -> dict:
    """The job's runtime_env on a cluster: this ``radclip`` package (uploaded once, put first on the workers'
    path) and the :data:`FORWARDED_ENV` variables the driver has set."""
    return {
        "py_modules": [str(PACKAGE_DIR)],
        "excludes": ["__pycache__"],
        "env_vars": {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ},
    }


@contextlib.contextmanager
def ray_session(params: Params, *, num_cpus: int | None = None) -> Iterator[None]:
    """Run the body with Ray initialised (and shut down after, if we started it)."""
    import ray

    if ray.is_initialized():
        yield
        return
    if params.ray.address:
        # _node_ip_address is ray.init's documented keyword for this node's address (no public alternative):
        # on a machine with several interfaces Ray's guess may name one the cluster's nodes do not listen on.
        extra: dict[str, Any] = {"_node_ip_address": params.ray.node_ip_address} if params.ray.node_ip_address else {}
        ray.init(address=params.ray.address, runtime_env=cluster_runtime_env(), configure_logging=False,
                 log_to_driver=True, **extra)
    else:
        real_home = Path.home()
        env = dict(LOCAL_RAY_ENV)
        env["HOME"] = str(_ray_home())
        env["HF_HOME"] = os.environ.get("HF_HOME") or str(real_home / ".cache" / "huggingface")
        # Ray workers import radclip from the project, also when it is not installed.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")) if p
        )
        from ray._private import ray_constants

        # Private on purpose: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when ray is first
        # imported, and no public call sets it later; the driver reads this constant at init time
        # (the env var only reaches the processes Ray starts).
        ray_constants.ENABLE_RAY_CLUSTER = False
        with _patched_environ(env):
            ray.init(
                num_cpus=num_cpus or params.ray.num_cpus or os.cpu_count(),
                include_dashboard=True,  # Ray Train V2 queries controller state through it; it listens on 127.0.0.1
                _temp_dir=str(_ray_temp_dir(params)),
                configure_logging=False,
                log_to_driver=True,
            )
    try:
        yield
    finally:
        ray.shutdown()


def run_ordered(
    function: Callable[[Task], Result], tasks: Iterable[Task], *, in_flight: int, max_retries: int = 2
) -> Iterator[Result]:
    """``function`` over ``tasks`` as Ray tasks (one CPU each), at most ``in_flight`` at a time,
    results in submission order: memory stays bounded and the output does not depend on timing.

    Needs an initialised Ray (:func:`ray_session`).
    """
    from collections import deque

    import ray

    remote = ray.remote(num_cpus=1, max_retries=max_retries)(function)
    queue: deque = deque()
    for task in tasks:
        queue.append(remote.remote(task))
        if len(queue) >= in_flight:
            yield ray.get(queue.popleft())
    while queue:
        yield ray.get(queue.popleft())
