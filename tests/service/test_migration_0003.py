"""Revision 0003 (the finishing step's counter and lease as columns, counters out of jobs.progress)
upgrades over existing rows and downgrades, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

from app.lifecycle import JobState
from app.migrate import alembic_config
from tests.service.test_migration_0002 import database_url

__all__ = ["database_url"]  # the same SQLite / private PostgreSQL fixture as revision 0002's test
pytestmark = pytest.mark.timeout(180)
_INSERT = text(
    "INSERT INTO jobs (id, owner, kind, state, spec, request_hash, n_samples, image_shape, units_total, "
    "units_done, progress, scores_provisional, scores_units, created_at, updated_at) VALUES (:id, 'alice', "
    "'vae_audit', :state, '{}', 'h', 60, '[1, 8, 8]', :units_total, :units_done, :progress, false, 0, "
    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
)
ROWS: list[dict[str, Any]] = [
    # a job whose finishing step had started twice, mid-unit progress next to the old counter copies
    {
        "id": "finishing",
        "state": JobState.RUNNING,
        "units_total": 3,
        "units_done": 3,
        "progress": {
            "units_done": 3,
            "units_total": 3,
            "unit": 2,
            "epoch": 4,
            "epochs": 4,
            "fraction": 1.0,
            "finish_attempts": 2,
        },
    },
    # the JSON counted one more unit than the column (a lost update of the old code): the larger wins
    {
        "id": "behind",
        "state": JobState.RUNNING,
        "units_total": 4,
        "units_done": 1,
        "progress": {"units_done": 2, "units_total": 4, "unit": 3, "epoch": 1, "epochs": 5, "fraction": 0.55},
    },
    {
        "id": "fresh",
        "state": JobState.QUEUED,
        "units_total": 0,
        "units_done": 0,
        "progress": {"units_done": 0, "units_total": 0},
    },
    {
        "id": "odd",
        "state": JobState.FAILED,
        "units_total": 0,
        "units_done": 0,
        "progress": {"finish_attempts": "x"},
    },
]


def _jobs(url: str, columns: str) -> dict[str, dict[str, Any]]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(text(f"SELECT id, {columns} FROM jobs")).mappings().all()
    engine.dispose()
    out = {}
    for row in rows:
        values = dict(row)
        if isinstance(values.get("progress"), str):  # SQLite hands raw JSON text to a plain query
            values["progress"] = json.loads(values["progress"])
        out[values.pop("id")] = values
    return out


def _job_columns(url: str) -> set[str]:
    engine = create_engine(url)
    columns = {column["name"] for column in inspect(engine).get_columns("jobs")}
    engine.dispose()
    return columns


def test_0003_moves_the_counters_to_columns_and_downgrades(database_url: str) -> None:
    config = alembic_config(database_url)
    command.upgrade(config, "0002")
    engine = create_engine(database_url)
    with engine.begin() as connection:
        for row in ROWS:
            connection.execute(
                _INSERT, {**row, "state": str(row["state"]), "progress": json.dumps(row["progress"])}
            )
    engine.dispose()

    command.upgrade(config, "0003")
    jobs = _jobs(database_url, "finish_attempts, finish_heartbeat_at, units_done, units_total, progress")
    assert jobs["finishing"] == {
        "finish_attempts": 2,
        "finish_heartbeat_at": None,
        "units_done": 3,
        "units_total": 3,
        "progress": {"unit": 2, "epoch": 4, "epochs": 4, "fraction": 1.0},
    }
    assert jobs["behind"]["units_done"] == 2 and jobs["behind"]["finish_attempts"] == 0
    assert jobs["behind"]["progress"] == {"unit": 3, "epoch": 1, "epochs": 5, "fraction": 0.55}
    assert jobs["fresh"]["progress"] == {} and jobs["fresh"]["finish_attempts"] == 0
    assert jobs["odd"]["finish_attempts"] == 0 and jobs["odd"]["progress"] == {}

    command.downgrade(config, "0002")
    assert not {"finish_attempts", "finish_heartbeat_at"} & _job_columns(database_url)
    restored = _jobs(database_url, "progress")
    assert restored["finishing"]["progress"] == {
        "unit": 2,
        "epoch": 4,
        "epochs": 4,
        "fraction": 1.0,
        "units_done": 3,
        "units_total": 3,
        "finish_attempts": 2,
    }
    assert restored["fresh"]["progress"] == {"units_done": 0, "units_total": 0}
    command.upgrade(config, "head")
    assert {"finish_attempts", "finish_heartbeat_at"} <= _job_columns(database_url)
