"""The user's key and label of every sample of a job (table job_samples, revision 0006).

Written once, in the transaction that plans the job's units (so a twin plan that rolls back leaves the
winner's rows), and only when the training set has keys or labels; the score queries read it per row
(``sample_text``), so score writes (binary COPY of the numeric columns) never carry text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from app.db import JobSample, SampleScore, is_postgres

INSERT_ROWS = 50_000


def sample_text(name: str) -> Any:
    """The ``key`` or ``label`` of each sample_scores row, as a correlated scalar subquery (a primary-key
    lookup per row) rather than an outer join: a job's rows are written moments before they are read, so
    PostgreSQL has no statistics on them yet, and with an outer join it estimated a few rows and chose a
    nested loop over the job's whole job_samples set for every score row (measured on a fresh 60k job:
    717 ms for the top 100, over 2 minutes for the CSV export; with the lookup: milliseconds)."""
    column = getattr(JobSample, name)
    same_sample = (JobSample.job_id == SampleScore.job_id, JobSample.sample_id == SampleScore.sample_id)
    lookup = select(column).where(*same_sample)
    return lookup.scalar_subquery().label(name)


def add_job_samples(
    session: Session, job_id: str, keys: Sequence[str | None], labels: Sequence[str | None]
) -> int:
    """Insert the rows (in the session's transaction; nothing is committed here). Returns the count."""
    if all(key is None for key in keys) and all(label is None for label in labels):
        return 0
    rows = list(zip(range(len(keys)), keys, labels, strict=True))
    if is_postgres(session):
        driver = session.connection().connection.driver_connection
        statement = "COPY job_samples (job_id, sample_id, key, label) FROM STDIN"
        with driver.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
            for sample_id, key, label in rows:
                copy.write_row((job_id, sample_id, key, label))
        return len(rows)
    for start in range(0, len(rows), INSERT_ROWS):
        session.execute(insert(JobSample), [
            {"job_id": job_id, "sample_id": sample_id, "key": key, "label": label}
            for sample_id, key, label in rows[start:start + INSERT_ROWS]])  # fmt: skip
    return len(rows)


def sample_id_of_key(session: Session, job_id: str, key: str) -> int | None:
    query = select(JobSample.sample_id).where(JobSample.job_id == job_id, JobSample.key == key)
    return session.scalar(query)


def job_labels(session: Session, job_id: str, count: int) -> list[str | None] | None:
    """Every sample's label in sample-id order, or None when the job has no labels."""
    query = (select(JobSample.sample_id, JobSample.label).where(JobSample.job_id == job_id)
             .order_by(JobSample.sample_id))  # fmt: skip
    labels: list[str | None] = [None] * count
    found = False
    for sample_id, label in session.execute(query):
        if 0 <= sample_id < count and label is not None:
            labels[sample_id], found = label, True
    return labels if found else None
