"""The named job transitions (start, request cancel, cancel, fail, succeed), used by the API and the
workers alike. Each is one :func:`app.lifecycle.guarded_update` plus the state-change webhook, which is
queued for the commit of the same transaction (never sent for a transition that did not apply or that
rolled back). None of them commits: the caller's transaction decides.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from app.db import Job, utcnow
from app.lifecycle import JOB_ACTIVE, JobState, guarded_update
from app.webhooks import notify_on_commit

MAX_ERROR_CHARS = 2000


def move_job(
    session: Session,
    job_id: str,
    to: JobState,
    *,
    when: frozenset[JobState] | set[JobState],
    where: tuple[ColumnElement[bool], ...] = (),
    **values: Any,
) -> JobState | None:
    """Move the job to ``to`` if it is in one of ``when``; returns the state it left (None: no move).

    Several source states are tried one guarded UPDATE each, so the state it left is known exactly.
    """
    now = utcnow()
    values.setdefault("updated_at", now)
    if to in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        values.setdefault("finished_at", now)
    for source in sorted(when):
        if guarded_update(session, Job, job_id, when={source}, to=to, where=where, **values):
            notify_on_commit(session, job_id, str(source))
            return source
    return None


def start_job(session: Session, job_id: str) -> bool:
    """queued -> running, when its first unit is claimed."""
    now = utcnow()
    return move_job(session, job_id, JobState.RUNNING, when={JobState.QUEUED}, started_at=now) is not None


def request_cancel(session: Session, job_id: str) -> JobState | None:
    """The API's cancel: queued -> cancelled at once, running -> cancelling (workers stop between epochs).

    Returns the new state, or None when the job was not queued or running (already cancelling or
    finished: the caller reads which).
    """
    if move_job(session, job_id, JobState.CANCELLED, when={JobState.QUEUED}) is not None:
        return JobState.CANCELLED
    if move_job(session, job_id, JobState.CANCELLING, when={JobState.RUNNING}) is not None:
        return JobState.CANCELLING
    return None


def cancel_job(session: Session, job_id: str) -> bool:
    """A worker honouring a cancel request: cancelling (or queued) -> cancelled."""
    when = {JobState.QUEUED, JobState.CANCELLING}
    return move_job(session, job_id, JobState.CANCELLED, when=when) is not None


def fail_job(session: Session, job_id: str, message: str) -> bool:
    """Any active state -> failed, with the reason."""
    return (
        move_job(session, job_id, JobState.FAILED, when=JOB_ACTIVE, error=message[:MAX_ERROR_CHARS])
        is not None
    )


def job_state(session: Session, job_id: str) -> JobState | None:
    """The job's state as stored now (not the session's cached copy of the row)."""
    return session.scalar(select(Job.state).where(Job.id == job_id))
