"""Revision 0006 (job_samples; datasets.format and datasets.details) upgrades over existing rows and
downgrades, on SQLite and PostgreSQL. The revision below it is read from the script directory (not
hard-coded), so the test holds wherever 0006 sits in the chain."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from app.migrate import alembic_config
from tests.service.test_migration_0004 import database_url

__all__ = ["database_url"]
pytestmark = pytest.mark.timeout(180)
REVISION = "0006"
_DATASET = text(
    "INSERT INTO datasets (id, owner, sha256, filename, storage_path, shape, dtype, min_value, max_value, "
    "is_8bit, size_bytes, created_at) VALUES ('d1', 'alice', :sha, 'd.npz', 'x.npz', '[5, 8, 8]', 'uint8', "
    "0, 1, true, 10, CURRENT_TIMESTAMP)"
)
_JOB = text(
    "INSERT INTO jobs (id, owner, kind, state, spec, request_hash, n_samples, image_shape, units_total, "
    "units_done, progress, scores_provisional, scores_units, created_at, updated_at, finish_attempts) "
    "VALUES ('j1', 'alice', 'vae_audit', 'queued', '{}', 'h', 5, '[1, 8, 8]', 0, 0, '{}', false, 0, "
    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 0)"
)


def _columns(url: str, table: str) -> set[str]:
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        return {c["name"] for c in inspector.get_columns(table)} if inspector.has_table(table) else set()
    finally:
        engine.dispose()


def test_0006_adds_job_samples_and_dataset_formats_and_downgrades(database_url: str) -> None:
    config = alembic_config(database_url)
    below = ScriptDirectory.from_config(config).get_revision(REVISION).down_revision
    assert isinstance(below, str)
    command.upgrade(config, below)
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(_DATASET, {"sha": "a" * 64})
        connection.execute(_JOB)
    command.upgrade(config, REVISION)
    with engine.begin() as connection:
        row = connection.execute(text("SELECT format, details FROM datasets WHERE id = 'd1'")).one()
        assert tuple(row) == (None, None)  # an upload from before: an .npy/.npz, no details
        connection.execute(text("INSERT INTO job_samples (job_id, sample_id, key, label) VALUES "
                                "('j1', 0, 'cat/1.png', 'cat'), ('j1', 1, 'dog/2.png', 'dog'), "
                                "('j1', 2, NULL, NULL), ('j1', 3, NULL, NULL)"))  # fmt: skip
    with pytest.raises(IntegrityError), engine.begin() as connection:  # keys are unique per job
        connection.execute(text("INSERT INTO job_samples (job_id, sample_id, key) "
                                "VALUES ('j1', 4, 'cat/1.png')"))  # fmt: skip
    with engine.begin() as connection:
        if database_url.startswith("sqlite"):
            connection.execute(text("PRAGMA foreign_keys=ON"))  # as app.db sets on every connection
        connection.execute(text("DELETE FROM jobs WHERE id = 'j1'"))
        assert connection.execute(text("SELECT count(*) FROM job_samples")).scalar() == 0  # cascades
    engine.dispose()
    command.downgrade(config, below)
    assert _columns(database_url, "job_samples") == set()
    assert not {"format", "details"} & _columns(database_url, "datasets")
    command.upgrade(config, "head")
    assert {"job_id", "sample_id", "key", "label"} <= _columns(database_url, "job_samples")
