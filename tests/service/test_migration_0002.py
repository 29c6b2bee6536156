"""Revision 0002 (datasets.is_8bit) upgrades over existing rows and downgrades, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

from app.migrate import alembic_config
from tests.conftest import running_in_ci
from tests.service.local_services import ServiceUnavailable, private_postgres

pytestmark = pytest.mark.timeout(180)
_INSERT = text(
    "INSERT INTO datasets (id, owner, sha256, filename, storage_path, shape, dtype, min_value, max_value, "
    "size_bytes, created_at) VALUES (:id, 'alice', :id, 'f.npy', 'f.npy', '[2, 8, 8]', :dtype, 0.0, 1.0, "
    "10, CURRENT_TIMESTAMP)"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'memaudit.db'}"
        return
    if os.environ.get("MEMAUDIT_TEST_DATABASE_URL"):
        pytest.skip("a shared PostgreSQL database is not dropped to revision 0001 here")
    with ExitStack() as stack:
        try:
            yield stack.enter_context(private_postgres())
        except (ServiceUnavailable, OSError) as error:
            if running_in_ci():
                pytest.fail(f"PostgreSQL could not be started: {error}")
            pytest.skip(f"PostgreSQL unavailable: {error}")


def _is_8bit_by_id(url: str) -> dict[str, object]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, is_8bit FROM datasets")).all()
    engine.dispose()
    return {row[0]: row[1] for row in rows}


def _dataset_columns(url: str) -> set[str]:
    engine = create_engine(url)
    columns = {column["name"] for column in inspect(engine).get_columns("datasets")}
    engine.dispose()
    return columns


def test_0002_backfills_uint8_rows_and_downgrades(database_url: str) -> None:
    config = alembic_config(database_url)
    command.upgrade(config, "0001")
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(_INSERT, {"id": "u8", "dtype": "uint8"})
        connection.execute(_INSERT, {"id": "fl", "dtype": "float"})
    engine.dispose()

    command.upgrade(config, "0002")
    flags = _is_8bit_by_id(database_url)
    assert flags["fl"] is None  # a float upload cannot be judged without its pixels
    assert flags["u8"] in (True, 1)  # SQLite returns 1 through a raw query

    command.downgrade(config, "0001")
    assert "is_8bit" not in _dataset_columns(database_url)
    command.upgrade(config, "head")
    assert "is_8bit" in _dataset_columns(database_url)
