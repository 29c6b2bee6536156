"""memaudit_client behaviour that needs precise server answers: polling backoff, transient errors,
error messages, partial downloads. The server side is httpx.MockTransport (the real server is
exercised end to end in test_remote_cli.py)."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import httpx
import pytest
from memaudit_client import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    JobState,
    MemauditClient,
    MemauditError,
    WaitTimeout,
)

from app import lifecycle


def _client(handler: httpx.MockTransport) -> MemauditClient:
    return MemauditClient("http://memaudit.test", api_key="k", transport=handler)


def test_wait_backs_off_and_rides_out_transient_errors() -> None:
    answers = [503, 502, JobState.RUNNING, JobState.RUNNING, JobState.RUNNING, JobState.SUCCEEDED]
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer k"
        seen.append(time.monotonic())
        answer = answers.pop(0)
        if isinstance(answer, int):
            return httpx.Response(answer, json={"detail": "restarting"})
        return httpx.Response(200, json={"id": "j", "state": answer, "progress": {}})

    updates: list[str] = []
    with _client(httpx.MockTransport(handler)) as client:
        job = client.wait("j", timeout=30, poll_interval=0.04, max_interval=0.1,
                          on_update=lambda j: updates.append(j["state"]))
    assert job["state"] == JobState.SUCCEEDED and updates == [JobState.RUNNING] * 3 + [JobState.SUCCEEDED]
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    expected = [0.04, 0.06, 0.09, 0.1, 0.1]  # x1.5 per poll, capped at max_interval
    for gap, want in zip(gaps, expected, strict=True):
        assert want * 0.9 <= gap < want + 0.5, gaps


def test_wait_gives_up_at_the_deadline_and_hard_errors_propagate() -> None:
    def running(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "j", "state": JobState.RUNNING})

    with _client(httpx.MockTransport(running)) as client:
        started = time.monotonic()
        with pytest.raises(WaitTimeout, match="still running"):
            client.wait("j", timeout=0.3, poll_interval=0.05)
        assert 0.25 < time.monotonic() - started < 2

    def missing(_request: httpx.Request) -> httpx.Response:
        detail = [{"loc": ["job_id"], "msg": "no job 'j'", "type": "notfound"}]
        return httpx.Response(404, json={"detail": detail})

    with _client(httpx.MockTransport(missing)) as client, pytest.raises(MemauditError) as error:
        client.wait("j", timeout=5)
    assert error.value.status_code == 404 and error.value.message == "job_id: no job 'j'"


@pytest.mark.parametrize(("body", "message"), [
    ({"detail": [{"loc": ["body", "audit", "folds"], "msg": "must be >= 2"}]}, "audit.folds: must be >= 2"),
    ({"detail": "Not Found"}, "Not Found"),
    ("<html>bad gateway</html>\n<p>x</p>", "<html>bad gateway</html>"),
])
def test_server_messages_become_one_line(body: object, message: str) -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(500, text=body)
        return httpx.Response(422, content=json.dumps(body), headers={"Content-Type": "application/json"})

    with _client(httpx.MockTransport(handler)) as client, pytest.raises(MemauditError) as error:
        client.get_dataset("d")
    assert error.value.message == message and "\n" not in str(error.value)


def test_failed_download_leaves_no_file(tmp_path: Path) -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": [{"loc": ["job_id"], "msg": "no job"}]})

    with _client(httpx.MockTransport(handler)) as client, pytest.raises(MemauditError):
        client.export_scores("j", tmp_path / "s.csv")
    assert list(tmp_path.iterdir()) == []
    with _client(httpx.MockTransport(handler)) as client, pytest.raises(ValueError):
        client.export_scores("j", tmp_path / "s.xlsx", fmt="xlsx")


def test_the_client_job_states_are_the_servers() -> None:
    """The client keeps its own copy (it cannot import the server): names, values and sets must match."""
    assert [(state.name, state.value) for state in JobState] == [
        (state.name, state.value) for state in lifecycle.JobState
    ]
    assert {str(state) for state in TERMINAL_STATES} == {str(state) for state in lifecycle.JOB_TERMINAL}
    assert {str(state) for state in ACTIVE_STATES} == {str(state) for state in lifecycle.JOB_ACTIVE}
    assert "succeeded" in TERMINAL_STATES and str(JobState.SUCCEEDED) == "succeeded"


def test_confident_scores_follows_every_page_and_keeps_the_confident_rows() -> None:
    pages = {None: ([{"sample_id": 4, "confident": True}, {"sample_id": 2, "confident": False}], "c1"),
             "c1": ([{"sample_id": 7, "confident": False}, {"sample_id": 1, "confident": True}], None)}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/jobs/j/scores" and request.url.params["sort"] == "score_desc"
        items, cursor = pages[request.url.params.get("cursor")]
        return httpx.Response(200, json={"items": items, "next_cursor": cursor})

    with _client(httpx.MockTransport(handler)) as client:
        assert [row["sample_id"] for row in client.confident_scores("j", page_size=2)] == [4, 1]
