"""Servers of the shared-tracking path, started and stopped by the tests, on 127.0.0.1 only (pytest plugin).

- ``s3_endpoint`` (session): an S3-compatible endpoint, moto's server in a thread of the test process, with one
  bucket; credentials are fixed test values, and the instance-metadata lookup of boto3 is switched off.
- ``mlflow_server`` (module): ``mlflow server`` as a subprocess, its backend store a fresh database on the
  session's PostgreSQL (``tests/postgres_server.py``), its artifacts proxied into that bucket
  (``--artifacts-destination s3://…``), so clients need neither database nor S3 access; exported as
  ``MLFLOW_TRACKING_URI`` for the module.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BUCKET = "radclip-artifacts"
S3_ENV = {  # what the MLflow server's boto3 needs to reach the test endpoint, and nothing beyond it
    "AWS_ACCESS_KEY_ID": "radclip-test",
    "AWS_SECRET_ACCESS_KEY": "radclip-test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no probe of 169.254.169.254 for credentials or region
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(url: str, seconds: float, alive: Any = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"{url}: the server exited while starting")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url}: no answer within {seconds:.0f} s")


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    bucket: str

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
                            region_name=S3_ENV["AWS_DEFAULT_REGION"])

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    with running_s3() as endpoint:
        yield endpoint


@contextlib.contextmanager
def running_s3() -> Iterator[S3Endpoint]:
    """moto's S3 server on 127.0.0.1 with the test bucket, until the block ends."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = S3Endpoint(url=f"http://127.0.0.1:{port}", bucket=BUCKET)
        endpoint.client().create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


@dataclass(frozen=True)
class MlflowServer:
    url: str
    database_uri: str  # the backend store (SQLAlchemy URI of the PostgreSQL database)
    artifacts: str  # s3://bucket/prefix the server writes artifacts to
    log: Path


@pytest.fixture(scope="module")
def mlflow_server(postgres_server, s3_endpoint, tmp_path_factory) -> Iterator[MlflowServer]:
    import mlflow

    database = postgres_server.create_database("mlflow_server")
    try:
        with running_mlflow_server(postgres_server.uri(database), s3_endpoint,
                                   tmp_path_factory.mktemp("mlflow-server")) as server:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("MLFLOW_TRACKING_URI", server.url)
                patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
                yield server
                mlflow.set_tracking_uri(None)
                mlflow.set_registry_uri(None)
    finally:
        postgres_server.drop_database(database)


@contextlib.contextmanager
def running_mlflow_server(database_uri: str, s3_endpoint: S3Endpoint, root: Path) -> Iterator[MlflowServer]:
    """``mlflow server`` on 127.0.0.1 with its backend store at ``database_uri`` and its artifacts in the
    endpoint's bucket (under ``root``'s name), until the block ends; ``root`` holds its log."""
    port = free_port()
    log = root / "server.log"
    artifacts = f"s3://{s3_endpoint.bucket}/{root.name}"
    # Job execution off: its runner and huey consumers (MLflow's GenAI jobs, five more processes) serve nothing
    # radclip calls, and they compete for the two cores with the Ray nodes beside them.
    env = {**os.environ, **S3_ENV, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint.url,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # the server's own store comes from its flags
        env.pop(name, None)
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", database_uri,
               "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log.open("w") as out:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # its own group: uvicorn's workers stop with it
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            _wait_for(f"{url}/health", 120, alive=lambda: server.poll() is None)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}\n--- {log}:\n{log.read_text()}") from None
        yield MlflowServer(url=url, database_uri=database_uri, artifacts=artifacts, log=log)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
