"""Job states as the server reports them. A copy of the server's ``app.lifecycle.JobState`` (this
distribution installs without the server); tests/deploy/test_client_unit.py checks the two are equal."""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):  # noqa: UP042 -- not StrEnum: the client supports Python 3.10
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING})
TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
