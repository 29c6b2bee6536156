"""The migrated schema is the one app/db.py declares, on SQLite and on PostgreSQL.

Alembic's autogenerate comparison (the diff ``alembic revision --autogenerate`` would write) between the
database at head and the ORM's metadata must be empty: every table, column and type, index, unique
constraint and foreign key as declared, nothing more or less, where an index or constraint marked
``only_on`` another dialect (app.db) is expected to be absent. A job's score partitions on PostgreSQL
are made by the score writer, not declared: they are left out of the comparison (one exists here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from app.db import Base, Job, SampleScore
from app.lifecycle import JobState
from app.migrate import upgrade_to_head
from app.services.score_writer import ScoreArrays, write_scores
from tests.service.test_migration_0004 import database_url

__all__ = ["database_url"]
pytestmark = pytest.mark.timeout(180)


def _job_with_scores(session: Session, job_id: str) -> None:
    session.add(Job(id=job_id, owner="alice", kind="vae_audit", state=JobState.RUNNING, spec={},
                    request_hash="h", n_samples=2, image_shape=[1, 8, 8], progress={}))  # fmt: skip
    session.commit()
    arrays = ScoreArrays(score=np.array([1.5, np.nan]), log_p_in=np.array([-10.0, np.nan]),
                         log_p_out=np.array([-11.5, -3.0]), n_in=np.array([2, 2]),
                         n_out=np.array([1, 0]))  # fmt: skip
    assert write_scores(session, job_id, arrays, units=1, provisional=True)


def test_the_migrated_schema_is_the_orms_on_each_dialect(database_url: str) -> None:
    upgrade_to_head(database_url)
    engine = create_engine(database_url)
    dialect = engine.dialect.name
    with Session(engine) as session:
        _job_with_scores(session, "job-a")
    with engine.connect() as connection:
        partitions: set[str] = set()
        if dialect == "postgresql":
            descendants = text("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid")
            partitions = set(connection.execute(descendants).scalars())
            assert partitions, "the score write made no partition: nothing is left out below"

        def include_name(name: str | None, kind: str, _parents: Any) -> bool:
            return not (kind == "table" and name in partitions)

        def include_object(item: Any, _name: str | None, _kind: str, reflected: bool, _other: Any) -> bool:
            declared_for = None if reflected else getattr(item, "info", {}).get("only_on")
            return declared_for in (None, dialect)

        options = {"compare_type": True, "include_name": include_name, "include_object": include_object}
        context = MigrationContext.configure(connection, opts=options)
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == [], f"{dialect}: the migrations and app/db.py disagree: {differences}"
    foreign_keys = {key.target_fullname for key in SampleScore.__table__.foreign_keys}
    assert foreign_keys == {"jobs.id"}  # declared, only_on SQLite: the comparison above checked where


def test_on_sqlite_a_deleted_job_takes_its_scores_with_it(tmp_path: Any) -> None:
    """The foreign key sample_scores keeps on SQLite (app.db: only_on) still cascades there."""
    url = f"sqlite:///{tmp_path / 'memaudit.db'}"
    upgrade_to_head(url)
    engine = create_engine(url)
    with Session(engine) as session:
        _job_with_scores(session, "job-a")
        _job_with_scores(session, "job-b")
    with engine.begin() as connection:
        connection.execute(text("PRAGMA foreign_keys=ON"))  # as app.db sets on every connection
        connection.execute(text("DELETE FROM jobs WHERE id = 'job-a'"))
        left = connection.execute(text("SELECT DISTINCT job_id FROM sample_scores")).scalars().all()
    engine.dispose()
    assert left == ["job-b"]
