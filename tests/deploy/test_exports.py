"""Streamed score exports (CSV, Parquet) through the real API on the embedded SQLite database."""

from __future__ import annotations

import csv
import io
import math
import tracemalloc

import pyarrow.parquet as pq
import pytest

from app.services.exports import COLUMNS, csv_stream, parquet_stream
from tests.deploy.conftest import OTHER_KEY, EmbeddedApp


def _scores_by_api(app: EmbeddedApp, job_id: str) -> dict[int, dict[str, object]]:
    rows: dict[int, dict[str, object]] = {}
    cursor = None
    while True:
        params = {"limit": 1000, "sort": "sample_id", **({"cursor": cursor} if cursor else {})}
        page = app.client.get(f"/jobs/{job_id}/scores", params=params).json()
        rows.update({item["sample_id"]: item for item in page["items"]})
        cursor = page["next_cursor"]
        if not cursor:
            return rows


def test_csv_and_parquet_hold_exactly_the_api_scores(embedded_app: EmbeddedApp) -> None:
    job_id = embedded_app.seed_job(2500)
    expected = _scores_by_api(embedded_app, job_id)
    response = embedded_app.client.get(f"/jobs/{job_id}/scores.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert f"memaudit-{job_id}-scores.csv" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 2500
    for row in rows:
        want = expected[int(row["sample_id"])]
        assert (float(row["score"]) if row["score"] else None) == want["score"]  # exact round trip
        assert int(row["rank"]) == want["rank"]
    response = embedded_app.client.get(f"/jobs/{job_id}/scores.parquet")
    assert response.status_code == 200
    table = pq.read_table(io.BytesIO(response.content))
    assert table.column_names == list(COLUMNS) and table.num_rows == 2500
    assert table.schema.metadata[b"memaudit.job_id"] == job_id.encode()
    scores = table.column("score").to_pylist()
    assert scores == [expected[i]["score"] for i in range(2500)]
    assert table.column("score").null_count == sum(1 for r in expected.values() if r["score"] is None) > 0


def test_exports_of_a_foreign_or_unknown_job_are_404(embedded_app: EmbeddedApp) -> None:
    job_id = embedded_app.seed_job(10)
    for suffix in ("csv", "parquet"):
        foreign = embedded_app.client.get(f"/jobs/{job_id}/scores.{suffix}",
                                          headers={"Authorization": f"Bearer {OTHER_KEY}"})
        assert foreign.status_code == 404
        assert embedded_app.client.get(f"/jobs/nope/scores.{suffix}").status_code == 404


def _peak_bytes_while_streaming(app: EmbeddedApp, job_id: str, fmt: str) -> tuple[int, int]:
    """(tracemalloc peak, bytes produced) for one full export, chunks discarded as a socket would."""
    from app.db import Job, session_scope

    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
    stream = csv_stream(job_id, BATCH) if fmt == "csv" else parquet_stream(job, BATCH)
    tracemalloc.start()
    try:
        total = sum(len(chunk) for chunk in stream)
        return tracemalloc.get_traced_memory()[1], total
    finally:
        tracemalloc.stop()


BATCH = 5000
SMALL, LARGE = 20_000, 100_000


@pytest.fixture(scope="module")
def sized_jobs(embedded_app: EmbeddedApp) -> dict[int, str]:
    return {size: embedded_app.seed_job(size, seed=size) for size in (SMALL, LARGE)}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_memory_stays_flat_as_the_export_grows(embedded_app: EmbeddedApp, sized_jobs: dict[int, str],
                                              fmt: str) -> None:
    """5x the rows, same peak: the export holds one batch, never the table (1M rows: bench/)."""
    small_peak, small_bytes = _peak_bytes_while_streaming(embedded_app, sized_jobs[SMALL], fmt)
    large_peak, large_bytes = _peak_bytes_while_streaming(embedded_app, sized_jobs[LARGE], fmt)
    assert large_bytes > 4 * small_bytes
    assert large_peak < 1.5 * small_peak + 2**20, (small_peak, large_peak)
    # Loading LARGE rows as Python tuples alone would need ~ 30 MB.
    assert large_peak < 12 * 2**20


def test_csv_floats_round_trip_exactly_and_non_finite_is_empty() -> None:
    from app.services.exports import csv_bytes, parquet_schema

    values = [0.1, 1 / 3, -2.5e-300, 123456789.123456789, 5e-324, -0.0]
    rows = [(i, None, None, i + 1, v, v, None, 2, 1, math.nan, v, None, i % 2 == 0, math.nan, None, None)
            for i, v in enumerate(values)]  # fmt: skip
    lines = csv_bytes(rows, parquet_schema()).decode().splitlines()
    parsed = list(csv.reader(lines))
    assert [float(row[4]) for row in parsed] == values
    assert [float(row[10]) for row in parsed] == values  # score_lo
    assert all(row[1] == "" and row[2] == "" for row in parsed)  # no key, no label: empty
    assert all(row[6] == "" and row[9] == "" and row[11] == "" and row[13] == "" and row[14] == "" == row[15]
               for row in parsed)  # fmt: skip
    assert [row[12] for row in parsed] == ["true", "false"] * 3  # confident: a boolean, never empty
    assert [int(row[0]) for row in parsed] == list(range(len(values)))
