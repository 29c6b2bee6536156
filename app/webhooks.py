"""Signed webhooks for job state changes, delivered by a background thread (never blocks a worker).

Each delivery is an HTTP POST of a JSON body with headers

    X-Memaudit-Event: job.state_changed
    X-Memaudit-Delivery: <uuid, the same on every retry of one event>
    X-Memaudit-Timestamp: <unix seconds, also inside the signed body as "timestamp">
    X-Memaudit-Signature: sha256=<hex HMAC-SHA256 of the raw body with MEMAUDIT_WEBHOOK_SECRET>

A 2xx answer ends the delivery; connection errors, 408, 429 and 5xx are retried with exponential
backoff (1 s, 2 s, 4 s, ... capped) up to ``max_attempts``; other 4xx mean the receiver refuses
and are not retried. Redirects are not followed (a 3xx is a failed delivery). Delivery is best
effort and in memory: pending retries die with the process. docs/integration.md shows how a
receiver verifies a delivery.

Every attempt resolves the URL's host, checks each address and sends to the checked one
(app.webhook_targets): a host that resolves to a loopback, private, link-local or other internal
address is never contacted unless ``allow_private`` (MEMAUDIT_WEBHOOK_ALLOW_PRIVATE).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy.orm import Session

from app.db import Job, on_commit
from app.webhook_targets import BlockedTarget, Resolver, Target, pin, resolve_host

log = logging.getLogger(__name__)

EVENT_JOB_STATE = "job.state_changed"
SIGNATURE_HEADER = "X-Memaudit-Signature"
TIMESTAMP_HEADER = "X-Memaudit-Timestamp"
RETRYABLE_STATUS = frozenset({408, 429})


def sign(secret: str, body: bytes) -> str:
    """The signature header value for ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature_header: str) -> bool:
    """What a receiver does: recompute over the raw bytes it received and compare in constant time."""
    return hmac.compare_digest(sign(secret, body), signature_header)


def validate_url(url: str) -> str:
    """The URL's shape (the request model also holds it to app.services.patterns.WEBHOOK_URL)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port outside 0..65535
    except ValueError:
        raise ValueError("webhook url must be an absolute http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("webhook url must be an absolute http(s) URL")
    return url


def job_event_body(job: Mapping[str, Any], previous_state: str | None, timestamp: int) -> dict[str, Any]:
    """The JSON document POSTed for a job state change."""
    return {
        "event": EVENT_JOB_STATE,
        "timestamp": timestamp,
        "job": {
            "id": job["id"],
            "state": job["state"],
            "previous_state": previous_state,
            "kind": job.get("kind"),
            "progress": job.get("progress"),
            "summary": job.get("summary"),
            "error": job.get("error"),
        },
    }


@dataclass(order=True)
class _Delivery:
    due: float
    order: int
    url: str = field(compare=False)
    body: bytes = field(compare=False)
    headers: dict[str, str] = field(compare=False)
    attempts: int = field(default=0, compare=False)


@dataclass
class DeliveryStats:
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    attempts: int = 0
    blocked: int = 0  # deliveries refused because the host resolved to an internal address


class WebhookDispatcher:
    """A bounded schedule of deliveries served by one daemon thread; ``submit`` never waits on I/O."""

    def __init__(
        self,
        secret: str,
        *,
        max_attempts: int = 6,
        base_delay_s: float = 1.0,
        max_delay_s: float = 300.0,
        max_pending: int = 1000,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        allow_private: bool = False,
        resolver: Resolver = resolve_host,
    ) -> None:
        self.secret = secret
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.max_pending = max_pending
        self.allow_private = allow_private
        self.resolver = resolver
        self.stats = DeliveryStats()
        # Requests go to a pinned IP; a pooled connection must never carry another host's request
        # (a TLS session made for one name would serve another at the same address): no keep-alive.
        self._http = httpx.Client(timeout=timeout_s, transport=transport, follow_redirects=False,
                                  limits=httpx.Limits(max_keepalive_connections=0))
        self._schedule: list[_Delivery] = []
        self._in_flight = 0
        self._counter = itertools.count()
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="memaudit-webhooks", daemon=True)
        self._thread.start()

    def submit(self, url: str, event: str, payload: Mapping[str, Any]) -> bool:
        """Queue one event; False (and a log line) when the queue is full or the dispatcher closed."""
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "memaudit-webhooks/1",
            "X-Memaudit-Event": event,
            "X-Memaudit-Delivery": str(uuid.uuid4()),
            TIMESTAMP_HEADER: str(payload.get("timestamp", int(time.time()))),
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        with self._condition:
            if self._closed or len(self._schedule) + self._in_flight >= self.max_pending:
                self.stats.dropped += 1
                log.warning("webhook queue full or closed; dropped %s for %s", event, url)
                return False
            delivery = _Delivery(time.monotonic(), next(self._counter), url, body, headers)
            heapq.heappush(self._schedule, delivery)
            self._condition.notify()
        return True

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until nothing is pending (tests, graceful shutdown); True if drained in time."""
        deadline = time.monotonic() + timeout_s
        with self._condition:
            while self._schedule or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        self.flush(timeout_s)
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join(timeout_s)
        self._http.close()

    def _next_due(self) -> _Delivery | None:
        with self._condition:
            while not self._closed:
                if self._schedule:
                    wait = self._schedule[0].due - time.monotonic()
                    if wait <= 0:
                        self._in_flight += 1
                        return heapq.heappop(self._schedule)
                    self._condition.wait(wait)
                else:
                    self._condition.wait()
            return None

    def _serve(self) -> None:
        while (delivery := self._next_due()) is not None:
            retry = self._attempt(delivery)
            with self._condition:
                self._in_flight -= 1
                if retry:
                    heapq.heappush(self._schedule, delivery)
                self._condition.notify_all()

    def _post(self, target: Target, delivery: _Delivery) -> tuple[int, str]:
        """One POST to the pinned address; (HTTP status or 0, reason)."""
        headers = {**delivery.headers, "Host": target.host_header}
        extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else None
        try:
            response = self._http.post(target.url, content=delivery.body, headers=headers,
                                       extensions=extensions)  # fmt: skip
        except httpx.HTTPError as error:
            return 0, f"{type(error).__name__}: {error}"
        return response.status_code, f"HTTP {response.status_code}"

    def _attempt(self, delivery: _Delivery) -> bool:
        """POST once; returns True when the delivery should be tried again later."""
        delivery.attempts += 1
        self.stats.attempts += 1
        try:
            target = pin(delivery.url, allow_private=self.allow_private, resolver=self.resolver)
        except BlockedTarget as error:  # checked again at every attempt: the DNS answer may have changed
            self.stats.blocked += 1
            self.stats.failed += 1
            log.warning("webhook to %s blocked: %s", delivery.url, error)
            return False
        except (OSError, UnicodeError, ValueError) as error:
            status, reason = 0, f"cannot resolve: {error}"
        else:
            status, reason = self._post(target, delivery)
            if 200 <= status < 300:
                self.stats.delivered += 1
                return False
        retryable = status == 0 or status >= 500 or status in RETRYABLE_STATUS
        if not retryable or delivery.attempts >= self.max_attempts:
            self.stats.failed += 1
            log.warning("webhook to %s failed after %d attempts (%s)", delivery.url, delivery.attempts,
                        reason)
            return False
        delay = min(self.base_delay_s * 2 ** (delivery.attempts - 1), self.max_delay_s)
        delivery.due = time.monotonic() + delay
        return True


_dispatcher: tuple[int, WebhookDispatcher] | None = None
_dispatcher_lock = threading.Lock()


def get_dispatcher() -> WebhookDispatcher:
    """The process's dispatcher, built on first use (and again in a forked child: threads do not fork)."""
    global _dispatcher
    from app.settings import get_settings

    with _dispatcher_lock:
        if _dispatcher is None or _dispatcher[0] != os.getpid():
            settings = get_settings()
            _dispatcher = (
                os.getpid(),
                WebhookDispatcher(settings.webhook_secret, max_attempts=settings.webhook_max_attempts,
                                  allow_private=settings.webhook_allow_private),
            )
        return _dispatcher[1]


def notify_job_state(url: str | None, job: Mapping[str, Any], previous_state: str | None) -> bool:
    """Queue a job.state_changed delivery if the job named a webhook URL; returns whether one was queued."""
    if not url or job.get("state") == previous_state:
        return False
    body = job_event_body(job, previous_state, int(time.time()))
    return get_dispatcher().submit(url, EVENT_JOB_STATE, body)


def notify_on_commit(session: Session, job_id: str, previous_state: str | None = None,
                     *, changed: bool = True) -> None:
    """Queue the job's state-change webhook for when ``session`` commits (never if it rolls back).

    Call right after a state transition, inside its transaction: the job row is read now (so it sees
    the new state), the delivery is queued only once the transition is durable.
    """
    if not changed:
        return
    job = session.get(Job, job_id)
    url = (job.spec or {}).get("webhook_url") if job is not None else None
    if job is None or not url:
        return
    snapshot = {"id": job.id, "state": str(job.state), "kind": job.kind, "progress": job.progress_document(),
                "summary": job.summary, "error": job.error}

    def _send() -> None:
        try:
            notify_job_state(str(url), snapshot, previous_state)
        except Exception:  # a webhook problem must never fail the transition that triggered it
            log.exception("could not queue the webhook for job %s", job_id)

    on_commit(session, _send)
