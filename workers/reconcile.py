"""Re-enqueue work the broker may have lost. The DB is the source of truth, the broker is not.

Called when a worker starts (and usable periodically): queued jobs get their plan_job again,
unfinished units whose heartbeat is stale (or that never started) get their run_unit again, and
jobs whose units are all done get finish_job. Every task is idempotent, so a duplicate only costs
the time of a redundant check (or, for a unit that was in fact running, a redundant run whose
artifact is identical).
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select

from app.db import Job, Unit, session_scope, utcnow
from workers.celery_app import FINISH_JOB, PLAN_JOB, RUN_UNIT, enqueue

log = logging.getLogger(__name__)
STALE_AFTER = dt.timedelta(minutes=2)


def _stale(unit: Unit, now: dt.datetime) -> bool:
    if unit.state == "pending" or unit.heartbeat_at is None:
        return True
    beat = unit.heartbeat_at if unit.heartbeat_at.tzinfo else unit.heartbeat_at.replace(tzinfo=dt.UTC)
    return now - beat > STALE_AFTER


def reconcile() -> int:
    """Enqueue what unfinished jobs need; returns how many tasks were sent."""
    sends: list[tuple[str, tuple[object, ...]]] = []
    now = utcnow()
    with session_scope() as session:
        jobs = session.scalars(select(Job).where(Job.state.in_(("queued", "running", "cancelling")))).all()
        for job in jobs:
            units = session.scalars(select(Unit).where(Unit.job_id == job.id)).all()
            if not units:
                sends.append((PLAN_JOB, (job.id,)))
            elif all(unit.state == "done" for unit in units):
                sends.append((FINISH_JOB, (job.id,)))
            else:
                stale = [u for u in units if u.state != "done" and _stale(u, now)]
                sends += [(RUN_UNIT, (job.id, u.index)) for u in stale]
    for name, args in sends:
        enqueue(name, *args)
    if sends:
        log.info("reconcile: re-enqueued %d task(s)", len(sends))
    return len(sends)
