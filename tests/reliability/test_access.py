"""Tenant isolation, table-driven: every route x {no key, malformed key, another owner's key, own key}
with the exact status expected. Plus: keys kept hashed and compared without early exit, the per-owner
rate limit on job creation (429 + Retry-After), and job creation logged with its owner.

On PostgreSQL with a real worker (alice's job really finishes, so every score route has data).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from app.lifecycle import JobState
from tests.service.conftest import ALICE, API_KEYS, BOB, bearer
from tests.service.harness import Stack, environment
from tests.service.jobdata import digits_subset, npz_bytes, tiny_job

pytestmark = [pytest.mark.service, pytest.mark.timeout(240)]
CALLERS: dict[str, dict[str, str]] = {
    "none": {},
    "malformed": {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
    "other": bearer(BOB),
    "own": bearer(ALICE),
}


@dataclass(frozen=True)
class World:
    dataset_id: str
    job_id: str  # alice's, succeeded
    running_job_id: str  # alice's, long, still active (the cancel route's target)


@pytest.fixture(scope="module")
def world(keyed_stack: Stack) -> World:
    client = keyed_stack.client
    upload = client.post(
        "/datasets", files={"file": ("a.npz", npz_bytes(digits_subset(45), keys=KEYS))}, headers=bearer(ALICE)
    )
    assert upload.status_code == 201, upload.text
    dataset_id = upload.json()["id"]
    held_out_images = npz_bytes(digits_subset(20, offset=600))
    heldout = client.post("/datasets", files={"file": ("h.npz", held_out_images)}, headers=bearer(ALICE))
    assert heldout.status_code == 201, heldout.text
    with_heldout = {**tiny_job({"id": dataset_id}), "heldout": {"id": heldout.json()["id"]}}  # generated too
    created = client.post("/jobs", json=with_heldout, headers=bearer(ALICE))
    assert created.status_code == 202, created.text
    job = keyed_stack.wait_for_state(created.headers["Location"], headers=bearer(ALICE))
    assert job["state"] == JobState.SUCCEEDED, job
    long_job = client.post("/jobs", json=tiny_job({"id": dataset_id}, epochs=500), headers=bearer(ALICE))
    assert long_job.status_code == 202, long_job.text
    return World(dataset_id, job["id"], long_job.json()["id"])


FRESH_UPLOAD = npz_bytes(digits_subset(12, offset=500))
KEYS = np.array([f"digit-{i:03d}" for i in range(45)])

# (method, route template as in OpenAPI, concrete path, {caller: status})
TABLE: list[tuple[str, str, str, dict[str, int]]] = [
    ("GET", "/health", "/health", {"none": 200, "malformed": 200, "other": 200, "own": 200}),
    ("POST", "/datasets", "/datasets", {"none": 401, "malformed": 401, "other": 201, "own": 201}),
    ("GET", "/datasets", "/datasets", {"none": 401, "malformed": 401, "other": 200, "own": 200}),
    (
        "GET",
        "/datasets/{dataset_id}",
        "/datasets/{dataset_id}",
        {"none": 401, "malformed": 401, "other": 404, "own": 200},
    ),
    ("POST", "/jobs", "/jobs", {"none": 401, "malformed": 401, "other": 404, "own": 202}),
    ("GET", "/jobs", "/jobs", {"none": 401, "malformed": 401, "other": 200, "own": 200}),
    ("GET", "/jobs/{job_id}", "/jobs/{job_id}", {"none": 401, "malformed": 401, "other": 404, "own": 200}),
    (
        "POST",
        "/jobs/{job_id}/cancel",
        "/jobs/{running_job_id}/cancel",
        {"none": 401, "malformed": 401, "other": 404, "own": 202},
    ),
    (
        "GET",
        "/scores",
        "/scores?job_id={job_id}&top=5",
        {"none": 401, "malformed": 401, "other": 404, "own": 200},
    ),
    (
        "GET",
        "/jobs/{job_id}/scores",
        "/jobs/{job_id}/scores",
        {"none": 401, "malformed": 401, "other": 404, "own": 200},
    ),
    (
        "GET",
        "/jobs/{job_id}/samples",
        "/jobs/{job_id}/samples?key=digit-003",
        {"none": 401, "malformed": 401, "other": 404, "own": 200},
    ),
    (
        "GET",
        "/jobs/{job_id}/samples/{sample_id}",
        "/jobs/{job_id}/samples/3",
        {"none": 401, "malformed": 401, "other": 404, "own": 200},
    ),
    (
        "GET",
        "/jobs/{job_id}/samples/{sample_id}/image.png",
        "/jobs/{job_id}/samples/3/image.png",
        {"none": 401, "malformed": 401, "other": 404, "own": 200},
    ),
    (
        "GET",
        "/jobs/{job_id}/samples/{sample_id}/neighbours",
        "/jobs/{job_id}/samples/3/neighbours",
        {"none": 401, "malformed": 401, "other": 404, "own": 200},
    ),
    (
        "GET",
        "/jobs/{job_id}/heldout/{index}/image.png",
        "/jobs/{job_id}/heldout/0/image.png",
        {"none": 401, "malformed": 401, "other": 404, "own": 200},
    ),
    (
        "GET",
        "/jobs/{job_id}/generated/{index}/image.png",
        "/jobs/{job_id}/generated/0/image.png",
        {"none": 401, "malformed": 401, "other": 404, "own": 200},
    ),
    (
        "GET",
        "/jobs/{job_id}/provenance",
        "/jobs/{job_id}/provenance",
        {"none": 401, "malformed": 401, "other": 404, "own": 200},
    ),
    (
        "GET",
        "/jobs/{job_id}/scores.csv",
        "/jobs/{job_id}/scores.csv",
        {"none": 401, "malformed": 401, "other": 404, "own": 200},
    ),
    (
        "GET",
        "/jobs/{job_id}/scores.parquet",
        "/jobs/{job_id}/scores.parquet",
        {"none": 401, "malformed": 401, "other": 404, "own": 200},
    ),
    (
        "GET",
        "/jobs/{job_id}/report",
        "/jobs/{job_id}/report",
        {"none": 401, "malformed": 401, "other": 404, "own": 200},
    ),
]


def _request(stack: Stack, world: World, method: str, path: str, caller: str) -> Any:
    url = path.format(dataset_id=world.dataset_id, job_id=world.job_id, running_job_id=world.running_job_id)
    headers = CALLERS[caller]
    if method == "POST" and path == "/datasets":
        return stack.client.post(url, files={"file": ("fresh.npz", FRESH_UPLOAD)}, headers=headers)
    if method == "POST" and path == "/jobs":
        return stack.client.post(url, json=tiny_job({"id": world.dataset_id}), headers=headers)
    return stack.client.request(method, url, headers=headers)


def test_the_table_covers_every_route(keyed_stack: Stack) -> None:
    schema = keyed_stack.client.get("/openapi.json").json()
    routes = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    assert routes == {(method, template) for method, template, _, _ in TABLE}, "add new routes to TABLE"


@pytest.mark.parametrize(
    ("method", "template", "path", "expected"), TABLE, ids=[f"{m} {t}" for m, t, _, _ in TABLE]
)
def test_access_matrix(
    keyed_stack: Stack, world: World, method: str, template: str, path: str, expected: dict[str, int]
) -> None:
    got = {caller: _request(keyed_stack, world, method, path, caller).status_code for caller in CALLERS}
    assert got == expected


def test_lists_never_show_another_owners_rows(keyed_stack: Stack, world: World) -> None:
    as_bob = bearer(BOB)
    bob_jobs = keyed_stack.client.get("/jobs", headers=as_bob).json()["items"]
    bob_datasets = keyed_stack.client.get("/datasets", headers=as_bob).json()["items"]
    assert world.job_id not in {job["id"] for job in bob_jobs}
    assert world.dataset_id not in {dataset["id"] for dataset in bob_datasets}
    assert keyed_stack.client.get("/scores", headers=as_bob).status_code == 404  # no finished job of his


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        "Bearer ",
        "bearer",
        "Token " + ALICE,
        ALICE,
        "Bearer " + ALICE + "x",
        "Bearer " + ALICE.upper(),
    ],
)
def test_malformed_or_wrong_keys_are_401(keyed_stack: Stack, header: str) -> None:
    response = keyed_stack.client.get("/jobs", headers={"Authorization": header})
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_keys_are_stored_hashed_and_work(keyed_stack: Stack) -> None:
    from app.db import ApiKey, session_scope
    from app.services.auth import create_api_key

    with session_scope() as session:
        token = create_api_key(session, "dora", name="ci")
    with session_scope() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.owner == "dora")).one()
        stored = [str(value) for value in (row.key_hash, row.name, row.owner)]
    assert row.key_hash == hashlib.sha256(token.encode()).hexdigest()
    assert all(token not in value for value in stored), "the plaintext key must not be stored"
    assert keyed_stack.client.get("/jobs", headers=bearer(token)).status_code == 200


def test_every_configured_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.services import auth
    from app.settings import Settings

    calls: list[tuple[str, str]] = []
    original = hmac.compare_digest

    def counting(a: str, b: str) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    settings = Settings(api_keys=API_KEYS + ",carol:c-key,dave:d-key")
    for token in (ALICE, "not-a-key"):
        calls.clear()
        owner = auth._owner_from_settings(hashlib.sha256(token.encode()).hexdigest(), settings)
        assert owner == ("alice" if token == ALICE else None)
        assert len(calls) == 4, "no early exit: the time taken must not depend on which key matched"


def test_job_creation_is_rate_limited_per_owner_with_retry_after(keyed_stack: Stack, world: World) -> None:
    from app.db import Job, session_scope

    as_carol = bearer("carol-key")
    env = {
        "MEMAUDIT_API_KEYS": API_KEYS + ",carol:carol-key",
        "MEMAUDIT_JOB_RATE_LIMIT": "2",
        "MEMAUDIT_JOB_RATE_WINDOW_S": "60",
    }
    body = tiny_job({"builtin": "digits"}, epochs=500)
    with environment(env):
        first = keyed_stack.client.post("/jobs", json=body, headers={**as_carol, "Idempotency-Key": "k1"})
        second = keyed_stack.client.post("/jobs", json=body, headers=as_carol)
        assert (first.status_code, second.status_code) == (202, 202)
        for job in (first, second):
            keyed_stack.client.post(f"/jobs/{job.json()['id']}/cancel", headers=as_carol)
        third = keyed_stack.client.post("/jobs", json=body, headers=as_carol)
        assert third.status_code == 429, third.text
        assert 1 <= int(third.headers["Retry-After"]) <= 60
        assert "at most 2 new jobs per 60 s" in third.json()["detail"][0]["msg"]
        replay = keyed_stack.client.post("/jobs", json=body, headers={**as_carol, "Idempotency-Key": "k1"})
        assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]  # replays are free
        bobs = keyed_stack.client.post("/jobs", json=body, headers=bearer(BOB))  # the limit is per owner
        assert bobs.status_code == 202
        keyed_stack.client.post(f"/jobs/{bobs.json()['id']}/cancel", headers=bearer(BOB))
        with session_scope() as session:
            assert session.scalar(select(func.count()).where(Job.owner == "carol")) == 2


def test_job_creation_is_logged_with_the_owner(
    keyed_stack: Stack, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="app.api.routes.jobs"):
        response = keyed_stack.client.post(
            "/jobs", json=tiny_job({"id": world.dataset_id}), headers=bearer(ALICE)
        )
    assert response.status_code == 202
    assert f"job {response.json()['id']} created by owner alice" in caplog.text
    keyed_stack.client.post(f"/jobs/{response.json()['id']}/cancel", headers=bearer(ALICE))


def test_scores_of_own_job_are_real(keyed_stack: Stack, world: World) -> None:
    top = keyed_stack.client.get("/scores", params={"job_id": world.job_id, "top": 45}, headers=bearer(ALICE))
    scores = np.array([item["score"] for item in top.json()["items"]], dtype=float)
    assert len(scores) == 45 and np.all(np.diff(scores) <= 0)


def test_active_jobs_are_limited_per_owner_with_retry_after(keyed_stack: Stack, world: World) -> None:
    from app.db import Job, session_scope

    as_erin = bearer("erin-key")
    env = {"MEMAUDIT_API_KEYS": API_KEYS + ",erin:erin-key", "MEMAUDIT_MAX_ACTIVE_JOBS": "2",
           "MEMAUDIT_JOB_RATE_LIMIT": "0"}  # fmt: skip
    body = tiny_job({"builtin": "digits"}, epochs=500)
    with environment(env):
        first, second = (keyed_stack.client.post("/jobs", json=body, headers=as_erin) for _ in range(2))
        assert (first.status_code, second.status_code) == (202, 202)
        third = keyed_stack.client.post("/jobs", json=body, headers=as_erin)
        assert third.status_code == 429, third.text
        assert int(third.headers["Retry-After"]) >= 1
        message = third.json()["detail"][0]["msg"]
        assert "at most 2 active jobs per owner (MEMAUDIT_MAX_ACTIVE_JOBS)" in message
        with session_scope() as session:
            assert session.scalar(select(func.count()).where(Job.owner == "erin")) == 2  # nothing written
        bobs_job = keyed_stack.client.post("/jobs", json=body, headers=bearer(BOB))  # the limit is per owner
        assert bobs_job.status_code == 202
        keyed_stack.client.post(f"/jobs/{first.json()['id']}/cancel", headers=as_erin)
        keyed_stack.wait_for_state(first.headers["Location"], states=("cancelled",), headers=as_erin)
        fourth = keyed_stack.client.post("/jobs", json=body, headers=as_erin)  # a slot freed
        assert fourth.status_code == 202, fourth.text
        for job in (second, fourth):
            keyed_stack.client.post(f"/jobs/{job.json()['id']}/cancel", headers=as_erin)
        keyed_stack.client.post(f"/jobs/{bobs_job.json()['id']}/cancel", headers=bearer(BOB))
