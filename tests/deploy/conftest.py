"""Fixtures for the deployment/integration tests: an embedded (SQLite) memaudit with seeded jobs, and a
live HTTP server (uvicorn on a free port) with a real worker process for the end-to-end CLI test."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.service.harness import environment, running_stack, wait_for_http

API_KEY, OTHER_KEY = "deploy-test-key", "deploy-other-key"
WEBHOOK_SECRET = "deploy-webhook-secret"
API_KEYS = f"alice:{API_KEY},mallory:{OTHER_KEY}"
SeedJob = Callable[..., str]


@dataclass
class EmbeddedApp:
    client: TestClient
    data_dir: Path
    seed_job: SeedJob


def _seed_job_factory() -> SeedJob:
    from sqlalchemy import update

    from app.db import Job, session_scope
    from app.lifecycle import JobState
    from app.services.score_writer import ScoreArrays, write_scores

    def seed(n: int, *, owner: str = "alice", state: JobState = JobState.SUCCEEDED,
             dataset: dict[str, str] | None = None,
             heldout: dict[str, str] | None = None, summary: dict[str, object] | None = None,
             seed: int = 0) -> str:
        rng = np.random.default_rng(seed)
        job_id = str(uuid.uuid4())
        spec = {"kind": "vae_audit", "dataset": dataset or {"builtin": "digits"}, "heldout": heldout,
                "audit": {"folds": 3, "repeats": 1}}
        with session_scope() as session:
            session.add(Job(id=job_id, owner=owner, kind="vae_audit", state=JobState.RUNNING, spec=spec,
                            request_hash=uuid.uuid4().hex, n_samples=n, image_shape=[1, 8, 8],
                            units_total=3, units_done=3, progress={}, summary=summary))
        score = rng.gamma(2.0, 0.5, size=n)
        score[: max(1, n // 100)] = np.nan  # some samples without a score
        arrays = ScoreArrays(score=score, log_p_in=-30.0 + score, log_p_out=np.full(n, -30.0),
                             n_in=np.full(n, 2), n_out=np.full(n, 1))
        with session_scope() as session:
            assert write_scores(session, job_id, arrays, units=3, provisional=False)  # while running
            session.execute(update(Job).where(Job.id == job_id).values(state=state))  # a seeded fact
        return job_id

    return seed


@pytest.fixture(scope="module")
def embedded_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedApp]:
    from app.api.main import create_app
    from app.migrate import upgrade_to_head

    tmp = tmp_path_factory.mktemp("embedded")
    database = f"sqlite:///{tmp / 'memaudit.db'}"
    env = {"MEMAUDIT_DATA_DIR": str(tmp / "data"), "MEMAUDIT_DATABASE_URL": database,
           "MEMAUDIT_BROKER_URL": f"sqla+sqlite:///{tmp / 'broker.db'}", "MEMAUDIT_API_KEYS": API_KEYS}
    with environment(env):
        upgrade_to_head(database)
        with TestClient(create_app()) as client:
            client.headers["Authorization"] = f"Bearer {API_KEY}"
            yield EmbeddedApp(client=client, data_dir=tmp / "data", seed_job=_seed_job_factory())


@dataclass
class LiveServer:
    url: str
    api_key: str
    data_root: Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The embedded default for real: SQLite DB + SQLite broker, a Celery worker process, HTTP on a port."""
    import uvicorn

    from app.api.main import create_app

    tmp = tmp_path_factory.mktemp("live")
    database, broker = f"sqlite:///{tmp / 'memaudit.db'}", f"sqla+sqlite:///{tmp / 'broker.db'}"
    # The worker subprocess inherits the environment: it signs webhooks with this secret, and may send
    # them to the tests' receiver on 127.0.0.1 (a private address).
    with environment({"MEMAUDIT_WEBHOOK_SECRET": WEBHOOK_SECRET, "MEMAUDIT_WEBHOOK_ALLOW_PRIVATE": "true"}), \
            running_stack(tmp, database, broker, API_KEYS) as stack:
        port = _free_port()
        config = uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/health")
        try:
            yield LiveServer(url=url, api_key=API_KEY, data_root=stack.data_root)
        finally:
            server.should_exit = True
            deadline = time.monotonic() + 10
            while thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
