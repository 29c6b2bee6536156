"""The score store on migrated SQLite and PostgreSQL databases (binary COPY there): ranks,
provisional vs final writes, keyset pages with non-finite scores. No worker needed; no mocks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy.orm import Session

from app.db import Job, make_engine
from app.migrate import upgrade_to_head
from app.services.score_writer import ScoreArrays, ranks, write_scores
from app.services.scores import score_page, top_scores


@pytest.fixture(params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Session, str]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('scores') / 'scores.db'}"
    else:
        url = request.getfixturevalue("backend_urls")[0]
    upgrade_to_head(url)
    engine = make_engine(url)
    job_id = str(uuid.uuid4())
    with Session(engine, expire_on_commit=False) as session:
        session.add(Job(id=job_id, owner="o", spec={}, request_hash="h", n_samples=6, image_shape=[1, 2, 2]))
        session.commit()
        yield session, job_id
    engine.dispose()


def _arrays(score: list[float]) -> ScoreArrays:
    values = np.array(score, dtype=np.float64)
    ones = np.ones(len(score), dtype=np.int64)
    return ScoreArrays(score=values, log_p_in=values - 1, log_p_out=-np.ones(len(score)),
                       n_in=ones, n_out=ones)


def test_ranks_put_ties_by_id_and_non_finite_last() -> None:
    assert ranks(np.array([0.5, np.nan, 2.0, 0.5, -np.inf])).tolist() == [2, 4, 1, 3, 5]


def test_provisional_never_overwrites_newer_or_final(store: tuple[Session, str]) -> None:
    session, job_id = store
    assert write_scores(session, job_id, _arrays([1, 2, 3, 4, 5, 6]), units=2, provisional=True)
    assert not write_scores(session, job_id, _arrays([9, 9, 9, 9, 9, 9]), units=1, provisional=True)
    assert write_scores(session, job_id, _arrays([6, 5, 4, 3, 2, 1]), units=4, provisional=False)
    assert not write_scores(session, job_id, _arrays([0, 0, 0, 0, 0, 0]), units=5, provisional=True)
    job = session.get(Job, job_id)
    assert job is not None and job.scores_units == 4 and job.scores_provisional is False
    assert [row.sample_id for row in top_scores(session, job_id, 3)] == [0, 1, 2]


def test_pages_with_nulls_in_both_orders(store: tuple[Session, str]) -> None:
    session, job_id = store
    write_scores(session, job_id, _arrays([0.1, np.nan, 3.0, 0.1, np.inf, 2.0]), units=1, provisional=False)
    stored = {row.sample_id: row for row in top_scores(session, job_id, 10)}
    assert stored[1].score is None and stored[4].score is None and stored[4].log_p_out == -1.0
    assert stored[2].score == 3.0 and stored[2].log_p_in == 2.0
    assert stored[2].rank == 1 and stored[1].rank == 5
    for sort, expected in (("score_desc", [2, 5, 0, 3, 1, 4]), ("score_asc", [4, 1, 3, 0, 5, 2])):
        seen, cursor = [], None
        while True:
            rows, cursor = score_page(session, job_id, sort, 2, cursor)  # type: ignore[arg-type]
            seen += [row.sample_id for row in rows]
            if cursor is None:
                break
        assert seen == expected, sort


def test_the_interval_columns_round_trip_with_nulls_on_both_writers(store: tuple[Session, str]) -> None:
    """score_se / score_lo / score_hi go through the binary COPY (PostgreSQL) and the INSERT (SQLite) alike:
    every combination of NULL and non-NULL floats in one set, a provisional set without them first."""
    from sqlalchemy import select

    from app.db import SampleScore

    session, job_id = store
    assert write_scores(session, job_id, _arrays([1, 2, 3, 4, 5, 6]), units=1, provisional=True)
    rows = session.execute(select(SampleScore.score_se, SampleScore.score_lo, SampleScore.score_hi)
                           .where(SampleScore.job_id == job_id)).all()  # fmt: skip
    assert {tuple(row) for row in rows} == {(None, None, None)}
    nan = np.nan
    score = np.array([1.0, nan, 3.0, 4.0, 5.0, 6.0])
    se = np.array([0.1, nan, nan, 0.4, 0.5, nan])
    lo = np.array([0.5, nan, 2.5, nan, 4.5, -np.inf])
    hi = np.array([1.5, nan, 3.5, 4.9, nan, 6.5])
    ones = np.ones(6, dtype=np.int64)
    arrays = ScoreArrays(score=score, log_p_in=score - 1, log_p_out=-np.ones(6), n_in=ones, n_out=ones,
                         score_se=se, score_lo=lo, score_hi=hi)  # fmt: skip
    assert write_scores(session, job_id, arrays, units=2, provisional=False)
    stored = session.execute(select(SampleScore.sample_id, SampleScore.score, SampleScore.score_se,
                                    SampleScore.score_lo, SampleScore.score_hi)
                             .where(SampleScore.job_id == job_id).order_by(SampleScore.sample_id)).all()

    def value(x: float) -> float | None:
        return float(x) if np.isfinite(x) else None

    assert [tuple(row) for row in stored] == [
        (i, value(score[i]), value(se[i]), value(lo[i]), value(hi[i])) for i in range(6)
    ]
