"""A running memaudit stack for tests: settings in the environment, migrations applied, a real
Celery worker subprocess, and the API in-process (FastAPI TestClient)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from app.lifecycle import JobState

REPO = Path(__file__).resolve().parents[2]
TERMINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass
class Stack:
    client: TestClient
    env: dict[str, str]
    data_dir: Path
    data_root: Path
    worker_log: Path

    def wait_for_state(self, job_url: str, states: tuple[str, ...] = TERMINAL, timeout_s: float = 240,
                       headers: dict[str, str] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.client.get(job_url, headers=headers).json()
            if job.get("state") in states:
                return job
            time.sleep(0.3)
        tail = self.worker_log.read_text(errors="replace")[-3000:] if self.worker_log.exists() else ""
        raise AssertionError(f"job never reached {states}: {job}\n--- worker log ---\n{tail}")


def _reset_cached_settings() -> None:
    from app.settings import get_settings
    from app.tasks import get_celery

    get_settings.cache_clear()
    get_celery.cache_clear()


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    _reset_cached_settings()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reset_cached_settings()


@contextmanager
def worker_process(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "app", "worker"], cwd=REPO,
                                   env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # warm shutdown: the main process stops its pool
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@contextmanager
def running_stack(tmp: Path, database_url: str, broker_url: str, api_keys: str = "") -> Iterator[Stack]:
    from app.api.main import create_app
    from app.migrate import upgrade_to_head

    data_dir, data_root = tmp / "data", tmp / "root"
    data_root.mkdir(parents=True, exist_ok=True)
    env = {
        "MEMAUDIT_DATA_DIR": str(data_dir),
        "MEMAUDIT_DATA_ROOT": str(data_root),
        "MEMAUDIT_DATABASE_URL": database_url,
        "MEMAUDIT_BROKER_URL": broker_url,
        "MEMAUDIT_API_KEYS": api_keys,
        "MEMAUDIT_WORKER_DEVICE": "cpu",
    }
    with environment(env):
        upgrade_to_head(database_url)
        worker_log = tmp / "worker.log"
        with worker_process(env, worker_log), TestClient(create_app()) as client:
            yield Stack(client=client, env=env, data_dir=data_dir, data_root=data_root, worker_log=worker_log)


def wait_for_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise TimeoutError(url)
