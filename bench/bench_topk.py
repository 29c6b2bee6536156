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
from sqlalchemy import Engine, event, text, update
from sqlalchemy.orm import Session

from app.db import Job, is_postgres, make_engine
from app.lifecycle import JobState
from app.migrate import upgrade_to_head
from app.services.score_writer import ScoreArrays, _copy_binary, write_scores
from tests.service.harness import wait_for_http
from tests.service.local_services import free_port, private_postgres

REPO = Path(__file__).resolve().parents[1]


def _scores(rows: int, seed: int) -> ScoreArrays:
    rng = np.random.default_rng(seed)
    log_p_in = rng.normal(-100.0, 10.0, rows)  # (rows,)
    score = rng.gumbel(0.0, 0.5, rows)  # (rows,) heavy right tail, like M
    ones = np.ones(rows, dtype=np.int64)
    return ScoreArrays(score=score, log_p_in=log_p_in, log_p_out=log_p_in - score, n_in=9 * ones, n_out=ones)


def _new_job(session: Session, rows: int) -> str:
    job_id = str(uuid.uuid4())
    session.add(Job(id=job_id, owner="local", state=JobState.RUNNING, spec={}, request_hash="bench",
                    n_samples=rows, image_shape=[1, 28, 28]))
    session.commit()
    return job_id


class StatementTimes:
    """Seconds per SQL statement kind of one write (COPY runs on the raw driver: the time not accounted
    for by the statements SQLAlchemy saw)."""

    def __init__(self, engine: Engine) -> None:
        self.times: dict[str, float] = {}
        self._started: list[float] = []
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, *_: object) -> None:
        self._started.append(time.perf_counter())

    def _after(self, _conn: object, _cursor: object, statement: str, *_: object) -> None:
        words = statement.split()
        kind = " ".join(words[:2]) if words[0].upper() in ("ALTER", "CREATE") else words[0]
        if "ATTACH" in statement or "DETACH" in statement:
            kind = "ALTER TABLE " + ("ATTACH" if "ATTACH" in statement else "DETACH") + " PARTITION"
        elif "ADD PRIMARY KEY" in statement:
            kind = "ALTER TABLE ADD PRIMARY KEY (sort build)"
        elif "ADD CHECK" in statement:
            kind = "ALTER TABLE ADD CHECK"
        elif kind.startswith("CREATE INDEX"):
            kind = "CREATE INDEX top-k (sort build)"
        self.times[kind] = self.times.get(kind, 0.0) + time.perf_counter() - self._started.pop()

    def take(self) -> dict[str, float]:
        taken, self.times = self.times, {}
        return taken


def _timed_write(session: Session, job_id: str, arrays: ScoreArrays, units: int,
                 times: StatementTimes) -> dict[str, float]:  # fmt: skip
    times.take()
    started = time.perf_counter()
    assert write_scores(session, job_id, arrays, units=units, provisional=True)
    total = time.perf_counter() - started
    steps = times.take()
    steps["COMMIT"] = steps.pop("COMMIT", 0.0)
    steps["COPY (binary, unindexed staging table) + numpy encoding"] = total - sum(steps.values())
    return {"total": total, **steps}


def _old_strategy(session: Session, arrays: ScoreArrays, rows: int) -> dict[str, float]:
    """The writer before revision 0008, on an unpartitioned copy of the table that already holds one
    1M-row job: DELETE the job's rows, binary COPY with both indexes maintained row by row, commit."""
    connection = session.connection()
    connection.exec_driver_sql("CREATE TABLE flat_scores (LIKE sample_scores INCLUDING DEFAULTS)")
    connection.exec_driver_sql("ALTER TABLE flat_scores ADD PRIMARY KEY (job_id, sample_id)")
    connection.exec_driver_sql("CREATE INDEX ON flat_scores (job_id, score DESC NULLS LAST, sample_id)")
    session.commit()
    out: dict[str, float] = {}
    for label, job_id in (("first job (empty table)", "flat-1"), ("second job", "flat-2"),
                          ("second job rewritten", "flat-2")):  # fmt: skip
        started = time.perf_counter()
        session.execute(text("DELETE FROM flat_scores WHERE job_id = :job"), {"job": job_id})
        deleted = time.perf_counter()
        _copy_binary(session, "flat_scores", job_id, arrays)
        copied = time.perf_counter()
        session.commit()
        out[label] = time.perf_counter() - started
        out[f"{label}: DELETE"], out[f"{label}: COPY"] = deleted - started, copied - deleted
    session.execute(text("DROP TABLE flat_scores"))
    session.commit()
    return out


def ingest(url: str, rows: int, breakdown: bool = False, compare: bool = False) -> tuple[str, float]:
    """Write a job's scores through the service's writer; with ``breakdown`` write another job first and
    rewrite this one as a later unit would, printing where the time goes; with ``compare`` also time the
    old DELETE + COPY strategy in the same run. Returns (job id, seconds of the last write)."""
    engine = make_engine(url)
    arrays = _scores(rows, seed=0)
    if not breakdown:
        with Session(engine, expire_on_commit=False) as session:
            job_id = _new_job(session, rows)
            started = time.perf_counter()
            write_scores(session, job_id, arrays, units=1, provisional=False)  # the job is still active
            seconds = time.perf_counter() - started
            session.execute(update(Job).where(Job.id == job_id).values(state=JobState.SUCCEEDED))
            session.commit()
        engine.dispose()
        return job_id, seconds
    times = StatementTimes(engine)
    with Session(engine, expire_on_commit=False) as session:
        other = _new_job(session, rows)  # the table already holds another job, as in a live database
        first_other = _timed_write(session, other, arrays, 1, times)
        job_id = _new_job(session, rows)
        first = _timed_write(session, job_id, arrays, 1, times)
        rewrite = _timed_write(session, job_id, arrays, 2, times)
        seconds = rewrite["total"]
        print(f"\n| step of a {rows}-row write (seconds) | first job | second job | second job rewritten |"
              "\n|---|---|---|---|")
        for step in rewrite:
            print(f"| {step} | {first_other.get(step, 0.0):.2f} | {first.get(step, 0.0):.2f} "
                  f"| {rewrite[step]:.2f} |")
        if compare and is_postgres(session):
            old = _old_strategy(session, arrays, rows)
            print("\n| old strategy, same run (seconds) | first job | second job | second job rewritten |"
                  "\n|---|---|---|---|")
            labels = ("first job (empty table)", "second job", "second job rewritten")
            for part in ("", ": DELETE", ": COPY"):
                name = {"": "total", ": DELETE": "DELETE", ": COPY": "COPY (rows and both indexes)"}[part]
                print(f"| {name} | " + " | ".join(f"{old[label + part]:.2f}" for label in labels) + " |")
            print(f"ratio old / new (second job rewritten): {old['second job rewritten'] / seconds:.1f}x")
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
    parser.add_argument("--no-compare", action="store_true", help="skip the old strategy's timing")
    args = parser.parse_args()
    with ExitStack() as stack:
        url = os.environ.get("MEMAUDIT_TEST_DATABASE_URL") or stack.enter_context(private_postgres())
        upgrade_to_head(url)
        job_id, ingest_s = ingest(url, args.rows, breakdown=True, compare=not args.no_compare)
        print(f"ingest of {args.rows} rows (a rewrite: swap + commit): {ingest_s:.2f} s", flush=True)
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
