"""Who owns a unit, or a job's finishing step, right now — and every write such an owner makes.

A worker *claims* a pending unit with one guarded UPDATE (``pending -> running, attempts + 1``); the
new ``attempts`` value is the run's **token**. Every later write of that run (heartbeat, progress, done,
release) is guarded by ``state = running AND attempts = token``, so a run whose claim was taken over
(the reconciler found its heartbeat stale and re-sent the unit, another worker claimed it) can no longer
change anything: its writes report that they did not apply and the run stops. The finishing step is
claimed the same way on the job row (``finish_attempts`` is its token, ``finish_heartbeat_at`` its
lease), and its final write is guarded by ``state = running AND finish_attempts = token``.

Counters are columns changed by the same statements (``units_done + 1`` when a unit becomes done,
``units_skipped + n`` when the adaptive stop skips n units), so exactly one transaction sees the job
complete (``units_done + units_skipped = units_total``) and enqueues the finishing step. Every such
transaction locks unit rows before the job row, so two of them never deadlock.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import and_, not_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.db import Job, Unit, session_scope, utcnow
from app.lifecycle import JOB_ACTIVE, JobState, UnitState, guarded_update, sources_of
from app.services.transitions import cancel_job, fail_job, move_job, start_job
from app.settings import get_settings
from app.tasks import FINISH_JOB, enqueue_on_commit

log = logging.getLogger(__name__)
RUNNING_JOB = frozenset({JobState.RUNNING})
RUNNING_UNIT = frozenset({UnitState.RUNNING})


@dataclass(frozen=True)
class UnitClaim:
    job_id: str
    unit_id: int
    index: int
    token: int  # units.attempts as this run set it


def _owned(claim: UnitClaim) -> tuple[Any, ...]:
    return (Unit.attempts == claim.token,)


def claim_unit(session: Session, job_id: str, index: int) -> UnitClaim | None:
    """Claim the unit for this run (commits); None when there is nothing for this run to do."""
    job = session.get(Job, job_id)
    unit = session.scalar(select(Unit).where(Unit.job_id == job_id, Unit.index == index))
    if job is None or unit is None or job.state not in JOB_ACTIVE or unit.state != UnitState.PENDING:
        return None  # finished, or claimed by another run (which owns it until its heartbeat goes stale)
    if job.state == JobState.CANCELLING:
        cancel_job(session, job_id)
        session.commit()
        return None
    if unit.attempts >= get_settings().max_unit_attempts:
        message = f"unit {index} was started {unit.attempts} times and never finished (its worker died)"
        if guarded_update(
            session,
            Unit,
            unit.id,
            when={UnitState.PENDING},
            to=UnitState.FAILED,
            where=(Unit.attempts == unit.attempts,),
            error=message,
        ):
            fail_job(session, job_id, message)
        session.commit()
        return None
    now, token = utcnow(), unit.attempts + 1
    claimed = guarded_update(
        session,
        Unit,
        unit.id,
        when={UnitState.PENDING},
        to=UnitState.RUNNING,
        where=(Unit.attempts == unit.attempts,),
        attempts=token,
        started_at=now,
        heartbeat_at=now,
        error=None,
    )
    if not claimed:
        session.rollback()
        return None
    start_job(session, job_id)
    session.commit()
    return UnitClaim(job_id, unit.id, index, token)


def still_owned(claim: UnitClaim) -> bool:
    """Whether this run still owns its unit and the job still runs (else the run must stop)."""
    with session_scope() as session:
        row = session.execute(
            select(Job.state, Unit.state, Unit.attempts)
            .join(Job, Job.id == Unit.job_id)
            .where(Unit.id == claim.unit_id)
        ).one_or_none()
    return (
        row is not None
        and row[0] == JobState.RUNNING
        and row[1] == UnitState.RUNNING
        and row[2] == claim.token
    )


def beat_unit(claim: UnitClaim) -> bool:
    with session_scope() as session:
        return guarded_update(
            session, Unit, claim.unit_id, when=RUNNING_UNIT, where=_owned(claim), heartbeat_at=utcnow()
        )


def record_progress(claim: UnitClaim, epoch: int, epochs: int, units_total: int) -> bool:
    """The unit's epoch + heartbeat, then the job's live position; False when the claim is gone (nothing
    written). A job that is no longer running keeps the progress it had."""
    now = utcnow()
    with session_scope() as session:
        if not guarded_update(
            session,
            Unit,
            claim.unit_id,
            when=RUNNING_UNIT,
            where=_owned(claim),
            epoch=epoch,
            heartbeat_at=now,
        ):
            return False
        done, skipped = session.execute(
            select(Job.units_done, Job.units_skipped).where(Job.id == claim.job_id)
        ).one()
        position = {
            "unit": claim.index,
            "epoch": epoch,
            "epochs": epochs,
            "fraction": job_fraction(int(done), int(skipped), units_total, epoch / max(epochs, 1)),
        }
        return guarded_update(session, Job, claim.job_id, when=RUNNING_JOB, progress=position, updated_at=now)


def job_fraction(done: int, skipped: int, total: int, running: float = 0.0) -> float:
    """The job's ``progress.fraction``: skipped units count as done (the adaptive stop decided they need
    not run, so the job is as far along as if they had), ``running`` is the share of its epochs the
    running unit has trained."""
    return round(min((done + skipped + running) / max(total, 1), 1.0), 4)


def release_unit(session: Session, claim: UnitClaim, *, give_back_attempt: bool) -> bool:
    """running -> pending for this run's claim (cancel, or a database error that is not a worker death)."""
    values: dict[str, Any] = {"attempts": max(claim.token - 1, 0)} if give_back_attempt else {}
    return guarded_update(
        session, Unit, claim.unit_id, when=RUNNING_UNIT, to=UnitState.PENDING, where=_owned(claim), **values
    )


def release_after_db_error(claim: UnitClaim) -> None:
    """Best effort: if the database is still down the attempt stays counted (still bounded)."""
    try:
        with session_scope() as session:
            release_unit(session, claim, give_back_attempt=True)
    except OperationalError:
        log.warning(
            "could not release unit %s of job %s after a DB error", claim.index, claim.job_id, exc_info=True
        )


def fail_unit(claim: UnitClaim, message: str) -> None:
    """The unit's run failed for good: the unit and its job fail (only while this run owns the unit)."""
    with session_scope() as session:
        if guarded_update(
            session,
            Unit,
            claim.unit_id,
            when=RUNNING_UNIT,
            to=UnitState.FAILED,
            where=_owned(claim),
            error=message[:2000],
            finished_at=utcnow(),
        ):
            fail_job(session, claim.job_id, message)


def complete_unit(session: Session, claim: UnitClaim, path: Path, seconds: float) -> bool | None:
    """running -> done with its artifact, and the job's units_done + 1, in one transaction (commits).

    Returns None when this run no longer owned the unit (nothing written), else whether the job is now
    complete (then the finishing step is enqueued, by exactly this completion).
    """
    now = utcnow()
    if not guarded_update(
        session,
        Unit,
        claim.unit_id,
        when=RUNNING_UNIT,
        to=UnitState.DONE,
        where=_owned(claim),
        artifact_path=str(path),
        finished_at=now,
        seconds=round(seconds, 3),
    ):
        session.rollback()
        return None
    counted = guarded_update(
        session, Job, claim.job_id, when=JOB_ACTIVE, units_done=Job.units_done + 1, updated_at=now
    )
    complete = counted and _job_complete(session, claim.job_id)
    if complete:
        enqueue_on_commit(session, FINISH_JOB, claim.job_id)
    session.commit()
    return complete


def _job_complete(session: Session, job_id: str) -> bool:
    """After this transaction's counter update (the job row is locked): is every unit done or skipped?"""
    done, skipped, total = session.execute(
        select(Job.units_done, Job.units_skipped, Job.units_total).where(Job.id == job_id)
    ).one()
    return bool(done + skipped >= total)


def skip_remaining(session: Session, job_id: str) -> int:
    """The adaptive stop: every pending or running unit of the running job -> skipped, and the job's
    units_skipped + n and its progress (skipped units count as done: ``job_fraction``), in one
    transaction (commits). Returns n (0: nothing left, or another stop, a cancel or a completing unit got
    there first). A running unit's run finds its claim gone at its next epoch check and writes nothing.
    Enqueues the finishing step when this makes the job complete."""
    if session.scalar(select(Job.state).where(Job.id == job_id)) != JobState.RUNNING:
        session.rollback()
        return 0
    open_states = sources_of(UnitState.SKIPPED)
    candidates = session.scalars(
        select(Unit.id).where(Unit.job_id == job_id, Unit.state.in_([str(s) for s in open_states]))
        .order_by(Unit.index)
    ).all()
    now = utcnow()
    skipped = sum(
        guarded_update(session, Unit, unit_id, when=open_states, to=UnitState.SKIPPED, finished_at=now)
        for unit_id in candidates
    )  # one guarded UPDATE per unit, in index order: the row locks are taken in one order by everyone
    # No unit can complete or record progress any more (every open row is skipped and locked by this
    # transaction), so these counts stay what they are until the commit.
    done, already, total = session.execute(
        select(Job.units_done, Job.units_skipped, Job.units_total).where(Job.id == job_id)
    ).one()
    progress = {"fraction": job_fraction(int(done), int(already) + skipped, int(total))}  # no unit runs now
    if not skipped or not guarded_update(
        session, Job, job_id, when=RUNNING_JOB, units_skipped=Job.units_skipped + skipped, progress=progress,
        updated_at=now,
    ):
        session.rollback()  # nothing to skip, or the job stopped running meanwhile: change nothing
        return 0
    if _job_complete(session, job_id):
        enqueue_on_commit(session, FINISH_JOB, job_id)
    session.commit()
    return skipped


# --- the finishing step ------------------------------------------------------------------------------


def _finish_is_live(now: dt.datetime) -> Any:
    cutoff = now - dt.timedelta(seconds=get_settings().stale_after_s)
    return and_(Job.finish_heartbeat_at.is_not(None), Job.finish_heartbeat_at >= cutoff)


def claim_finish(session: Session, job_id: str) -> int | None:
    """Claim the finishing step (commits): its token, or None when another live run has it, the job is
    not running, or the attempts are used up (the job is then failed)."""
    now, limit = utcnow(), get_settings().max_unit_attempts
    live = _finish_is_live(now)
    if guarded_update(
        session,
        Job,
        job_id,
        when=RUNNING_JOB,
        where=(Job.finish_attempts < limit, not_(live)),
        finish_attempts=Job.finish_attempts + 1,
        finish_heartbeat_at=now,
        updated_at=now,
    ):
        token = int(session.scalar(select(Job.finish_attempts).where(Job.id == job_id)) or 0)
        session.commit()
        return token
    attempts = int(session.scalar(select(Job.finish_attempts).where(Job.id == job_id, not_(live))) or 0)
    if attempts >= limit:
        message = f"the finishing step was started {attempts} times and never finished (its worker died)"
        fail_job(session, job_id, message)
    session.commit()
    return None


def _finishing(token: int) -> tuple[Any, ...]:
    return (Job.finish_attempts == token,)


def beat_finish(job_id: str, token: int) -> bool:
    with session_scope() as session:
        return guarded_update(
            session, Job, job_id, when=RUNNING_JOB, where=_finishing(token), finish_heartbeat_at=utcnow()
        )


def lock_finish(session: Session, job_id: str, token: int) -> bool:
    """Begin the final write: lock the job row, provided this run still owns the finishing step."""
    return guarded_update(
        session, Job, job_id, when=RUNNING_JOB, where=_finishing(token), updated_at=utcnow()
    )


def succeed(session: Session, job_id: str, token: int, summary: dict[str, Any]) -> bool:
    """running -> succeeded for this finishing run (in the transaction holding the final scores)."""
    progress = {"fraction": 1.0}
    moved = move_job(
        session,
        job_id,
        JobState.SUCCEEDED,
        when=RUNNING_JOB,
        where=_finishing(token),
        summary=summary,
        progress=progress,
        finish_heartbeat_at=None,
    )
    return moved is not None


def release_finish(job_id: str, token: int) -> None:
    """A database error is not a worker death: give the attempt back, end the lease (best effort)."""
    try:
        with session_scope() as session:
            guarded_update(
                session,
                Job,
                job_id,
                when=RUNNING_JOB,
                where=_finishing(token),
                finish_attempts=token - 1,
                finish_heartbeat_at=None,
            )
    except OperationalError:
        log.warning("could not release the finishing attempt of job %s", job_id, exc_info=True)
