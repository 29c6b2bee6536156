"""Reading scores: top-k, keyset pages in either order, one sample (its image: sample_images.py).

Order "score_desc" is (score DESC, NULLs last, sample_id ASC), exactly the index
ix_sample_scores_job_score (on PostgreSQL, per job partition: revision 0008), so top-k and every page
are range scans. "score_asc" is its exact
reverse (the same index read backwards). "sample_id" uses the primary key.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Literal, NamedTuple

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from app.db import Job, SampleScore, is_postgres
from app.lifecycle import JobState
from app.services import patterns
from app.services.errors import Invalid, NotFound
from app.services.job_samples import sample_text

SortOrder = Literal["score_desc", "score_asc", "sample_id"]
Cursor = tuple[float | None, int]


class ScoreRow(NamedTuple):
    """The columns of a sample_scores row that reads present (not ``extra``), as a plain tuple: reads
    never modify scores, and mapping 100 ORM objects per request was the largest part of a top-100
    request's time (docs/benchmarks.md)."""

    job_id: str
    sample_id: int
    score: float | None
    log_p_in: float | None
    log_p_out: float | None
    n_in: int | None
    n_out: int | None
    rank: int | None
    rho: float | None
    nearest_copy_count: float | None
    score_se: float | None
    score_lo: float | None
    score_hi: float | None
    within_tau_count: float | None


class ScoredSample(NamedTuple):
    """A score row with the sample's key and label (job_samples, looked up: None when it has none).
    The row's own columns read through (``scored.score``, ``scored.sample_id``)."""

    row: ScoreRow
    key: str | None
    label: str | None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.row, name)


_ROW_WIDTH = len(ScoreRow._fields)


def _scored() -> Any:  # a Select of ScoreRow's columns, then key and label
    columns = SampleScore.__table__.c
    return select(*(columns[name] for name in ScoreRow._fields), sample_text("key"), sample_text("label"))


def _scored_rows(session: Session, query: Any) -> list[ScoredSample]:
    make = ScoreRow._make
    return [ScoredSample(make(row[:_ROW_WIDTH]), row[_ROW_WIDTH], row[_ROW_WIDTH + 1])
            for row in session.execute(query).tuples()]  # fmt: skip


def latest_scored_job(session: Session, owner: str) -> Job:
    query = (select(Job).where(Job.owner == owner, Job.state == JobState.SUCCEEDED)
             .order_by(Job.finished_at.desc(), Job.id).limit(1))
    job = session.scalar(query)
    if job is None:
        raise NotFound("job_id", "no finished job yet; name one with job_id=")
    return job


def _descending(session: Session) -> list[ColumnElement[Any]]:
    score = SampleScore.score.desc()
    # SQLite already sorts NULL lowest; PostgreSQL needs NULLS LAST spelled out to match the index.
    return [score.nulls_last() if is_postgres(session) else score, SampleScore.sample_id.asc()]


def _ascending(session: Session) -> list[ColumnElement[Any]]:
    score = SampleScore.score.asc()
    return [score.nulls_first() if is_postgres(session) else score, SampleScore.sample_id.desc()]


def top_query(session: Session, job_id: str, top: int) -> Any:
    return _scored().where(SampleScore.job_id == job_id).order_by(*_descending(session)).limit(top)


def top_scores(session: Session, job_id: str, top: int) -> list[ScoredSample]:
    return _scored_rows(session, top_query(session, job_id, top))


def encode_cursor(row: ScoreRow) -> str:
    """The position after ``row``: its score's IEEE-754 bits (``n`` when not finite) and sample id.

    Every string of this shape (patterns.CURSOR, published in /openapi.json) is a valid position, so a
    cursor is never refused once it matches; it carries no sort order (the ``sort`` parameter does).
    """
    score = row.score
    bits = "n" if score is None or not math.isfinite(score) else struct.pack(">d", score).hex()
    return f"{bits}.{row.sample_id}"


def decode_cursor(cursor: str) -> Cursor:
    if not patterns.matches(patterns.CURSOR, cursor):
        raise Invalid("cursor", "not a cursor returned by this endpoint")
    bits, _, sample_id = cursor.partition(".")
    score = None if bits == "n" else struct.unpack(">d", bytes.fromhex(bits))[0]
    return (score if score is not None and math.isfinite(score) else None), int(sample_id)


def _after_desc(score: float | None, sample_id: int) -> ColumnElement[bool]:
    if score is None:  # inside the NULL tail
        return and_(SampleScore.score.is_(None), SampleScore.sample_id > sample_id)
    return or_(
        SampleScore.score < score,
        and_(SampleScore.score == score, SampleScore.sample_id > sample_id),
        SampleScore.score.is_(None),
    )


def _after_asc(score: float | None, sample_id: int) -> ColumnElement[bool]:
    if score is None:  # inside the leading NULLs
        return or_(
            and_(SampleScore.score.is_(None), SampleScore.sample_id < sample_id),
            SampleScore.score.is_not(None),
        )
    return or_(SampleScore.score > score, and_(SampleScore.score == score, SampleScore.sample_id < sample_id))


def _page_query(session: Session, job_id: str, sort: SortOrder, after: Cursor | None) -> Any:
    query = _scored().where(SampleScore.job_id == job_id)
    if sort == "sample_id":
        if after is not None:
            query = query.where(SampleScore.sample_id > after[1])
        return query.order_by(SampleScore.sample_id)
    if sort == "score_desc":
        if after is not None:
            query = query.where(_after_desc(*after))
        return query.order_by(*_descending(session))
    if after is not None:
        query = query.where(_after_asc(*after))
    return query.order_by(*_ascending(session))


def score_page(
    session: Session, job_id: str, sort: SortOrder, limit: int, cursor: str | None
) -> tuple[list[ScoredSample], str | None]:
    after = decode_cursor(cursor) if cursor is not None else None  # '' is malformed, not absent
    rows = _scored_rows(session, _page_query(session, job_id, sort, after).limit(limit + 1))
    next_cursor = encode_cursor(rows[limit - 1].row) if len(rows) > limit else None
    return rows[:limit], next_cursor


def sample_score(session: Session, job_id: str, sample_id: int) -> ScoredSample:
    query = _scored().where(SampleScore.job_id == job_id, SampleScore.sample_id == sample_id)
    rows = _scored_rows(session, query)
    if not rows:
        raise NotFound("sample_id", f"no score for sample {sample_id} in job {job_id} (yet)")
    return rows[0]


def sample_by_key(session: Session, job_id: str, key: str) -> ScoredSample:
    """The scored sample whose key (the user's id) is ``key``; 404 naming the key otherwise."""
    from app.services.job_samples import sample_id_of_key

    sample_id = sample_id_of_key(session, job_id, key)
    if sample_id is None:
        raise NotFound("key", f"job {job_id} has no sample with key {key!r}")
    return sample_score(session, job_id, sample_id)
