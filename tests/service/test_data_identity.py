"""Datasets are cached by content identity, never by their spec: a file replaced under the data root
between two jobs is trained on by the next job (real worker, PostgreSQL, Redis), a job whose file changed
after it was submitted is refused, and the API's sample images follow the same rule."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.lifecycle import JobState
from app.services.data_identity import ImageSetCache, file_identity
from models.imageset import image_set_from_array
from tests.service.conftest import ALICE, bearer
from tests.service.harness import Stack, environment
from tests.service.jobdata import digits_subset, npz_bytes, tiny_job

pytestmark = pytest.mark.service
AS_ALICE = bearer(ALICE)
N = 60


def _run(stack: Stack, dataset: dict[str, str]) -> dict[str, Any]:
    response = stack.client.post("/jobs", json=tiny_job(dataset), headers=AS_ALICE)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = stack.wait_for_state(response.headers["Location"], headers=AS_ALICE)
    assert job["state"] == JobState.SUCCEEDED, job
    return job


def _scores(stack: Stack, job_id: str) -> list[tuple[int, float]]:
    page = stack.client.get(
        f"/jobs/{job_id}/scores", params={"sort": "sample_id", "limit": 1000}, headers=AS_ALICE
    )
    assert page.status_code == 200, page.text
    return [(item["sample_id"], item["score"]) for item in page.json()["items"]]


def _replace(path: Path, images: np.ndarray) -> None:
    before = file_identity(path) if path.exists() else None
    time.sleep(0.02)  # mtime granularity of some filesystems
    np.save(path, images, allow_pickle=False)  # rewritten in place, like a user re-exporting a file
    assert file_identity(path) != before


def test_a_file_replaced_between_two_jobs_is_trained_on_by_the_next_job(pg_stack: Stack) -> None:
    path = pg_stack.data_root / "replaced.npy"
    first, second = digits_subset(N), digits_subset(N, offset=N)
    _replace(path, first)
    job_before = _run(pg_stack, {"path": "replaced.npy"})
    _replace(path, second)  # same shape and count, other pixels: the worker's cache must not serve `first`
    job_after = _run(pg_stack, {"path": "replaced.npy"})
    upload = pg_stack.client.post(
        "/datasets", files={"file": ("second.npz", npz_bytes(second))}, headers=AS_ALICE
    )
    job_reference = _run(pg_stack, {"id": upload.json()["id"]})  # the new content under another identity

    after = _scores(pg_stack, job_after["id"])
    assert after == _scores(pg_stack, job_reference["id"]), (
        "the job after the replacement trained on old data"
    )
    assert after != _scores(pg_stack, job_before["id"])
    # The first job's images are gone from the data root, but the finishing step kept a display copy named
    # by the content the job recorded: each job shows its own images, never the other file's.
    # (A plain .npy with no copy is refused instead: tests/service/test_sample_images.py.)
    for job, content in ((job_before, first), (job_after, second)):
        image = pg_stack.client.get(f"/jobs/{job['id']}/samples/0/image.png", headers=AS_ALICE)
        assert image.status_code == 200
        assert (np.asarray(Image.open(io.BytesIO(image.content))) == content[0]).all()


@pytest.fixture()
def inline(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    """The API in-process on SQLite; the worker's steps are called directly (nothing consumes the broker)."""
    from app.api.main import create_app
    from app.migrate import upgrade_to_head

    database, root = f"sqlite:///{tmp_path / 'memaudit.db'}", tmp_path / "root"
    root.mkdir()
    env = {
        "MEMAUDIT_DATA_DIR": str(tmp_path / "data"),
        "MEMAUDIT_DATA_ROOT": str(root),
        "MEMAUDIT_DATABASE_URL": database,
        "MEMAUDIT_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "MEMAUDIT_API_KEYS": "",
        "MEMAUDIT_WORKER_DEVICE": "cpu",
    }
    with environment(env):
        upgrade_to_head(database)
        with TestClient(create_app()) as client:
            yield client, root


@pytest.mark.parametrize(
    ("replacement", "holds"),
    [
        (digits_subset(N - 10, offset=N), "50 images of [1, 8, 8]"),
        (digits_subset(N, offset=N), "60 images of [1, 8, 8]"),
    ],
    ids=["another-count", "same-shape-other-pixels"],
)
def test_a_job_whose_file_changed_after_it_was_submitted_is_refused(
    inline: tuple[TestClient, Path], replacement: np.ndarray, holds: str
) -> None:
    from workers import runner

    client, root = inline
    _replace(root / "data.npy", digits_subset(N))
    job_id = client.post("/jobs", json=tiny_job({"path": "data.npy"}, epochs=1)).json()["id"]
    runner.plan_job(job_id)
    _replace(root / "data.npy", replacement)  # while the job waits in the queue
    runner.run_unit(job_id, 0)
    job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == JobState.FAILED, job
    assert job["error"].startswith("dataset.path: the file 'data.npy' changed after the job was submitted")
    assert holds in job["error"] and job["scores"]["available"] is False


def test_the_cache_loads_a_key_once_across_threads_and_evicts_the_oldest() -> None:
    cache, loads = ImageSetCache(capacity=2), []
    ready = threading.Barrier(8)

    def load(key: str) -> Any:
        loads.append(key)
        time.sleep(0.05)  # long enough for every thread to ask while the first one loads
        return image_set_from_array(np.zeros((2, 4, 4), np.uint8), name=key)

    def ask() -> None:
        ready.wait()
        cache.get("a", lambda: load("a"))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == ["a"]
    cache.get("b", lambda: load("b"))
    cache.get("a", lambda: load("a"))  # a is now the most recent
    cache.get("c", lambda: load("c"))  # evicts b
    assert cache.keys() == ["a", "c"] and loads == ["a", "b", "c"]
