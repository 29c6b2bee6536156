"""The unit pipeline called inline (no worker process): provisional scores after the first
repetition, never recomputing a finished unit, final scores replacing provisional ones.

The API runs in-process on a SQLite database; tasks the runner enqueues land in a SQLite broker
that nobody consumes, so every step happens exactly when the test calls it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.lifecycle import JobState
from app.migrate import upgrade_to_head
from tests.service.harness import environment
from tests.service.jobdata import tiny_job
from workers import runner

N_TEST_DIGITS = 299  # digits:test


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    database = f"sqlite:///{tmp_path / 'memaudit.db'}"
    env = {"MEMAUDIT_DATA_DIR": str(tmp_path), "MEMAUDIT_DATABASE_URL": database,
           "MEMAUDIT_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}", "MEMAUDIT_API_KEYS": "",
           "MEMAUDIT_WORKER_DEVICE": "cpu"}
    with environment(env):
        upgrade_to_head(database)
        with TestClient(create_app()) as test_client:
            yield test_client


def _job(client: TestClient, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
    return body


def _scores(client: TestClient, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/scores", params={"top": N_TEST_DIGITS, "job_id": job_id}).json()
    return body


def test_provisional_then_final_scores(client: TestClient, tmp_path: Path) -> None:
    # K=3, L=2, three models per unit: unit 0 is the whole first repetition.
    body = tiny_job({"builtin": "digits:test"}, epochs=1, models_per_unit=3)
    job_id = client.post("/jobs", json=body).json()["id"]
    runner.plan_job(job_id)
    assert _job(client, job_id)["progress"]["units_total"] == 2

    runner.run_unit(job_id, 0)
    job = _job(client, job_id)
    assert job["state"] == JobState.RUNNING
    assert job["scores"]["available"] is True and job["scores"]["provisional"] is True
    provisional = _scores(client, job_id)
    assert provisional["provisional"] is True and len(provisional["items"]) == N_TEST_DIGITS
    assert {(item["n_in"], item["n_out"]) for item in provisional["items"]} == {(2, 1)}

    artifact = tmp_path / "artifacts" / job_id / "unit-0000.npz"
    written = artifact.stat().st_mtime_ns
    runner.run_unit(job_id, 0)  # a redelivered task: the finished unit is not recomputed
    assert artifact.stat().st_mtime_ns == written

    runner.run_unit(job_id, 1)
    runner.finish_job(job_id)
    job = _job(client, job_id)
    assert job["state"] == JobState.SUCCEEDED and job["scores"]["provisional"] is False
    final = _scores(client, job_id)
    assert final["provisional"] is False
    assert {(item["n_in"], item["n_out"]) for item in final["items"]} == {(4, 2)}
    scores = np.array([item["score"] for item in final["items"]])
    assert np.all(np.isfinite(scores)) and np.all(np.diff(scores) <= 0)
    runner.finish_job(job_id)  # finishing twice changes nothing
    assert _scores(client, job_id) == final
