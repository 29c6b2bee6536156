"""API keys: MEMAUDIT_API_KEYS is validated once, at start-up (a malformed value stops the app factory,
`memaudit serve` and `memaudit worker` with a message that names the entry and never the token); keys
expire, and a revoked key, from the database or from the environment, gets 401 at once.

In-process app on a migrated SQLite database; the CLI in subprocesses.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.service.harness import REPO, environment

pytestmark = pytest.mark.service
SECRET = "s3cret-token-that-must-not-leak"
MALFORMED = [
    (f"alice:{SECRET},bob", "entry 2 has no ':'"),
    (f"alice:{SECRET},,bob:x", "entry 2 is empty"),
    (f"alice:{SECRET},:tok", "entry 2: the owner must be"),
    (f"alice:{SECRET},bob:two words", "entry 2 (owner 'bob'): the token must be"),
    (f"alice:{SECRET},bob:{SECRET}", "entry 2 (owner 'bob') repeats the token of owner 'alice'"),
]


@pytest.fixture
def database(tmp_path: Path) -> Iterator[dict[str, str]]:
    from app.migrate import upgrade_to_head

    url = f"sqlite:///{tmp_path / 'memaudit.db'}"
    upgrade_to_head(url)
    yield {"MEMAUDIT_DATA_DIR": str(tmp_path), "MEMAUDIT_DATABASE_URL": url,
           "MEMAUDIT_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}"}  # fmt: skip


def _memaudit(
    args: list[str], env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, input=stdin)  # fmt: skip


@pytest.mark.parametrize(("value", "message"), MALFORMED, ids=[m for _, m in MALFORMED])
def test_a_malformed_key_list_stops_the_app_factory(
    database: dict[str, str], value: str, message: str
) -> None:
    from app.api.main import create_app
    from app.settings import ConfigurationError

    with environment({**database, "MEMAUDIT_API_KEYS": value}), pytest.raises(ConfigurationError) as error:
        create_app()
    assert f"MEMAUDIT_API_KEYS: {message}" in str(error.value)
    assert SECRET not in str(error.value)


@pytest.mark.parametrize("command", [["serve", "--no-worker"], ["worker"]])
def test_a_malformed_key_list_stops_serve_and_worker_at_once(
    database: dict[str, str], command: list[str]
) -> None:
    started = time.monotonic()
    result = _memaudit(command, {**database, "MEMAUDIT_API_KEYS": f"alice:{SECRET},bob"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert time.monotonic() - started < 60
    assert "memaudit: invalid configuration: MEMAUDIT_API_KEYS: entry 2 has no ':'" in result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stderr + result.stdout


def _get(client: TestClient, token: str) -> int:
    return client.get("/jobs", headers={"Authorization": f"Bearer {token}"}).status_code


def test_revoked_keys_get_401_at_once_and_the_server_stays_protected(database: dict[str, str]) -> None:
    from app.api.main import create_app
    from app.db import session_scope
    from app.services.auth import create_api_key

    env_token = "ops-env-token"
    with (
        environment({**database, "MEMAUDIT_API_KEYS": f"ops:{env_token}"}),
        TestClient(create_app()) as client,
    ):
        with session_scope() as session:
            first, second = create_api_key(session, "carol"), create_api_key(session, "carol", name="ci")
        assert (_get(client, first), _get(client, second), _get(client, env_token)) == (200, 200, 200)

        revoked = _memaudit(["revoke-key", "-"], {**database, "MEMAUDIT_API_KEYS": f"ops:{env_token}"},
                            stdin=first + "\n")  # fmt: skip
        assert revoked.returncode == 0 and "revoked key" in revoked.stdout and first not in revoked.stdout
        response = client.get("/jobs", headers={"Authorization": f"Bearer {first}"})
        assert (
            response.status_code == 401 and response.json()["detail"][0]["msg"] == "this API key was revoked"
        )
        assert _get(client, second) == 200  # only that key

        env = {**database, "MEMAUDIT_API_KEYS": f"ops:{env_token}"}
        assert _memaudit(["revoke-key", env_token], env).returncode == 0  # an environment key, no restart
        assert _get(client, env_token) == 401
        assert (
            _memaudit(["revoke-key", "--owner", "carol"], env).stdout.strip()
            == "revoked 1 key(s) of owner carol"
        )
        assert _get(client, second) == 401
        listing = _memaudit(["list-keys"], env)
        assert listing.returncode == 0 and listing.stdout.count("revoked") == 3
        assert all(token not in listing.stdout for token in (first, second, env_token))
        missing = _memaudit(["revoke-key", "no-such-key"], env)
        assert missing.returncode == 1 and "no such API key" in missing.stderr

    # Every key revoked: the server still requires one (it must not fall back to single-user mode).
    with environment({**database, "MEMAUDIT_API_KEYS": ""}), TestClient(create_app()) as client:
        assert client.get("/jobs").status_code == 401
        assert _get(client, second) == 401


def test_keys_expire(database: dict[str, str]) -> None:
    from sqlalchemy import select

    from app.api.main import create_app
    from app.db import ApiKey, session_scope, utcnow
    from app.services.auth import create_api_key

    with environment({**database, "MEMAUDIT_API_KEYS": ""}), TestClient(create_app()) as client:
        with session_scope() as session:
            token = create_api_key(session, "dora", expires_at=utcnow() + dt.timedelta(hours=1))
        assert _get(client, token) == 200
        with session_scope() as session:  # an hour later
            row = session.scalars(select(ApiKey).where(ApiKey.owner == "dora")).one()
            row.expires_at = utcnow() - dt.timedelta(seconds=1)
        response = client.get("/jobs", headers={"Authorization": f"Bearer {token}"})
        assert (
            response.status_code == 401 and response.json()["detail"][0]["msg"] == "this API key has expired"
        )
    created = _memaudit(["create-key", "erin", "--expires-in", "30d"], {**database, "MEMAUDIT_API_KEYS": ""})
    assert created.returncode == 0 and "expires at" in created.stderr
    with environment({**database, "MEMAUDIT_API_KEYS": ""}), session_scope() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.owner == "erin")).one()
        assert row.expires_at is not None
        remaining = row.expires_at.replace(tzinfo=dt.UTC) - utcnow()
        assert dt.timedelta(days=29) < remaining <= dt.timedelta(days=30)
    assert _memaudit(["create-key", "erin", "--expires-in", "soon"], database).returncode == 2
