"""Benchmark: ingest 1M per-sample scores into PostgreSQL (COPY) and time GET /scores?top=100.

Runs against MEMAUDIT_TEST_DATABASE_URL or a private PostgreSQL it starts itself, serves the real
API with uvicorn in a subprocess, and prints a Markdown table (paste into docs/benchmarks.md).

    .venv/bin/python -m bench.bench_topk [--rows 1000000] [--requests 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from app.db import Job, make_engine
from app.lifecycle import JobState
from app.migrate import upgrade_to_head
from app.services.score_writer import ScoreArrays, write_scores
from tests.service.harness import wait_for_http
from tests.service.local_services import free_port, private_postgres

REPO = Path(__file__).resolve().parents[1]


def _scores(rows: int, seed: int) -> ScoreArrays:
    rng = np.random.default_rng(seed)
    log_p_in = rng.normal(-100.0, 10.0, rows)  # (rows,)
    score = rng.gumbel(0.0, 0.5, rows)  # (rows,) heavy right tail, like M
    ones = np.ones(rows, dtype=np.int64)
    return ScoreArrays(score=score, log_p_in=log_p_in, log_p_out=log_p_in - score, n_in=9 * ones, n_out=ones)


def ingest(url: str, rows: int) -> tuple[str, float]:
    engine = make_engine(url)
    job_id = str(uuid.uuid4())
    with Session(engine, expire_on_commit=False) as session:
        session.add(Job(id=job_id, owner="local", state=JobState.RUNNING, spec={}, request_hash="bench",
                        n_samples=rows, image_shape=[1, 28, 28]))
        session.commit()
        arrays = _scores(rows, seed=0)
        started = time.perf_counter()
        write_scores(session, job_id, arrays, units=1, provisional=False)  # only an active job takes scores
        seconds = time.perf_counter() - started
        session.execute(update(Job).where(Job.id == job_id).values(state=JobState.SUCCEEDED))
        session.execute(text("ANALYZE sample_scores"))
        session.commit()
    engine.dispose()
    return job_id, seconds


def explain(url: str, job_id: str) -> str:
    engine = make_engine(url)
    query = text("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM sample_scores WHERE job_id = :job "
                 "ORDER BY score DESC NULLS LAST, sample_id LIMIT 100")
    with engine.connect() as connection:
        plan = "\n".join(row[0] for row in connection.execute(query, {"job": job_id}))
    engine.dispose()
    return plan


def latencies(base: str, path: str, params: dict[str, object], count: int) -> list[float]:
    out = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(10):  # warm-up: connection pool, plan cache
            client.get(path, params=params).raise_for_status()
        for _ in range(count):
            started = time.perf_counter()
            client.get(path, params=params).raise_for_status()
            out.append((time.perf_counter() - started) * 1e3)
    return out


def _row(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"| {name} | {statistics.median(values):.2f} | {np.percentile(values, 95):.2f} | {p99:.2f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with ExitStack() as stack:
        url = os.environ.get("MEMAUDIT_TEST_DATABASE_URL") or stack.enter_context(private_postgres())
        upgrade_to_head(url)
        job_id, ingest_s = ingest(url, args.rows)
        print(f"ingest of {args.rows} rows (DELETE + COPY + commit): {ingest_s:.2f} s", flush=True)
        data_dir, port = Path(stack.enter_context(tempfile.TemporaryDirectory())), free_port()
        env = {**os.environ, "MEMAUDIT_DATABASE_URL": url, "MEMAUDIT_DATA_DIR": str(data_dir),
               "MEMAUDIT_API_KEYS": "", "MEMAUDIT_EMBEDDED_WORKER": "false"}
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.api.main:create_app", "--factory",
                                   "--port", str(port), "--log-level", "warning"], cwd=REPO, env=env)
        stack.callback(server.wait, 30)
        stack.callback(server.terminate)
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/openapi.json")
        top = latencies(base, "/scores", {"top": 100, "job_id": job_id}, args.requests)
        first = httpx.get(f"{base}/jobs/{job_id}/scores", params={"limit": 100}).json()
        deep = latencies(base, f"/jobs/{job_id}/scores", {"limit": 100, "cursor": first["next_cursor"]},
                         args.requests)
        print("\n| request (1M-row job, HTTP, one client) | p50 ms | p95 ms | p99 ms |\n|---|---|---|---|")
        print(_row("GET /scores?top=100", top))
        print(_row("GET /jobs/{id}/scores?limit=100&cursor=… (page 2)", deep))
        print("\nplan of the top-100 query:\n" + explain(url, job_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
