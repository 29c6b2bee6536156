"""Benchmark: stream a 1M-row job as CSV and Parquet over HTTP, and the API process's memory meanwhile.

Ingests the rows into PostgreSQL (MEMAUDIT_TEST_DATABASE_URL or a private instance; ``--sqlite`` for the
embedded default), serves the real API with uvicorn in a subprocess, downloads
GET /jobs/{id}/scores.csv and .parquet with a streaming client, and reports seconds, bytes and the
server's resident memory (VmRSS before, VmHWM peak after) so "never loads the table" is a number.

    .venv/bin/python -m bench.bench_export [--rows 1000000] [--sqlite]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from app.migrate import upgrade_to_head
from bench.bench_topk import REPO, ingest
from tests.service.harness import wait_for_http
from tests.service.local_services import free_port, private_postgres


def _memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def _download(base: str, path: str, keep: bool) -> tuple[float, int, bytes]:
    started = time.perf_counter()
    size, kept = 0, io.BytesIO()
    with httpx.stream("GET", base + path, timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            size += len(chunk)
            if keep:
                kept.write(chunk)
    return time.perf_counter() - started, size, kept.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sqlite", action="store_true", help="embedded SQLite instead of PostgreSQL")
    args = parser.parse_args()
    with ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if args.sqlite:
            url = f"sqlite:///{data_dir / 'memaudit.db'}"
        else:
            url = os.environ.get("MEMAUDIT_TEST_DATABASE_URL") or stack.enter_context(private_postgres())
        upgrade_to_head(url)
        job_id, ingest_s = ingest(url, args.rows)
        print(f"ingest of {args.rows} rows: {ingest_s:.2f} s", flush=True)
        port = free_port()
        env = {**os.environ, "MEMAUDIT_DATABASE_URL": url, "MEMAUDIT_DATA_DIR": str(data_dir),
               "MEMAUDIT_API_KEYS": "", "MEMAUDIT_EMBEDDED_WORKER": "false"}
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.api.main:create_app", "--factory",
                                   "--port", str(port), "--log-level", "warning"], cwd=REPO, env=env)
        stack.callback(server.wait, 30)
        stack.callback(server.terminate)
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/openapi.json")
        database = "SQLite" if args.sqlite else "PostgreSQL"
        print(f"\n| export ({args.rows} rows, {database}) | seconds | MB sent | server RSS before MiB "
              "| server peak RSS MiB |\n|---|---|---|---|---|")
        for fmt in ("csv", "parquet"):
            before = _memory_kib(server.pid)["VmRSS"]
            seconds, size, body = _download(base, f"/jobs/{job_id}/scores.{fmt}", keep=fmt == "parquet")
            peak = _memory_kib(server.pid)["VmHWM"]
            if fmt == "parquet":
                assert pq.ParquetFile(io.BytesIO(body)).metadata.num_rows == args.rows
            print(f"| GET /jobs/{{id}}/scores.{fmt} | {seconds:.1f} | {size / 1e6:.1f} | {before / 1024:.0f} "
                  f"| {peak / 1024:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
