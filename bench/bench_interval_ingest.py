"""Benchmark: what the SPEC §7 interval columns (score_se, score_lo, score_hi) cost the final score write.

The same job's scores are written to PostgreSQL (DELETE + binary COPY + commit, app.services.score_writer)
alternately without and with the three interval columns, ``--repeats`` times each, in one process against
a private PostgreSQL; prints the medians and their ratio (paste into docs/benchmarks.md).

    .venv/bin/python -m bench.bench_interval_ingest [--rows 300000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import numpy as np
from sqlalchemy.orm import Session

from app.db import Job, make_engine
from app.migrate import upgrade_to_head
from app.services.score_writer import ScoreArrays, write_scores
from tests.service.local_services import private_postgres


def _arrays(rows: int, interval: bool) -> ScoreArrays:
    rng = np.random.default_rng(0)
    score = rng.gumbel(0.0, 0.5, rows)  # (rows,)
    log_p_in = rng.normal(-100.0, 10.0, rows)
    ones = np.ones(rows, dtype=np.int64)
    extra = {"score_se": rng.gamma(2.0, 0.05, rows), "score_lo": score - 0.2, "score_hi": score + 0.2} \
        if interval else {}
    return ScoreArrays(score=score, log_p_in=log_p_in, log_p_out=log_p_in - score, n_in=9 * ones, n_out=ones,
                       **extra)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with private_postgres() as url:
        upgrade_to_head(url)
        engine = make_engine(url)
        timings: dict[bool, list[float]] = {False: [], True: []}
        with Session(engine, expire_on_commit=False) as session:
            for _ in range(args.repeats):
                for interval in (False, True):
                    job_id = str(uuid.uuid4())
                    session.add(Job(id=job_id, owner="bench", spec={}, request_hash="h", n_samples=args.rows,
                                    image_shape=[1, 8, 8]))  # fmt: skip
                    session.commit()
                    arrays = _arrays(args.rows, interval)
                    started = time.perf_counter()
                    assert write_scores(session, job_id, arrays, units=1, provisional=False)
                    timings[interval].append(time.perf_counter() - started)
        engine.dispose()
    without, with_interval = (statistics.median(timings[key]) for key in (False, True))
    print(f"| rows | without interval (s) | with score_se/lo/hi (s) | ratio |\n|---|---|---|---|\n"
          f"| {args.rows:,} | {without:.2f} | {with_interval:.2f} | {with_interval / without:.2f} |")
    every = {("with" if key else "without"): [round(t, 2) for t in values] for key, values in timings.items()}
    print("all:", every)


if __name__ == "__main__":
    main()
