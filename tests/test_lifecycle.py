"""The state machine's table (app/lifecycle.py): complete, terminal states final, illegal moves refused
before any SQL is sent."""

from __future__ import annotations

from typing import Any, cast

import pytest

from app.lifecycle import (
    JOB_ACTIVE,
    JOB_TERMINAL,
    JOB_TRANSITIONS,
    UNIT_FINISHED,
    UNIT_TRANSITIONS,
    IllegalTransition,
    JobState,
    UnitState,
    check_transition,
    guarded_update,
    sources_of,
)


def test_every_state_has_a_row_and_active_and_terminal_partition_the_job_states() -> None:
    assert set(JOB_TRANSITIONS) == set(JobState) and set(UNIT_TRANSITIONS) == set(UnitState)
    assert set(JobState) == JOB_ACTIVE | JOB_TERMINAL and not JOB_ACTIVE & JOB_TERMINAL
    assert {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED} == JOB_TERMINAL
    assert {UnitState.DONE, UnitState.FAILED, UnitState.SKIPPED} == UNIT_FINISHED


def test_the_strings_are_the_ones_the_database_and_clients_have_always_seen() -> None:
    assert [str(state) for state in JobState] == ["queued", "running", "cancelling", "succeeded", "failed",
                                                  "cancelled"]  # fmt: skip
    assert [str(state) for state in UnitState] == ["pending", "running", "done", "failed", "skipped"]


def test_a_cancelled_or_finished_job_never_succeeds_and_nothing_leaves_a_final_state() -> None:
    assert sources_of(JobState.SUCCEEDED) == {JobState.RUNNING}
    assert sources_of(JobState.CANCELLING) == {JobState.RUNNING}
    assert sources_of(UnitState.DONE) == {UnitState.RUNNING}
    assert sources_of(UnitState.SKIPPED) == {UnitState.PENDING, UnitState.RUNNING}  # never a done unit
    for state in JOB_TERMINAL:
        assert JOB_TRANSITIONS[state] == frozenset()


@pytest.mark.parametrize(
    ("allowed", "target"),
    [({JobState.SUCCEEDED}, JobState.CANCELLING), ({JobState.CANCELLING}, JobState.SUCCEEDED),
     ({JobState.RUNNING, JobState.FAILED}, JobState.CANCELLING), ({UnitState.DONE}, UnitState.RUNNING)],
)  # fmt: skip
def test_illegal_moves_are_refused_before_any_sql(allowed: set[Any], target: Any) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(allowed, target)
    no_session = cast(Any, None)  # never reached: the check comes first
    with pytest.raises(IllegalTransition):
        guarded_update(no_session, cast(Any, None), "id", when=allowed, to=target)
