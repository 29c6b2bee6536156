"""Webhooks against a real HTTP receiver on 127.0.0.1: signature, retries with backoff, no blocking.

The receiver is on loopback, which webhooks may reach only with allow_private (the tests of that rule
are in tests/deploy/test_webhook_targets.py)."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.lifecycle import JobState
from app.webhooks import (
    EVENT_JOB_STATE,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookDispatcher,
    job_event_body,
    sign,
    validate_url,
    verify,
)
from tests.deploy.receiver import Receiver, running_receiver

SECRET = "test-secret-Ω"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as state:
        yield state


def _payload(state: str = JobState.SUCCEEDED) -> dict[str, Any]:
    job = {"id": "job-1", "state": state, "kind": "vae_audit", "progress": {"units_done": 3},
           "summary": {"q0.95": 1.4}, "error": None}
    return job_event_body(job, JobState.RUNNING, int(time.time()))


def test_delivery_is_signed_over_the_raw_body(receiver: Receiver) -> None:
    dispatcher = WebhookDispatcher(SECRET, allow_private=True, base_delay_s=0.01)
    try:
        assert dispatcher.submit(receiver.url, EVENT_JOB_STATE, _payload())
        assert dispatcher.flush(10)
    finally:
        dispatcher.close()
    assert len(receiver.requests) == 1
    _, headers, body = receiver.requests[0]
    assert headers[SIGNATURE_HEADER] == sign(SECRET, body)
    assert verify(SECRET, body, headers[SIGNATURE_HEADER])
    assert not verify("other-secret", body, headers[SIGNATURE_HEADER])
    tampered = body.replace(str(JobState.SUCCEEDED).encode(), b"failed___")
    assert not verify(SECRET, tampered, headers[SIGNATURE_HEADER])
    document = json.loads(body)
    assert document["event"] == EVENT_JOB_STATE == headers["X-Memaudit-Event"]
    assert document["job"] == {"id": "job-1", "state": JobState.SUCCEEDED, "previous_state": JobState.RUNNING,
                               "kind": "vae_audit", "progress": {"units_done": 3},
                               "summary": {"q0.95": 1.4}, "error": None}
    assert int(headers[TIMESTAMP_HEADER]) == document["timestamp"]
    assert abs(document["timestamp"] - time.time()) < 60


def test_failures_are_retried_with_exponential_backoff(receiver: Receiver) -> None:
    receiver.statuses = [500, 503, 429]
    dispatcher = WebhookDispatcher(SECRET, allow_private=True, base_delay_s=0.1, max_attempts=6)
    try:
        dispatcher.submit(receiver.url, EVENT_JOB_STATE, _payload())
        assert dispatcher.flush(20)
    finally:
        dispatcher.close()
    assert len(receiver.requests) == 4
    assert dispatcher.stats.delivered == 1 and dispatcher.stats.failed == 0
    times = [t for t, _, _ in receiver.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, expected in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert expected * 0.9 <= gap < expected + 1.0, gaps
    deliveries = {headers["X-Memaudit-Delivery"] for _, headers, _ in receiver.requests}
    bodies = {body for _, _, body in receiver.requests}
    assert len(deliveries) == 1 and len(bodies) == 1, "a retry must resend the same event"


def test_gives_up_after_max_attempts_and_on_client_errors(receiver: Receiver) -> None:
    receiver.statuses = [500] * 10
    dispatcher = WebhookDispatcher(SECRET, allow_private=True, base_delay_s=0.01, max_attempts=3)
    try:
        dispatcher.submit(receiver.url, EVENT_JOB_STATE, _payload())
        assert dispatcher.flush(10)
        assert len(receiver.requests) == 3 and dispatcher.stats.failed == 1
        receiver.statuses = [404]
        dispatcher.submit(receiver.url, EVENT_JOB_STATE, _payload())
        assert dispatcher.flush(10)
        assert len(receiver.requests) == 4 and dispatcher.stats.failed == 2
    finally:
        dispatcher.close()


def test_unreachable_receiver_is_retried_then_dropped() -> None:
    dispatcher = WebhookDispatcher(SECRET, allow_private=True, base_delay_s=0.01, max_attempts=2,
                                   timeout_s=1.0)
    try:
        dispatcher.submit("http://127.0.0.1:9/closed-port", EVENT_JOB_STATE, _payload())
        assert dispatcher.flush(10)
    finally:
        dispatcher.close()
    assert dispatcher.stats.attempts == 2 and dispatcher.stats.failed == 1


def test_submit_never_blocks_and_the_queue_is_bounded(receiver: Receiver) -> None:
    receiver.delay_s = 0.5  # a slow receiver must not slow the caller (a worker between epochs)
    dispatcher = WebhookDispatcher(SECRET, allow_private=True, max_pending=3)
    try:
        started = time.perf_counter()
        accepted = [dispatcher.submit(receiver.url, EVENT_JOB_STATE, _payload()) for _ in range(6)]
        elapsed = time.perf_counter() - started
        assert elapsed < 0.2, f"submit blocked for {elapsed:.3f}s"
        assert accepted.count(True) == 3 and dispatcher.stats.dropped == 3
        assert dispatcher.flush(10)
    finally:
        dispatcher.close()
    assert len(receiver.requests) == 3


def test_unsigned_when_no_secret(receiver: Receiver) -> None:
    dispatcher = WebhookDispatcher("", allow_private=True)
    try:
        dispatcher.submit(receiver.url, EVENT_JOB_STATE, _payload())
        assert dispatcher.flush(10)
    finally:
        dispatcher.close()
    assert SIGNATURE_HEADER not in receiver.requests[0][1]


@pytest.mark.parametrize("url", ["ftp://x/y", "/relative", "http://", "javascript:alert(1)"])
def test_only_absolute_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(ValueError):
        validate_url(url)
