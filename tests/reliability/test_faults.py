"""Faults survived, on the real processes: PostgreSQL, Redis, Celery worker subprocesses, uvicorn.

Every faulted job must end with scores identical (bit for bit) to an uninterrupted run with the same
seed on the same device, one row per sample; a unit that keeps killing its worker must fail the job
after a bounded number of attempts; a failed artifact write must fail the job without presenting its
provisional scores as final.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from app.lifecycle import JobState
from tests.reliability.faultstack import FaultStack, fault_stack, score_vector
from tests.service.harness import REPO, wait_for_http
from tests.service.jobdata import digits_subset, npz_bytes, tiny_job
from tests.service.local_services import free_port

pytestmark = [pytest.mark.service, pytest.mark.timeout(240)]
N_SAMPLES = 60
UNITS = 3  # folds 3 x repeats 2, two models per unit


@pytest.fixture(scope="module")
def stack(fresh_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    with fault_stack(tmp_path_factory.mktemp("faults"), fresh_database) as running:
        running.start_worker()
        yield running


@pytest.fixture(scope="module")
def job_body(stack: FaultStack) -> dict[str, Any]:
    upload = stack.client.post("/datasets", files={"file": ("d.npz", npz_bytes(digits_subset(N_SAMPLES)))})
    assert upload.status_code == 201, upload.text
    return tiny_job({"id": upload.json()["id"]}, epochs=3)


@pytest.fixture(scope="module")
def reference(stack: FaultStack, job_body: dict[str, Any]) -> np.ndarray:
    """Scores of an uninterrupted run: what every faulted run must reproduce exactly."""
    job_id = stack.submit(job_body)
    job = stack.wait_for(job_id)
    assert job["state"] == JobState.SUCCEEDED, job
    return score_vector(stack.all_scores(job_id))


def _assert_same_as_reference(stack: FaultStack, job_id: str, reference: np.ndarray) -> None:
    job = stack.wait_for(job_id)
    assert job["state"] == JobState.SUCCEEDED, job
    assert job["scores"]["provisional"] is False and job["error"] is None
    assert stack.score_row_count(job_id) == (N_SAMPLES, N_SAMPLES), "duplicate or missing sample rows"
    np.testing.assert_array_equal(score_vector(stack.all_scores(job_id)), reference)


def _crash_and_restart_at(stack: FaultStack, point: str, body: dict[str, Any], after: int = 0) -> str:
    stack.arm(point, "pause", after=after)
    job_id = stack.submit(body)
    stack.wait_reached(point)
    stack.kill_worker()
    stack.disarm(point)
    stack.start_worker()
    return job_id


def test_sigkill_mid_unit_training(
    stack: FaultStack, job_body: dict[str, Any], reference: np.ndarray
) -> None:
    job_id = _crash_and_restart_at(stack, "unit_epoch", job_body, after=4)  # inside the 2nd unit
    _assert_same_as_reference(stack, job_id, reference)


def test_sigkill_during_the_finishing_step(
    stack: FaultStack, job_body: dict[str, Any], reference: np.ndarray
) -> None:
    job_id = _crash_and_restart_at(stack, "finish", job_body)
    _assert_same_as_reference(stack, job_id, reference)


def test_sigkill_during_the_bulk_score_write(
    stack: FaultStack, job_body: dict[str, Any], reference: np.ndarray
) -> None:
    stack.arm("score_write_final", "pause")
    job_id = stack.submit(job_body)
    stack.wait_reached("score_write_final")
    # Mid-write, readers still see the complete provisional set, never half of the final one.
    during = stack.client.get(f"/jobs/{job_id}").json()
    assert during["state"] == JobState.RUNNING and during["scores"]["provisional"] is True
    assert stack.score_row_count(job_id) == (N_SAMPLES, N_SAMPLES)
    stack.kill_worker()
    stack.disarm("score_write_final")
    stack.start_worker()
    _assert_same_as_reference(stack, job_id, reference)


def test_a_unit_that_keeps_killing_its_worker_fails_the_job(
    stack: FaultStack, job_body: dict[str, Any]
) -> None:
    stack.arm("unit_epoch", "kill")
    try:
        job = stack.wait_for(stack.submit(job_body), timeout_s=150)
    finally:
        stack.disarm("unit_epoch")
    assert job["state"] == JobState.FAILED, job
    assert "started 3 times and never finished" in job["error"], job["error"]
    assert stack.times_reached("unit_epoch") <= 3 * UNITS, "redelivery must be bounded"
    assert job["scores"]["available"] is False
    assert stack.workers[-1].poll() is None, "the worker's main process survives its children's deaths"


def test_a_finishing_step_that_keeps_killing_its_worker_fails_the_job(
    stack: FaultStack, job_body: dict[str, Any]
) -> None:
    stack.arm("finish", "kill")
    try:
        job = stack.wait_for(stack.submit(job_body), timeout_s=150)
    finally:
        stack.disarm("finish")
    assert job["state"] == JobState.FAILED, job
    assert job["error"] == "the finishing step was started 3 times and never finished (its worker died)"
    assert stack.times_reached("finish") == 3
    assert job["scores"]["provisional"] is True  # the provisional set stays, labelled so


def test_a_step_that_always_crashes_fails_the_job_once_without_a_retry_loop(
    stack: FaultStack, job_body: dict[str, Any]
) -> None:
    stack.arm("finish", "crash")
    try:
        job = stack.wait_for(stack.submit(job_body))
        time.sleep(4)  # longer than stale_after_s: a reconciler loop would have re-sent the step by now
    finally:
        stack.disarm("finish")
    assert job["state"] == JobState.FAILED, job
    assert job["error"] == "finishing step: RuntimeError: injected crash at fault point finish"
    assert stack.times_reached("finish") == 1


def test_redis_restart_loses_messages_and_the_reconciler_recovers(
    stack: FaultStack, job_body: dict[str, Any], reference: np.ndarray
) -> None:
    stack.arm("unit_epoch", "pause", after=1)  # unit 0 is running, units 1 and 2 wait in Redis
    logged_before = len(stack.worker_logs())
    job_id = stack.submit(job_body)
    stack.wait_reached("unit_epoch")
    stack.redis.restart()
    assert redis.Redis.from_url(stack.redis.url).llen("gpu") == 0, "the restart must lose the queue"
    stack.disarm("unit_epoch")
    _assert_same_as_reference(stack, job_id, reference)
    assert "reconcile: re-enqueued" in stack.worker_logs()[logged_before:]


def test_dropped_database_connections_are_retried_not_fatal(
    stack: FaultStack, job_body: dict[str, Any], reference: np.ndarray
) -> None:
    stack.arm("unit_epoch", "pause", after=2)
    stack.arm("finish", "pause")
    logged_before = len(stack.worker_logs())
    job_id = stack.submit(job_body)
    for point in ("unit_epoch", "finish"):  # mid-training, then inside the finishing transaction
        stack.wait_reached(point)
        assert stack.terminate_db_connections() > 0
        stack.disarm(point)
    _assert_same_as_reference(stack, job_id, reference)
    new_log = stack.worker_logs()[logged_before:]
    assert "OperationalError" in new_log and "Retry in" in new_log, "the finishing step must be retried"


def test_artifact_write_failure_fails_the_job_and_nothing_provisional_looks_final(
    stack: FaultStack, job_body: dict[str, Any], reference: np.ndarray
) -> None:
    stack.arm("artifact_write", "enospc", after=2)  # the third unit's artifact hits a full disk
    try:
        job = stack.wait_for(stack.submit(job_body))
    finally:
        stack.disarm("artifact_write")
    assert job["state"] == JobState.FAILED, job
    assert "cannot write its artifact" in job["error"] and "No space left on device" in job["error"]
    assert job["summary"] is None
    assert job["scores"]["provisional"] is True  # from two units, and labelled so
    served = stack.client.get("/scores", params={"job_id": job["id"], "top": 5}).json()
    assert served["provisional"] is True
    latest = stack.client.get("/scores", params={"top": 5}).json()
    assert latest["job_id"] != job["id"], "a failed job's scores must never pass for the latest final ones"
    artifacts = Path(stack.env["MEMAUDIT_DATA_DIR"]) / "artifacts" / job["id"]
    units = sorted(path.name for path in artifacts.iterdir() if path.name.startswith("unit-"))
    assert units == ["unit-0000.npz", "unit-0001.npz"]
    assert not [path.name for path in artifacts.iterdir() if ".tmp" in path.name]  # no partial file left


def _uvicorn(stack: FaultStack, port: int) -> subprocess.Popen[bytes]:
    log = (stack.tmp / f"api-{port}-{time.monotonic_ns()}.log").open("wb")
    command = [sys.executable, "-m", "uvicorn", "app.api.main:create_app", "--factory", "--host", "127.0.0.1",
               "--port", str(port)]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **stack.env}, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_http(f"http://127.0.0.1:{port}/health")
    return process


def test_api_restart_mid_job_changes_nothing(
    stack: FaultStack, job_body: dict[str, Any], reference: np.ndarray
) -> None:
    port = free_port()
    api = _uvicorn(stack, port)
    try:
        stack.arm("unit_epoch", "pause", after=1)
        created = httpx.post(f"http://127.0.0.1:{port}/jobs", json=job_body, timeout=30)
        assert created.status_code == 202, created.text
        stack.wait_reached("unit_epoch")
        os.killpg(api.pid, signal.SIGKILL)
        api.wait(timeout=10)
        api = _uvicorn(stack, port)
        stack.disarm("unit_epoch")
        job_id = created.json()["id"]
        shown = httpx.get(f"http://127.0.0.1:{port}/jobs/{job_id}", timeout=30).json()
        assert shown["state"] in (JobState.RUNNING, JobState.SUCCEEDED), shown
        _assert_same_as_reference(stack, job_id, reference)
    finally:
        os.killpg(api.pid, signal.SIGKILL)
        api.wait(timeout=10)
