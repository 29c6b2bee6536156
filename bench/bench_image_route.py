"""Benchmark: GET /jobs/{id}/samples/{sid}/image.png on 60,000-image Fashion-MNIST jobs over HTTP, and the
API process's memory meanwhile (issue 9: one record per request, never the whole set).

Jobs (queued: nothing consumes the broker, no worker ever plans them; the route needs the job and its
dataset only):
- an upload converted into a canonical store (Hugging Face parquet of the 60,000 PNGs);
- an .npz upload (compressed: served from the pixel file POST /datasets wrote);
- the built-ins ``fashion-mnist`` and ``fashion-mnist:pad32`` (gzip idx files: served from the pixel file
  POST /jobs wrote, in the pass that scanned the built-in's facts).

The jobs are created over HTTP (their POST /jobs times are printed), then a fresh uvicorn process serves
them, and every job gets one cold first request (counted in max) and ``--requests`` random sample ids.
Prints a Markdown table.

    .venv/bin/python -m bench.bench_image_route [--requests 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np

from bench.bench_formats import _write_inputs
from bench.bench_topk import REPO
from tests.service.harness import environment, wait_for_http
from tests.service.local_services import free_port

COUNT = 60_000


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _server(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.api.main:create_app", "--factory",
                               "--port", str(port), "--log-level", "warning"], cwd=REPO,
                              env={**os.environ, **env})  # fmt: skip
    wait_for_http(f"http://127.0.0.1:{port}/openapi.json", timeout_s=60)
    return server


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    server.wait(30)


def _uploads(folder: Path) -> dict[str, str]:
    """Dataset ids of the parquet and .npz uploads, stored by the service's own upload code."""
    from app.db import session_scope
    from app.services.datasets import store_upload
    from app.settings import get_settings

    ids = {}
    with session_scope() as session:
        for name in ("fashion.parquet", "fashion.npz"):
            with (folder / name).open("rb") as handle:
                ids[name] = store_upload(session, get_settings(), "local", handle, name).dataset.id
    return ids


def _timed_get(client: httpx.Client, path: str) -> float:
    started = time.perf_counter()
    response = client.get(path)
    response.raise_for_status()
    return (time.perf_counter() - started) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        env = {"MEMAUDIT_DATA_DIR": str(tmp / "data"), "MEMAUDIT_DATABASE_URL": f"sqlite:///{tmp / 'm.db'}",
               "MEMAUDIT_BROKER_URL": f"sqla+sqlite:///{tmp / 'broker.db'}", "MEMAUDIT_API_KEYS": "",
               "MEMAUDIT_EMBEDDED_WORKER": "false", "MEMAUDIT_MAX_UPLOAD_BYTES": str(1 << 30)}  # fmt: skip
        stack.enter_context(environment(env))
        from app.migrate import upgrade_to_head

        upgrade_to_head(env["MEMAUDIT_DATABASE_URL"])
        started = time.perf_counter()
        _write_inputs(tmp, COUNT)
        uploads = _uploads(tmp)
        print(f"inputs written and uploads stored in {time.perf_counter() - started:.1f} s", flush=True)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        datasets = {"parquet upload (canonical store)": {"id": uploads["fashion.parquet"]},
                    "npz upload (pixel file from POST /datasets)": {"id": uploads["fashion.npz"]},
                    "built-in fashion-mnist (pixel file from POST /jobs)": {"builtin": "fashion-mnist"},
                    "built-in fashion-mnist:pad32 (pixel file from POST /jobs)":
                        {"builtin": "fashion-mnist:pad32"}}  # fmt: skip
        server = _server(env, port)
        jobs, posts = {}, {}
        with httpx.Client(base_url=base, timeout=120) as client:
            for name, dataset in datasets.items():
                spec = {"dataset": dataset, "model": {"arch": "mlp", "hidden": [32], "latent": 4},
                        "training": {"epochs": 1, "batch_size": 64}}  # fmt: skip
                started = time.perf_counter()
                response = client.post("/jobs", json=spec)
                posts[name] = (time.perf_counter() - started) * 1e3
                assert response.status_code in (200, 201, 202), response.text
                jobs[name] = response.json()["id"]
        _stop(server)
        server = _server(env, port)  # a fresh process: nothing of the setup stays in its memory
        stack.callback(_stop, server)
        rss_start = _status_kib(server.pid, "VmRSS")
        rng = np.random.default_rng(0)
        print(f"\n| job ({COUNT} images, HTTP, one client) | POST /jobs ms | cold first ms | p50 ms | "
              "p99 ms | max ms (cold included) | API RSS after MiB |\n|---|---|---|---|---|---|---|")
        with httpx.Client(base_url=base, timeout=120) as client:
            for name, job_id in jobs.items():
                cold = _timed_get(client, f"/jobs/{job_id}/samples/{int(rng.integers(COUNT))}/image.png")
                times = [_timed_get(client, f"/jobs/{job_id}/samples/{int(sample)}/image.png")
                         for sample in rng.integers(0, COUNT, args.requests)]  # fmt: skip
                ordered = sorted(times)
                p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
                rss = _status_kib(server.pid, "VmRSS") / 1024
                print(f"| {name} | {posts[name]:.0f} | {cold:.1f} | {statistics.median(times):.2f} | "
                      f"{p99:.2f} | {max(cold, *times):.1f} | {rss:.0f} |", flush=True)
        peak = _status_kib(server.pid, "VmHWM") / 1024
        print(f"\nAPI process RSS: {rss_start / 1024:.0f} MiB at start, peak (VmHWM) {peak:.0f} MiB; "
              f"the uint8 pixels of one set are {COUNT * 28 * 28 / 2**20:.0f} MiB, a float32 copy "
              f"{COUNT * 28 * 28 * 4 / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
