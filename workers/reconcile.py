"""Re-enqueue work the broker may have lost. The DB is the source of truth, the broker is not.

Every worker runs reconcile() when it starts and then every ``reconcile_interval_s`` (a daemon
thread in the worker's main process). In one transaction it:

- takes back a *running* unit whose heartbeat is older than ``stale_after_s`` (its worker died: a live
  worker's heartbeat thread stamps it every ``heartbeat_interval_s``): running -> pending, and re-sends it;
- when no unit anywhere is running with a fresh heartbeat (the workers are idle, so a queue that still
  held messages would be draining): re-sends pending units, plan steps of queued jobs without units and
  finishing steps of jobs whose units are all done or skipped (and whose finishing step has no live
  heartbeat),
  each untouched for ``stale_after_s``.

Candidates are read with ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL: a second reconciler
running at the same moment skips the rows the first one is claiming instead of waiting for them, and
never sees them as still stale. Each claim is a guarded UPDATE of the row's timestamp (compared with the
value read), so on SQLite, which has no row locks, two reconcilers still send each task once. Tasks are
sent after the commit (app.tasks.enqueue_on_commit); every task is idempotent, so a duplicate costs
only a redundant check.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.orm import QueryableAttribute, Session

from app.db import Job, Unit, session_scope, utcnow
from app.lifecycle import JOB_ACTIVE, UNIT_COMPLETE, JobState, UnitState, guarded_update
from app.settings import get_settings
from app.tasks import FINISH_JOB, PLAN_JOB, RUN_UNIT, enqueue_on_commit, pending_tasks

log = logging.getLogger(__name__)


def _aware(moment: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; they were stored in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _older(moment: dt.datetime | None, cutoff: dt.datetime) -> bool:
    return moment is None or _aware(moment) < cutoff


def _same(column: QueryableAttribute[Any], value: object) -> ColumnElement[bool]:
    return column.is_(None) if value is None else column == value


def _workers_busy(session: Session, cutoff: dt.datetime) -> bool:
    beats = session.scalars(select(Unit.heartbeat_at).where(Unit.state == UnitState.RUNNING)).all()
    return any(not _older(beat, cutoff) for beat in beats)


def _unit_candidates(session: Session, cutoff: dt.datetime, busy: bool) -> list[tuple[Unit, dt.datetime]]:
    """Unfinished units of active jobs that may need a send, locked (PostgreSQL), with job.updated_at."""
    stale_beat = or_(Unit.heartbeat_at.is_(None), Unit.heartbeat_at < cutoff)
    wanted = and_(Unit.state == UnitState.RUNNING, stale_beat)
    if not busy:
        wanted = or_(wanted, Unit.state == UnitState.PENDING)
    query = (
        select(Unit, Job.updated_at)
        .join(Job, Job.id == Unit.job_id)
        .where(Job.state.in_([str(state) for state in JOB_ACTIVE]), wanted)
        .order_by(Unit.job_id, Unit.index)
        .with_for_update(skip_locked=True, of=Unit)
    )
    return [(unit, updated_at) for unit, updated_at in session.execute(query).all()]


def _unit_sends(session: Session, cutoff: dt.datetime, busy: bool, now: dt.datetime) -> None:
    for unit, job_updated_at in _unit_candidates(session, cutoff, busy):
        seen = (_same(Unit.heartbeat_at, unit.heartbeat_at), Unit.attempts == unit.attempts)
        if unit.state == UnitState.RUNNING:  # orphaned: its worker stopped beating
            claimed = guarded_update(
                session,
                Unit,
                unit.id,
                when={UnitState.RUNNING},
                to=UnitState.PENDING,
                where=seen,
                heartbeat_at=now,
            )
        else:  # waiting, and nobody is busy: its message may be lost
            last_touch = unit.heartbeat_at or unit.started_at or job_updated_at
            claimed = _older(last_touch, cutoff) and guarded_update(
                session, Unit, unit.id, when={UnitState.PENDING}, where=seen, heartbeat_at=now
            )
        if claimed:
            enqueue_on_commit(session, RUN_UNIT, unit.job_id, unit.index)


def _job_sends(session: Session, cutoff: dt.datetime, now: dt.datetime) -> None:
    """Plan steps of queued jobs without units; finishing steps of jobs whose units are all done or
    skipped (a cancelling one too: its finishing step moves it to cancelled)."""
    complete = [str(state) for state in UNIT_COMPLETE]  # done, or skipped by the adaptive stop
    unfinished = exists().where(Unit.job_id == Job.id, Unit.state.not_in(complete))
    has_units = exists().where(Unit.job_id == Job.id)
    finish_idle = or_(Job.finish_heartbeat_at.is_(None), Job.finish_heartbeat_at < cutoff)
    query = (
        select(Job)
        .where(
            Job.updated_at < cutoff,
            or_(
                and_(Job.state == JobState.QUEUED, ~has_units),
                and_(
                    Job.state.in_([str(JobState.RUNNING), str(JobState.CANCELLING)]),
                    has_units,
                    ~unfinished,
                    finish_idle,
                ),
            ),
        )
        .with_for_update(skip_locked=True)
    )
    for job in session.scalars(query).all():
        if guarded_update(
            session, Job, job.id, when={job.state}, where=(Job.updated_at == job.updated_at,), updated_at=now
        ):
            enqueue_on_commit(session, PLAN_JOB if job.state == JobState.QUEUED else FINISH_JOB, job.id)


def reconcile() -> int:
    """Enqueue what unfinished jobs need; returns how many tasks were sent."""
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=get_settings().stale_after_s)
    with session_scope() as session:
        busy = _workers_busy(session, cutoff)
        _unit_sends(session, cutoff, busy, now)
        if not busy:
            _job_sends(session, cutoff, now)
        sends = pending_tasks(session)
    if sends:  # sent by the commit above: a task never reads a claim that is not there yet
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
