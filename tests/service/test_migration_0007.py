"""Revision 0007 (score intervals, within_tau_count / nearest_copy_count, tau_counts, jobs.units_skipped)
upgrades over existing rows and downgrades, on SQLite and PostgreSQL. The revision below it is read from
the script directory, so the test holds wherever 0007 sits in the chain."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from app.migrate import alembic_config
from tests.service.test_migration_0004 import database_url
from tests.service.test_migration_0006 import _columns

__all__ = ["database_url"]
pytestmark = pytest.mark.timeout(180)
REVISION = "0007"
_JOB = text(
    "INSERT INTO jobs (id, owner, kind, state, spec, request_hash, n_samples, image_shape, units_total, "
    "units_done, progress, scores_provisional, scores_units, created_at, updated_at, finish_attempts) "
    "VALUES (:id, 'alice', :kind, 'succeeded', '{}', 'h', 2, '[1, 8, 8]', 1, 1, '{}', false, 1, "
    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 1)"
)
_SCORES = text(
    "INSERT INTO sample_scores (job_id, sample_id, score, log_p_in, log_p_out, n_in, n_out, rank, rho, "
    "copy_count) VALUES ('vae', 0, 1.5, -10, -11.5, 2, 1, 1, NULL, NULL), "
    "('vae', 1, NULL, NULL, -3, 2, 0, 2, NULL, NULL), ('gan', 0, 3.2, NULL, NULL, 0, 0, 1, 0.9, 3), "
    "('gan', 1, 0.1, NULL, NULL, 0, 0, 2, 1.1, 0)"
)
_UNIT = text(
    "INSERT INTO units (job_id, \"index\", model_ids, state, attempts, epoch) "
    "VALUES ('vae', 0, '[0]', :state, 1, 0)"
)


def test_0007_adds_intervals_counts_and_skips_keeping_existing_rows_and_downgrades(database_url: str) -> None:
    config = alembic_config(database_url)
    below = ScriptDirectory.from_config(config).get_revision(REVISION).down_revision
    assert isinstance(below, str)
    command.upgrade(config, below)
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(_JOB, {"id": "vae", "kind": "vae_audit"})
        connection.execute(_JOB, {"id": "gan", "kind": "copy_test"})
        connection.execute(_SCORES)
    command.upgrade(config, REVISION)
    with engine.begin() as connection:
        rows = connection.execute(text(
            "SELECT job_id, sample_id, score, score_se, score_lo, score_hi, nearest_copy_count, "
            "within_tau_count FROM sample_scores ORDER BY job_id, sample_id")).all()  # fmt: skip
        assert [tuple(row) for row in rows] == [
            ("gan", 0, 3.2, None, None, None, 3.0, None),  # the old count, renamed
            ("gan", 1, 0.1, None, None, None, 0.0, None),
            ("vae", 0, 1.5, None, None, None, None, None),  # no interval was computed before
            ("vae", 1, None, None, None, None, None, None),
        ]
        skipped = connection.execute(text("SELECT units_skipped FROM jobs ORDER BY id")).scalars().all()
        assert skipped == [0, 0]
        connection.execute(text("INSERT INTO tau_counts (job_id, tau_index, sample_id, tau, "
                                "within_tau_count, nearest_copy_count) VALUES ('gan', 0, 0, 0.05, 4, 3), "
                                "('gan', 1, 0, 0.1, 6, 2)"))  # fmt: skip
        connection.execute(_UNIT, {"state": "skipped"})
        # the score index still serves the score order after the in-place ALTERs
        indexes = {index["name"] for index in inspect(connection).get_indexes("sample_scores")}
        assert "ix_sample_scores_job_score" in indexes
    with engine.begin() as connection:
        if database_url.startswith("sqlite"):
            connection.execute(text("PRAGMA foreign_keys=ON"))  # as app.db sets on every connection
        connection.execute(text("DELETE FROM jobs WHERE id = 'gan'"))
        assert connection.execute(text("SELECT count(*) FROM tau_counts")).scalar() == 0  # cascades
    engine.dispose()
    command.downgrade(config, below)
    assert _columns(database_url, "tau_counts") == set()
    scores = _columns(database_url, "sample_scores")
    assert "copy_count" in scores and not {"nearest_copy_count", "within_tau_count", "score_se"} & scores
    assert "units_skipped" not in _columns(database_url, "jobs")
    engine = create_engine(database_url)
    with engine.connect() as connection:  # a state the older code cannot read is gone
        state, error = connection.execute(text("SELECT state, error FROM units")).one()
        assert state == "failed" and "adaptive stop" in error
    engine.dispose()
    command.upgrade(config, "head")
    assert {"score_se", "score_lo", "score_hi", "within_tau_count", "nearest_copy_count"} <= _columns(
        database_url, "sample_scores"
    )
