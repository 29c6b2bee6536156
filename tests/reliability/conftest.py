"""Reliability-suite fixtures: one private PostgreSQL server (or MEMAUDIT_TEST_DATABASE_URL's) with
a fresh database per test module, so one module's jobs never reach another module's workers.

Like the service suite, a missing PostgreSQL/Redis skips locally and FAILS in CI.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import running_in_ci
from tests.service.conftest import API_KEYS
from tests.service.harness import Stack, running_stack
from tests.service.local_services import ServiceUnavailable, private_postgres, private_redis


def _unavailable(reason: str) -> None:
    if running_in_ci():
        pytest.fail(f"reliability tests need PostgreSQL and Redis, and they could not be started: {reason}")
    pytest.skip(f"PostgreSQL/Redis unavailable: {reason}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    with ExitStack() as stack:
        try:
            url = os.environ.get("MEMAUDIT_TEST_DATABASE_URL") or stack.enter_context(private_postgres())
        except (ServiceUnavailable, OSError) as error:
            _unavailable(str(error))
        yield url


@pytest.fixture(scope="module")
def fresh_database(postgres_server: str) -> str:
    """The URL of a new, empty database on the test server."""
    name = f"rel_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(postgres_server).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with ExitStack() as stack:
        try:
            url = os.environ.get("MEMAUDIT_TEST_REDIS_URL") or stack.enter_context(private_redis())
        except (ServiceUnavailable, OSError) as error:
            _unavailable(str(error))
        yield url


@pytest.fixture(scope="module")
def keyed_stack(
    fresh_database: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The service harness's stack (API in-process, a real worker) on PostgreSQL, with alice's and
    bob's keys configured."""
    with running_stack(tmp_path_factory.mktemp("keyed"), fresh_database, redis_url, API_KEYS) as stack:
        yield stack
