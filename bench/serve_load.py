"""Load benchmark of `radclip serve` on loopback: N concurrent clients for a bounded time.

The pipeline's final model (``models/radclip``, or ``--model DIR``) is logged from code and registered
in a scratch MLflow store (alias ``champion``), and ``radclip serve`` serves it on 127.0.0.1 exactly
as a user starts it. Each client thread posts requests of ``--batch`` base64-uploaded images (chest
X-ray images of the embedded default's evaluation suite, or random PNGs without them) with zero-shot
candidates, back to back until the time is up. Printed: requests answered and failed, requests/s
and images/s, p50/p99 latency, and the server's resident memory (server process tree) after the
warm-up, at each quarter of the run and at the end: memory that grows with the number of requests
served shows as a steady rise over the quarters.

    python bench/serve_load.py [--clients 8] [--seconds 60] [--batch 4] [--workers 1]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import psutil
from mlflow.tracking import MlflowClient
from PIL import Image

from radclip.io import mlflow_pyfunc

PROJECT = Path(__file__).resolve().parents[1]
MODEL_NAME = "radclip-load-bench"
CANDIDATES = ["Normal Chest X-ray", "Chest X-ray with Pleural Effusion", "Chest X-ray with Edema"]
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy


def _images(count: int) -> list[str]:
    folder = PROJECT / "data" / "raw" / "eval" / "chest_xray_5class"
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))[:count] if folder.is_dir() else []
    if files:
        return [base64.b64encode(path.read_bytes()).decode() for path in files]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray((rng.random((128, 128)) * 255).astype(np.uint8)).save(buffer, format="PNG")
        out.append(base64.b64encode(buffer.getvalue()).decode())
    return out


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(url: str, body: bytes) -> tuple[int, float]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with _LOCAL.open(request, timeout=120) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError:
        status = -1
    return status, time.perf_counter() - start


def _rss_mib(pid: int) -> float:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=PROJECT / "models" / "radclip")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=4, help="images per request")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        sys.exit(f"{args.model}: no saved RadCLIP model (run `make run` first, or pass --model DIR)")

    with tempfile.TemporaryDirectory(prefix="radclip-load-") as scratch:
        store = f"sqlite:///{scratch}/mlflow.db"
        mlflow.set_tracking_uri(store)
        mlflow.set_experiment("serve-load")
        with mlflow.start_run():
            info = mlflow_pyfunc.log_model(args.model, registered_model_name=MODEL_NAME)
        MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", info.registered_model_version)

        port = _free_port()
        env = {**os.environ, "MLFLOW_TRACKING_URI": store, "MLFLOW_REGISTRY_URI": store}
        command = [str(Path(sys.executable).parent / "radclip"), "serve", "--model", f"models:/{MODEL_NAME}@champion",
                   "--port", str(port), "--workers", str(args.workers)]
        log = Path(scratch) / "server.log"
        with log.open("w") as output:
            server = subprocess.Popen(command, env=env, cwd=PROJECT, stdout=output, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"server did not start:\n{log.read_text()[-3000:]}")
                try:
                    with _LOCAL.open(f"{url}/ping", timeout=2):
                        break
                except OSError:
                    time.sleep(0.5)

            images = _images(16)
            rows = [[[images[(k + i) % len(images)]] for i in range(args.batch)] for k in range(len(images))]
            bodies = [json.dumps({"dataframe_split": {"columns": ["content"], "data": data},
                                  "params": {"candidates": CANDIDATES}}).encode() for data in rows]
            for body in bodies:  # warm-up: every body once
                status, _ = _post(f"{url}/invocations", body)
                if status != 200:
                    sys.exit(f"warm-up request failed with {status}:\n{log.read_text()[-3000:]}")
            rss = {"after warm-up": _rss_mib(server.pid)}

            results: list[tuple[int, float]] = []
            lock = threading.Lock()
            stop_at = time.monotonic() + args.seconds

            def client(index: int) -> None:
                k = index
                while time.monotonic() < stop_at:
                    outcome = _post(f"{url}/invocations", bodies[k % len(bodies)])
                    with lock:
                        results.append(outcome)
                    k += args.clients

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for quarter in (1, 2, 3):  # memory a quarter, half and three quarters of the way through
                time.sleep(max(0.0, started + quarter * args.seconds / 4 - time.monotonic()))
                rss[f"{quarter}/4"] = _rss_mib(server.pid)
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
            rss["end"] = _rss_mib(server.pid)
        finally:
            mlflow_pyfunc.stop_server(server)

    latencies = sorted(seconds for status, seconds in results if status == 200)
    failed = sum(status != 200 for status, _ in results)
    print(f"radclip serve on loopback: {args.clients} clients x {args.seconds:.0f} s, {args.batch} uploaded images "
          f"per request with {len(CANDIDATES)} zero-shot candidates, {args.workers} worker(s), {os.cpu_count()} CPUs")
    print(f"requests answered {len(latencies)}, failed {failed}")
    if latencies:
        p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))]
        print(f"throughput {len(latencies) / elapsed:.1f} requests/s, {len(latencies) * args.batch / elapsed:.1f} "
              f"images/s; latency p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    print("server memory (RSS of its process tree): " + ", ".join(f"{k} {v:.0f} MiB" for k, v in rss.items())
          + f"; half time to end {rss['end'] - rss['2/4']:+.1f} MiB")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
