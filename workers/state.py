"""Job-state transitions written by workers, each a guarded UPDATE so that two workers (or a
worker and a cancel request) can never move a job backwards out of a terminal state."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, Result, func, select, update
from sqlalchemy.orm import Session

from app.db import Job, Unit, utcnow
from app.webhooks import notify_on_commit

TERMINAL_STATES = ("succeeded", "failed", "cancelled")
MAX_ERROR_CHARS = 2000


def _changed(result: Result[Any]) -> bool:
    """Whether a guarded UPDATE moved the job (an UPDATE's result is a cursor result)."""
    return cast(CursorResult[Any], result).rowcount == 1


def mark_running(session: Session, job_id: str) -> None:
    now = utcnow()
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.state == "queued").values(state="running", started_at=now,
                                                                          updated_at=now)
    )
    notify_on_commit(session, job_id, "queued", changed=_changed(result))


def mark_failed(session: Session, job_id: str, message: str) -> None:
    now = utcnow()
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.state.not_in(TERMINAL_STATES))
        .values(state="failed", error=message[:MAX_ERROR_CHARS], finished_at=now, updated_at=now)
    )
    notify_on_commit(session, job_id, changed=_changed(result))
    session.commit()


def mark_cancelled(session: Session, job_id: str) -> None:
    now = utcnow()
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.state.in_(("queued", "running", "cancelling")))
        .values(state="cancelled", finished_at=now, updated_at=now)
    )
    notify_on_commit(session, job_id, changed=_changed(result))
    session.commit()


def count_done_units(session: Session, job_id: str) -> int:
    return int(session.scalar(select(func.count()).where(Unit.job_id == job_id, Unit.state == "done")) or 0)


def cancel_requested(session: Session, job_id: str) -> bool:
    state = session.scalar(select(Job.state).where(Job.id == job_id))
    return state is None or state in ("cancelling", "cancelled", "failed")
