"""A job's score set is replaced atomically (PostgreSQL: a partition swap; SQLite: one transaction), and
revision 0008 partitions existing rows and downgrades. Real databases, a real concurrent reader; no mocks."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from app.db import Job, make_engine
from app.migrate import alembic_config, upgrade_to_head
from app.services.score_partitions import partition_name
from app.services.score_writer import ScoreArrays, write_scores
from app.services.scores import top_scores
from tests.service.test_migration_0004 import database_url

__all__ = ["database_url"]
pytestmark = pytest.mark.timeout(300)
ROWS = 20_000
REVISION = "0008"


def _engine(url: str) -> Iterator[Engine]:
    upgrade_to_head(url)
    made = make_engine(url)
    yield made
    made.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('swap') / 'scores.db'}"
    else:
        url = request.getfixturevalue("backend_urls")[0]
    yield from _engine(url)


@pytest.fixture
def pg_engine(backend_urls: tuple[str, str]) -> Iterator[Engine]:
    """PostgreSQL only: the partition swap is PostgreSQL's (SQLite replaces rows in one table)."""
    yield from _engine(backend_urls[0])


def _job(session: Session, rows: int = ROWS) -> str:
    job_id = str(uuid.uuid4())
    session.add(Job(id=job_id, owner="o", spec={}, request_hash="h", n_samples=rows, image_shape=[1, 2, 2]))
    session.commit()
    return job_id


def _version(version: int, rows: int = ROWS) -> ScoreArrays:
    """A score set whose every row says which version it belongs to (n_in) and whose best sample moves."""
    score = np.linspace(0.0, 1.0, rows)[::-1 if version % 2 else 1] + version  # (rows,)
    constant = np.full(rows, version, dtype=np.int64)
    return ScoreArrays(score=score, log_p_in=score, log_p_out=np.zeros(rows), n_in=constant,
                       n_out=np.ones(rows, dtype=np.int64))  # fmt: skip


def test_readers_see_the_old_set_or_the_new_one_never_a_part(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        job_id = _job(session)
        assert write_scores(session, job_id, _version(1), units=1, provisional=True)
    seen: list[tuple[int, int, int, int]] = []
    done = threading.Event()

    def read() -> None:
        # One statement, one snapshot (each statement has its own under READ COMMITTED and on SQLite): the
        # rows, and the best row found through the top-k index, must all come from one version.
        query = text("SELECT count(*), min(n_in), max(n_in), (SELECT n_in FROM sample_scores WHERE job_id = "
                     ":job ORDER BY score DESC, sample_id LIMIT 1) FROM sample_scores WHERE job_id = :job")
        with Session(engine) as reader:
            while not done.is_set():
                count, low, high, best = reader.execute(query, {"job": job_id}).one()
                seen.append((int(count), int(low), int(high), int(best)))
                reader.rollback()

    thread = threading.Thread(target=read)
    thread.start()
    try:
        with Session(engine, expire_on_commit=False) as session:
            for units in range(2, 7):  # provisional sets after each unit, then the final one
                assert write_scores(session, job_id, _version(units), units=units, provisional=units < 6)
    finally:
        done.set()
        thread.join(60)
    assert seen, "the reader never ran"
    for count, low, high, best_version in seen:
        assert count == ROWS and low == high, f"a reader saw a partial or mixed set: {count}, {low}..{high}"
        assert best_version == low  # the top-k index and the rows belong to the same set
    with Session(engine) as session:
        assert top_scores(session, job_id, 1)[0].n_in == 6


def test_a_write_rolled_back_leaves_the_old_set_and_nothing_else(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        job_id = _job(session)
        assert write_scores(session, job_id, _version(1), units=1, provisional=True)
        # The finishing step writes without committing; a failure before its commit rolls everything back.
        assert write_scores(session, job_id, _version(2), units=2, provisional=False, commit=False)
        session.rollback()
        count, version = session.execute(text("SELECT count(*), max(n_in) FROM sample_scores "
                                               "WHERE job_id = :job"), {"job": job_id}).one()  # fmt: skip
        assert (count, version) == (ROWS, 1)
        # A re-run of the finishing step then writes the final set once; a third run changes nothing.
        assert write_scores(session, job_id, _version(2), units=2, provisional=False)
        assert not write_scores(session, job_id, _version(3), units=3, provisional=False)
        assert top_scores(session, job_id, 1)[0].n_in == 2
        if engine.dialect.name == "postgresql":  # exactly one leaf: no staging table survives a rollback
            leaves = text("SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relname LIKE :prefix")
            tables = session.execute(leaves, {"prefix": partition_name(job_id) + "%"}).scalar()
            assert tables == 1


def test_a_long_reader_of_the_job_does_not_hold_up_its_next_write(pg_engine: Engine) -> None:
    engine = pg_engine
    rows = 1000
    with Session(engine, expire_on_commit=False) as session:
        job_id = _job(session, rows)
        assert write_scores(session, job_id, _version(1, rows), units=1, provisional=True)
    versions = text("SELECT count(*), min(n_in), max(n_in) FROM sample_scores WHERE job_id = :job")
    with engine.connect() as download:  # a reader in the middle of a long transaction on this job's rows
        assert download.execute(versions, {"job": job_id}).one() == (rows, 1, 1)
        started = time.monotonic()
        with Session(engine, expire_on_commit=False) as session:
            assert write_scores(session, job_id, _version(2, rows), units=2, provisional=True)
        assert time.monotonic() - started < 30, "the write waited for the reader"
        assert download.execute(versions, {"job": job_id}).one() == (rows, 2, 2)  # its next statement
    with Session(engine, expire_on_commit=False) as session:  # and the next write swaps again
        assert write_scores(session, job_id, _version(3, rows), units=3, provisional=True)
        assert session.execute(versions, {"job": job_id}).one() == (rows, 3, 3)
        leaves = text("SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relname LIKE :prefix")
        assert session.execute(leaves, {"prefix": partition_name(job_id) + "%"}).scalar() == 1


_JOB = text(
    "INSERT INTO jobs (id, owner, kind, state, spec, request_hash, n_samples, image_shape, units_total, "
    "units_done, progress, scores_provisional, scores_units, created_at, updated_at, finish_attempts) VALUES "
    "(:id, 'alice', 'vae_audit', 'running', '{}', 'h', 3, '[1, 8, 8]', 0, 0, '{}', false, 0, "
    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 0)"
)


def _insert_before(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        for job_id in ("j1", "j2"):
            connection.execute(_JOB, {"id": job_id})
            for sample_id, score in enumerate((0.5, 2.0, None)):
                connection.execute(text("INSERT INTO sample_scores (job_id, sample_id, score, rank) VALUES "
                                        "(:job, :sid, :score, :rank)"),
                                   {"job": job_id, "sid": sample_id, "score": score,
                                    "rank": {0: 2, 1: 1, 2: 3}[sample_id]})  # fmt: skip
    engine.dispose()


def _top(url: str) -> dict[str, list[int]]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT job_id, sample_id FROM sample_scores ORDER BY job_id, "
                                       "score DESC, sample_id")).all()  # fmt: skip
        is_partitioned = text("SELECT count(*) FROM pg_partitioned_table "
                              "WHERE partrelid = 'sample_scores'::regclass")
        postgres = engine.dialect.name == "postgresql"
        partitioned = postgres and bool(connection.execute(is_partitioned).scalar())
    engine.dispose()
    out: dict[str, list[int]] = {"partitioned": [int(partitioned)]}
    for job_id, sample_id in rows:
        out.setdefault(job_id, []).append(sample_id)
    return out


def test_0008_moves_every_job_into_its_partition_and_downgrades(database_url: str) -> None:
    config = alembic_config(database_url)
    below = ScriptDirectory.from_config(config).get_revision(REVISION).down_revision
    assert isinstance(below, str)
    command.upgrade(config, below)
    _insert_before(database_url)
    before = _top(database_url)
    command.upgrade(config, "head")
    after = _top(database_url)
    postgres = database_url.startswith("postgresql")
    assert after == {**before, "partitioned": [int(postgres)]}
    engine = make_engine(database_url)
    with Session(engine, expire_on_commit=False) as session:  # the writer swaps a migrated job's set
        assert write_scores(session, "j1", _version(4, rows=3), units=1, provisional=True)
        assert [row.sample_id for row in top_scores(session, "j1", 3)] == [2, 1, 0]
    engine.dispose()
    command.downgrade(config, below)
    downgraded = _top(database_url)
    assert downgraded == {"partitioned": [0], "j1": [2, 1, 0], "j2": before["j2"]}
    command.upgrade(config, "head")


def test_gan_columns_are_written_through_the_same_swap(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        job_id = _job(session, rows=4)
        arrays = _version(1, rows=4)
        gan = ScoreArrays(score=arrays.score, log_p_in=arrays.log_p_in, log_p_out=arrays.log_p_out,
                          n_in=arrays.n_in, n_out=arrays.n_out, rho=np.array([0.5, 1.0, np.nan, 2.0]),
                          nearest_copy_count=np.array([0.0, 3.0, 1.0, 0.0]),
                          within_tau_count=np.array([1.0, 4.0, 1.0, 0.0]))  # fmt: skip
        assert write_scores(session, job_id, gan, units=1, provisional=True)
        assert write_scores(session, job_id, gan, units=2, provisional=False)
        query = text("SELECT sample_id, rho, nearest_copy_count, within_tau_count FROM sample_scores "
                     "WHERE job_id = :job ORDER BY 1")
        rows = session.execute(query, {"job": job_id}).all()
        assert [tuple(row) for row in rows] == [(0, 0.5, 0.0, 1), (1, 1.0, 3.0, 4), (2, None, 1.0, 1),
                                                (3, 2.0, 0.0, 0)]  # fmt: skip
