"""Revision 0004 (api_keys.expires_at, api_keys.revoked_at) upgrades over existing rows and downgrades, on
SQLite and PostgreSQL. The revision below it is read from the script directory (not hard-coded), so
the test holds wherever 0004 sits in the chain."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from app.migrate import alembic_config
from tests.conftest import running_in_ci
from tests.service.local_services import ServiceUnavailable, private_postgres

pytestmark = pytest.mark.timeout(180)
REVISION = "0004"
_INSERT = text(
    "INSERT INTO api_keys (owner, key_hash, name, revoked, created_at) "
    "VALUES (:owner, :hash, 'k', :revoked, :created)"
)
CREATED = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'memaudit.db'}"
        return
    if os.environ.get("MEMAUDIT_TEST_DATABASE_URL"):
        pytest.skip("a shared PostgreSQL database is not dropped below revision 0004 here")
    with ExitStack() as stack:
        try:
            yield stack.enter_context(private_postgres())
        except (ServiceUnavailable, OSError) as error:
            if running_in_ci():
                pytest.fail(f"PostgreSQL could not be started: {error}")
            pytest.skip(f"PostgreSQL unavailable: {error}")


def _rows(url: str) -> dict[str, tuple[object, object]]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT owner, expires_at, revoked_at FROM api_keys")).all()
    engine.dispose()
    return {row[0]: (row[1], row[2]) for row in rows}


def _key_columns(url: str) -> set[str]:
    engine = create_engine(url)
    columns = {column["name"] for column in inspect(engine).get_columns("api_keys")}
    engine.dispose()
    return columns


def test_0004_adds_expiry_and_revocation_time_and_downgrades(database_url: str) -> None:
    config = alembic_config(database_url)
    below = ScriptDirectory.from_config(config).get_revision(REVISION).down_revision
    assert isinstance(below, str)
    command.upgrade(config, below)
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            _INSERT, {"owner": "active", "hash": "a" * 64, "revoked": False, "created": CREATED}
        )
        connection.execute(_INSERT, {"owner": "gone", "hash": "b" * 64, "revoked": True, "created": CREATED})
    engine.dispose()

    command.upgrade(config, REVISION)
    rows = _rows(database_url)
    assert rows["active"] == (None, None)  # existing keys never expire
    expires, revoked_at = rows["gone"]
    assert expires is None and str(revoked_at).startswith("2026-01-02 03:04:05")  # backfilled: created_at

    command.downgrade(config, below)
    assert not {"expires_at", "revoked_at"} & _key_columns(database_url)
    assert set(_rows_before(database_url)) == {"active", "gone"}  # the keys themselves survive
    command.upgrade(config, "head")
    assert {"expires_at", "revoked_at"} <= _key_columns(database_url)


def _rows_before(url: str) -> list[str]:
    engine = create_engine(url)
    with engine.connect() as connection:
        owners = [row[0] for row in connection.execute(text("SELECT owner FROM api_keys"))]
    engine.dispose()
    return owners
