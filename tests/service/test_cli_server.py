"""The service's command line: `memaudit migrate`, the 127.0.0.1 rule, and `memaudit demo` (the
README's first command) end to end in subprocesses."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from app.lifecycle import JobState
from tests.service.harness import REPO, environment

pytestmark = pytest.mark.service


def _memaudit(args: list[str], data_dir: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEMAUDIT_DATA_DIR": str(data_dir), "MEMAUDIT_API_KEYS": "",
           "MEMAUDIT_WORKER_DEVICE": "cpu"}
    for key in ("MEMAUDIT_DATABASE_URL", "MEMAUDIT_BROKER_URL"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout_s)


def test_migrate_creates_every_table(tmp_path: Path) -> None:
    result = _memaudit(["migrate"], tmp_path, 120)
    assert result.returncode == 0, result.stderr
    tables = {row[0] for row in sqlite3.connect(tmp_path / "memaudit.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"jobs", "units", "datasets", "sample_scores", "api_keys", "alembic_version"} <= tables


def test_without_keys_the_server_binds_to_localhost_only(tmp_path: Path) -> None:
    from app.cli.server import _bind_host
    from app.migrate import upgrade_to_head

    database = f"sqlite:///{tmp_path / 'memaudit.db'}"
    upgrade_to_head(database)
    with environment({"MEMAUDIT_DATABASE_URL": database, "MEMAUDIT_API_KEYS": ""}):
        assert _bind_host("0.0.0.0") == "127.0.0.1"
    with environment({"MEMAUDIT_DATABASE_URL": database, "MEMAUDIT_API_KEYS": "ops:a-long-token"}):
        assert _bind_host("0.0.0.0") == "0.0.0.0"


def test_demo_runs_a_real_audit_and_prints_the_top_samples(tmp_path: Path) -> None:
    result = _memaudit(["demo", "--epochs", "1", "--top", "4"], tmp_path, 420)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert JobState.SUCCEEDED in result.stdout
    table_row = r"^\s+(\d+)\s+(\d+)\s+(-?\d+\.\d+)\s+-?\d+\.\d+\s+-?\d+\.\d+$"
    rows = re.findall(table_row, result.stdout, re.MULTILINE)
    assert [int(rank) for rank, _, _ in rows] == [1, 2, 3, 4]
    scores = [float(score) for _, _, score in rows]
    assert scores == sorted(scores, reverse=True)
    assert "the three most memorized digits" in result.stdout
    assert "Uvicorn running on http://127.0.0.1:" in (tmp_path / "demo-server.log").read_text()


def test_create_key_stores_only_a_hash_and_the_key_works(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from app.api.main import create_app

    assert _memaudit(["migrate"], tmp_path, 120).returncode == 0
    created = _memaudit(["create-key", "carol", "--name", "ci"], tmp_path, 120)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert len(token) > 30
    for db_file in tmp_path.glob("memaudit.db*"):  # the database and its WAL
        assert token.encode() not in db_file.read_bytes()
    database = f"sqlite:///{tmp_path / 'memaudit.db'}"
    env = {"MEMAUDIT_DATA_DIR": str(tmp_path), "MEMAUDIT_DATABASE_URL": database, "MEMAUDIT_API_KEYS": ""}
    with environment(env), TestClient(create_app()) as client:
        assert client.get("/jobs").status_code == 401  # a key in the DB switches auth on
        assert client.get("/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.get("/jobs", headers={"Authorization": f"Bearer {token}x"}).status_code == 401
