"""Re-enqueue work the broker may have lost. The DB is the source of truth, the broker is not.

Every worker runs reconcile() when it starts and then every ``reconcile_interval_s`` (a daemon
thread in the worker's main process). It sends:

- run_unit for a *running* unit whose heartbeat is older than ``stale_after_s`` (its worker died:
  the heartbeat thread of a live worker stamps it every ``heartbeat_interval_s``);
- when no unit anywhere is running with a fresh heartbeat (the workers are idle, so a queue that
  still held messages would be draining): run_unit for pending units, plan_job for queued jobs without
  units, finish_job for jobs whose units are all done, each untouched for ``stale_after_s``.

Each send is claimed first by a guarded UPDATE of the row's timestamp, so two reconcilers (two
workers) send it once, and the same work is not re-sent before another ``stale_after_s``. Every task
is idempotent, so a duplicate costs only a redundant check (or, for a unit that was in fact still
running, a redundant run whose artifact is identical).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import QueryableAttribute, Session

from app.db import Job, Unit, session_scope, utcnow
from app.settings import get_settings
from workers.celery_app import FINISH_JOB, PLAN_JOB, RUN_UNIT, enqueue

log = logging.getLogger(__name__)
ACTIVE = ("queued", "running", "cancelling")
Send = tuple[str, tuple[object, ...]]


def _aware(moment: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; they were stored in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _older(moment: dt.datetime | None, cutoff: dt.datetime) -> bool:
    return moment is None or _aware(moment) < cutoff


def _same(column: QueryableAttribute[Any], value: dt.datetime | None) -> ColumnElement[bool]:
    return column.is_(None) if value is None else column == value


def _claim_unit(session: Session, unit: Unit, now: dt.datetime) -> bool:
    """Stamp the unit so no other reconciler re-sends it; False when another one did first."""
    result = session.execute(
        update(Unit).where(Unit.id == unit.id, _same(Unit.heartbeat_at, unit.heartbeat_at))
        .values(heartbeat_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _claim_job(session: Session, job: Job, now: dt.datetime) -> bool:
    result = session.execute(
        update(Job).where(Job.id == job.id, _same(Job.updated_at, job.updated_at)).values(updated_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _workers_busy(session: Session, cutoff: dt.datetime) -> bool:
    beats = session.scalars(select(Unit.heartbeat_at).where(Unit.state == "running")).all()
    return any(not _older(beat, cutoff) for beat in beats)


def _unit_sends(session: Session, job: Job, units: Sequence[Unit], cutoff: dt.datetime, busy: bool,
                now: dt.datetime) -> list[Send]:
    sends: list[Send] = []
    for unit in units:
        if unit.state == "done":
            continue
        last_touch = unit.heartbeat_at or unit.started_at or job.updated_at
        orphaned = unit.state == "running" and _older(unit.heartbeat_at, cutoff)
        waiting = unit.state != "running" and not busy and _older(last_touch, cutoff)
        if (orphaned or waiting) and _claim_unit(session, unit, now):
            sends.append((RUN_UNIT, (job.id, unit.index)))
    return sends


def _job_sends(session: Session, job: Job, cutoff: dt.datetime, busy: bool, now: dt.datetime) -> list[Send]:
    units = session.scalars(select(Unit).where(Unit.job_id == job.id).order_by(Unit.index)).all()
    if units and not all(unit.state == "done" for unit in units):
        return _unit_sends(session, job, units, cutoff, busy, now)
    if busy or not _older(job.updated_at, cutoff) or not _claim_job(session, job, now):
        return []
    return [(FINISH_JOB, (job.id,))] if units else [(PLAN_JOB, (job.id,))]


def reconcile() -> int:
    """Enqueue what unfinished jobs need; returns how many tasks were sent."""
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=get_settings().stale_after_s)
    sends: list[Send] = []
    with session_scope() as session:
        busy = _workers_busy(session, cutoff)
        for job in session.scalars(select(Job).where(Job.state.in_(ACTIVE))).all():
            sends += _job_sends(session, job, cutoff, busy, now)
    for name, args in sends:  # after the commit: a task never reads a claim that is not there yet
        enqueue(name, *args)
    if sends:
        log.info("reconcile: re-enqueued %d task(s): %s", len(sends), sends)
    return len(sends)


def _loop(stop: threading.Event, interval_s: float) -> None:
    while not stop.wait(interval_s):
        try:
            reconcile()
        except Exception:  # the DB or broker is down right now; the next round tries again
            log.warning("periodic reconcile failed", exc_info=True)


def start_periodic(interval_s: float) -> threading.Event:
    """Reconcile every ``interval_s`` in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(target=_loop, args=(stop, interval_s), name="memaudit-reconciler", daemon=True).start()
    return stop
