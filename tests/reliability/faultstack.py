"""A stack the reliability tests can break: PostgreSQL, a Redis that can be restarted on its port,
Celery worker processes that can be SIGKILLed and restarted, and armed fault points (app/faults.py).

Built from the service harness (tests/service/harness.py): same environment handling, same worker
process launcher, same migrations; only the restartable parts are added here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from tests.service.harness import TERMINAL, environment, worker_process
from tests.service.local_services import ServiceUnavailable, _wait_for_port, free_port

# Short clocks so that orphaned work is noticed within seconds (production: 15 s / 120 s / 30 s).
FAST_CLOCKS = {
    "MEMAUDIT_HEARTBEAT_INTERVAL_S": "0.3",
    "MEMAUDIT_STALE_AFTER_S": "2.5",
    "MEMAUDIT_RECONCILE_INTERVAL_S": "0.5",
    "MEMAUDIT_MAX_UNIT_ATTEMPTS": "3",
}


class RestartableRedis:
    """redis-server on a fixed port that keeps nothing on disk, so a restart loses every message."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceUnavailable("redis-server not on PATH")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, 15)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class FaultStack:
    client: TestClient
    env: dict[str, str]
    tmp: Path
    fault_dir: Path
    redis: RestartableRedis
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _exits: ExitStack = field(default_factory=ExitStack)

    # --- workers ---------------------------------------------------------------------------------
    def start_worker(self) -> subprocess.Popen[bytes]:
        log = self.tmp / f"worker-{len(self.workers):03d}.log"  # sorts in start order
        process = self._exits.enter_context(worker_process(self.env, log))
        self.workers.append(process)
        return process

    def kill_worker(self) -> None:
        """SIGKILL the live worker's whole process group (main process and pool child): a crash."""
        for process in self.workers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def worker_logs(self) -> str:
        return "".join(path.read_text(errors="replace") for path in sorted(self.tmp.glob("worker-*.log")))

    # --- fault points ----------------------------------------------------------------------------
    def arm(self, point: str, action: str, after: int = 0) -> None:
        for suffix in ("reached", "passes"):
            (self.fault_dir / f"{point}.{suffix}").unlink(missing_ok=True)
        (self.fault_dir / f"{point}.arm").write_text(f"{action} after={after}\n")

    def disarm(self, point: str) -> None:
        (self.fault_dir / f"{point}.arm").unlink(missing_ok=True)

    def times_reached(self, point: str) -> int:
        reached = self.fault_dir / f"{point}.reached"
        return len(reached.read_text().split()) if reached.exists() else 0

    def wait_reached(self, point: str, times: int = 1, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while self.times_reached(point) < times:
            if time.monotonic() > deadline:
                tail = self.worker_logs()[-4000:]
                raise AssertionError(f"fault point {point} not reached {times}x\n{tail}")
            time.sleep(0.05)

    # --- jobs ------------------------------------------------------------------------------------
    def submit(self, body: dict[str, Any]) -> str:
        response = self.client.post("/jobs", json=body)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def wait_for(
        self, job_id: str, states: tuple[str, ...] = TERMINAL, timeout_s: float = 120
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.client.get(f"/jobs/{job_id}").json()
            if job.get("state") in states:
                return job
            time.sleep(0.2)
        tail = self.worker_logs()[-4000:]
        raise AssertionError(f"job never reached {states}: {job}\n--- workers ---\n{tail}")

    def all_scores(self, job_id: str) -> list[dict[str, Any]]:
        page = self.client.get(f"/jobs/{job_id}/scores", params={"sort": "sample_id", "limit": 1000})
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["next_cursor"] is None
        return list(body["items"])

    def score_row_count(self, job_id: str) -> tuple[int, int]:
        """(rows, distinct sample ids) stored for the job, read straight from the database."""
        from app.db import SampleScore, session_scope

        with session_scope() as session:
            rows = session.scalar(select(func.count()).where(SampleScore.job_id == job_id))
            distinct = session.scalar(
                select(func.count(func.distinct(SampleScore.sample_id))).where(SampleScore.job_id == job_id)
            )
        return int(rows or 0), int(distinct or 0)

    def terminate_db_connections(self) -> int:
        """pg_terminate_backend every other client connection (workers' and the API's)."""
        from app.db import session_scope

        with session_scope() as session:
            killed = session.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )).scalar()
        return int(killed or 0)


def score_vector(items: list[dict[str, Any]]) -> np.ndarray:
    """(N, 3) [score, log_p_in, log_p_out] ordered by sample id; NaN for nulls."""
    assert [item["sample_id"] for item in items] == list(range(len(items))), "missing or duplicate samples"
    keys = ("score", "log_p_in", "log_p_out")
    return np.array([[np.nan if item[key] is None else item[key] for key in keys] for item in items],
                    dtype=np.float64)


@contextmanager
def fault_stack(tmp: Path, database_url: str) -> Iterator[FaultStack]:
    from app.api.main import create_app
    from app.migrate import upgrade_to_head

    redis = RestartableRedis(tmp)
    redis.start()
    fault_dir = tmp / "faults"
    fault_dir.mkdir()
    env = {
        "MEMAUDIT_DATA_DIR": str(tmp / "data"),
        "MEMAUDIT_DATA_ROOT": str(tmp / "root"),
        "MEMAUDIT_DATABASE_URL": database_url,
        "MEMAUDIT_BROKER_URL": redis.url,
        "MEMAUDIT_API_KEYS": "",
        "MEMAUDIT_WORKER_DEVICE": "cpu",
        "MEMAUDIT_FAULT_DIR": str(fault_dir),
        "MEMAUDIT_JOB_RATE_LIMIT": "0",
        **FAST_CLOCKS,
    }
    (tmp / "root").mkdir()
    try:
        with environment(env):
            upgrade_to_head(database_url)
            with TestClient(create_app()) as client:
                stack = FaultStack(client=client, env=env, tmp=tmp, fault_dir=fault_dir, redis=redis)
                with stack._exits:
                    yield stack
    finally:
        redis.stop()
