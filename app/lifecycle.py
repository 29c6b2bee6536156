"""Job and unit states: the one module that names them, says which moves are legal, and makes every move.

A job is ``queued`` until a worker claims its first unit (``running``); it ends ``succeeded`` (the
finishing step wrote the final scores), ``failed`` (a step crashed, or kept killing its worker) or
``cancelled``. A cancel request moves a queued job straight to ``cancelled`` and a running one to
``cancelling``; the worker then stops between epochs and moves it to ``cancelled``. Once a job is
``cancelling`` it ends ``cancelled`` (or ``failed``), never ``succeeded``: a 202 from the cancel route
means the job will not succeed, a 409 that it had already finished.

A unit is ``pending`` until a worker claims it (``running``, ``attempts + 1``), ``done`` once its
artifact exists, and goes back to ``pending`` when its run is abandoned (cancel, a database error, or
the reconciler finding its heartbeat stale). ``failed`` marks the unit that failed its job. ``skipped``
marks a unit the adaptive stop (``audit.stop_when_stable``, SPEC §7) made unnecessary: once the ranking
is stable the job's pending and running units move to ``skipped`` in one guarded UPDATE; a running one
notices at its next epoch check (its claim is gone) and writes nothing. A job is complete when every
unit is ``done`` or ``skipped`` (``units_done + units_skipped = units_total``).

Every change of a row in ``jobs`` or ``units`` made by the service goes through :func:`guarded_update`:
one ``UPDATE ... WHERE id = ? AND state IN (allowed) [AND ...]`` that reports whether it applied. Nothing
reads a state, decides, and writes it back, so two writers (two workers, a worker and the API, two
reconcilers) can never overwrite each other's transition.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import ColumnElement, CursorResult, update
from sqlalchemy.orm import Session

if TYPE_CHECKING:  # app.db imports the enums from here
    from app.db import Job, Unit


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class UnitState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


# Legal moves: state -> the states it may move to. Anything not listed is refused before any SQL runs.
JOB_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.CANCELLING, JobState.SUCCEEDED, JobState.FAILED}),
    JobState.CANCELLING: frozenset({JobState.CANCELLED, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}
UNIT_TRANSITIONS: Mapping[UnitState, frozenset[UnitState]] = {
    UnitState.PENDING: frozenset({UnitState.RUNNING, UnitState.FAILED, UnitState.SKIPPED}),
    UnitState.RUNNING: frozenset({UnitState.DONE, UnitState.PENDING, UnitState.FAILED, UnitState.SKIPPED}),
    UnitState.DONE: frozenset(),
    UnitState.FAILED: frozenset(),
    UnitState.SKIPPED: frozenset(),
}

JOB_ACTIVE: frozenset[JobState] = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING})
JOB_TERMINAL: frozenset[JobState] = frozenset(state for state, moves in JOB_TRANSITIONS.items() if not moves)
UNIT_FINISHED: frozenset[UnitState] = frozenset(
    state for state, moves in UNIT_TRANSITIONS.items() if not moves
)
UNIT_UNFINISHED: frozenset[UnitState] = frozenset(UnitState) - UNIT_FINISHED
# Finished without failing: a job whose units are all in these states is ready for its finishing step.
UNIT_COMPLETE: frozenset[UnitState] = frozenset({UnitState.DONE, UnitState.SKIPPED})

State = JobState | UnitState


class IllegalTransition(ValueError):
    """A caller asked for a move the transition table does not allow (a bug, never a race)."""


def sources_of(target: State) -> frozenset[State]:
    """Every state from which ``target`` may be reached."""
    table: Mapping[Any, frozenset[Any]] = (
        JOB_TRANSITIONS if isinstance(target, JobState) else UNIT_TRANSITIONS
    )
    return frozenset(state for state, moves in table.items() if target in moves)


def check_transition(allowed: Collection[State], target: State) -> None:
    table: Mapping[Any, frozenset[Any]] = (
        JOB_TRANSITIONS if isinstance(target, JobState) else UNIT_TRANSITIONS
    )
    illegal = sorted(str(state) for state in allowed if target not in table[state])
    if illegal:
        raise IllegalTransition(f"{', '.join(illegal)} -> {target} is not a legal transition")


def guarded_update(
    session: Session,
    model: type[Job] | type[Unit],
    row_id: object,
    *,
    when: Collection[State],
    to: State | None = None,
    where: Sequence[ColumnElement[bool]] = (),
    **values: Any,
) -> bool:
    """``UPDATE model SET values [, state = to] WHERE id = row_id AND state IN when [AND where...]``.

    Returns whether the row changed. ``to`` must be legal from every state in ``when``. The session's
    copy of the row (if loaded) is refreshed from the statement, so code after a transition sees it.
    """
    if not when:
        raise ValueError("guarded_update needs at least one allowed state")
    if to is not None:
        check_transition(when, to)
        values["state"] = to
    statement = (
        update(model)
        .where(model.id == row_id, model.state.in_([str(state) for state in when]), *where)
        .values(**values)
        .execution_options(synchronize_session="fetch")
    )
    result = cast(CursorResult[Any], session.execute(statement))
    return result.rowcount == 1
