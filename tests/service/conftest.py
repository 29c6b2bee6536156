"""Service-test harness: real PostgreSQL, Redis and a Celery worker process.

PostgreSQL and Redis come from MEMAUDIT_TEST_DATABASE_URL / MEMAUDIT_TEST_REDIS_URL when given,
otherwise private instances are started (initdb + pg_ctl, redis-server) on free ports. When they
cannot be started the tests are skipped locally and FAIL in CI (CI=true), so a CI run can never
pass without exercising the real services. A second stack runs the embedded default (SQLite DB
and kombu's SQLite broker) with its own worker process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.conftest import running_in_ci
from tests.service.harness import Stack, running_stack
from tests.service.local_services import ServiceUnavailable, private_postgres, private_redis

ALICE, BOB = "alice-test-key", "bob-test-key"
API_KEYS = f"alice:{ALICE},bob:{BOB}"


def _unavailable(reason: str) -> None:
    if running_in_ci():
        pytest.fail(f"service tests need PostgreSQL and Redis, and they could not be started: {reason}")
    pytest.skip(f"PostgreSQL/Redis unavailable: {reason}")


@pytest.fixture(scope="session")
def backend_urls() -> Iterator[tuple[str, str]]:
    with ExitStack() as stack:
        try:
            database = os.environ.get("MEMAUDIT_TEST_DATABASE_URL") or stack.enter_context(private_postgres())
            redis = os.environ.get("MEMAUDIT_TEST_REDIS_URL") or stack.enter_context(private_redis())
        except (ServiceUnavailable, OSError) as error:
            _unavailable(str(error))
        yield database, redis


@pytest.fixture(scope="module")
def pg_stack(backend_urls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    database, redis = backend_urls
    with running_stack(tmp_path_factory.mktemp("pg-stack"), database, redis, API_KEYS) as stack:
        yield stack


@pytest.fixture(scope="module")
def sqlite_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("sqlite-stack")
    database = f"sqlite:///{tmp / 'memaudit.db'}"
    broker = f"sqla+sqlite:///{tmp / 'broker.db'}"
    with running_stack(tmp, database, broker) as stack:
        yield stack


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
