"""Races of the job lifecycle, on real PostgreSQL: two threads (two database connections) run competing
steps, and a hold at an exact SQL statement (tests/reliability/racing.py) decides their order.

The worker's steps are called in-process (the functions the Celery tasks run), the API's cancel is its
service call, and tasks go to a Redis database no worker listens on, so every step runs exactly when the
test says. docs/reliability.md lists each race with the test that covers it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app.lifecycle import JobState
from tests.reliability.racing import (
    barrier_before_statement,
    hold_before_commit,
    hold_before_statement,
    in_thread,
    purge,
    sent_tasks,
)
from tests.service.harness import environment
from tests.service.jobdata import digits_subset, npz_bytes, tiny_job

pytestmark = [pytest.mark.service, pytest.mark.timeout(300)]
N_SAMPLES = 60
UNITS = 2  # folds 3 x repeats 2, three models per unit


@dataclass
class Lab:
    client: TestClient
    engine: Engine
    broker_url: str
    fault_dir: Path
    artifacts: Path
    dataset: dict[str, str]

    def new_job(self, *, planned: bool = True, **audit: Any) -> str:
        audit = {"models_per_unit": 3, **audit}
        response = self.client.post("/jobs", json=tiny_job(self.dataset, epochs=2, **audit))
        assert response.status_code == 202, response.text
        job_id = str(response.json()["id"])
        if planned:
            from workers import runner

            runner.plan_job(job_id)
        return job_id

    def run_units(self, job_id: str, *indices: int) -> None:
        from workers import runner

        for index in indices:
            runner.run_unit(job_id, index)

    def row(self, job_id: str) -> dict[str, Any]:
        """The job's row as stored (columns that every revision of the schema has)."""
        query = text(
            "SELECT state, progress, error, summary, units_done, units_total, scores_units, "
            "scores_provisional, started_at, finished_at, updated_at FROM jobs WHERE id = :id"
        )
        with self.engine.connect() as connection:
            return dict(connection.execute(query, {"id": job_id}).mappings().one())

    def unit(self, job_id: str, index: int) -> dict[str, Any]:
        query = text(
            "SELECT state, attempts, epoch, artifact_path, started_at, finished_at, seconds FROM units "
            "WHERE job_id = :id AND index = :index"
        )
        with self.engine.connect() as connection:
            return dict(connection.execute(query, {"id": job_id, "index": index}).mappings().one())

    def scores(self, job_id: str) -> list[dict[str, Any]]:
        page = self.client.get(f"/jobs/{job_id}/scores", params={"sort": "sample_id", "limit": 1000})
        assert page.status_code == 200, page.text
        return list(page.json()["items"])

    def finish_passes(self) -> int:
        """How many finishing steps got past their computation (the armed, never-acting fault point)."""
        passes = self.fault_dir / "finish.passes"
        return len(passes.read_text()) if passes.exists() else 0

    def count_finish_passes(self) -> None:
        (self.fault_dir / "finish.passes").unlink(missing_ok=True)
        (self.fault_dir / "finish.arm").write_text("pause after=1000000\n")  # counts, never pauses

    def set_job(self, job_id: str, **values: object) -> None:
        """What another process (a worker, an operator) wrote to the job row meanwhile."""
        from sqlalchemy import update

        from app.db import Job

        with self.engine.begin() as connection:
            connection.execute(update(Job).where(Job.id == job_id).values(**values))


@contextmanager
def make_lab(tmp: Path, database_url: str, broker_url: str) -> Iterator[Lab]:
    from app.api.main import create_app
    from app.db import get_engine
    from app.migrate import upgrade_to_head

    fault_dir = tmp / "faults"
    fault_dir.mkdir()
    env = {
        "MEMAUDIT_DATA_DIR": str(tmp / "data"),
        "MEMAUDIT_DATABASE_URL": database_url,
        "MEMAUDIT_BROKER_URL": broker_url,
        "MEMAUDIT_API_KEYS": "",
        "MEMAUDIT_WORKER_DEVICE": "cpu",
        "MEMAUDIT_JOB_RATE_LIMIT": "0",
        "MEMAUDIT_FAULT_DIR": str(fault_dir),
        # Heartbeat threads never beat on their own here: the tests decide when a claim looks stale.
        "MEMAUDIT_HEARTBEAT_INTERVAL_S": "600",
    }
    with environment(env):
        upgrade_to_head(database_url)
        purge(broker_url)
        with TestClient(create_app()) as client:
            upload = client.post("/datasets", files={"file": ("d.npz", npz_bytes(digits_subset(N_SAMPLES)))})
            assert upload.status_code == 201, upload.text
            yield Lab(
                client,
                get_engine(),
                broker_url,
                fault_dir,
                tmp / "data" / "artifacts",
                {"id": upload.json()["id"]},
            )


@pytest.fixture(scope="module")
def lab(fresh_database: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    broker = redis_url.rsplit("/", 1)[0] + "/9"  # a Redis database that no worker listens on
    with make_lab(tmp_path_factory.mktemp("races"), fresh_database, broker) as running:
        yield running


def test_a_cancel_racing_the_finishing_step_never_unfinishes_a_succeeded_job(lab: Lab) -> None:
    from app.db import session_scope
    from app.services.jobs import cancel_job
    from app.settings import LOCAL_OWNER
    from workers import runner

    job_id = lab.new_job()
    lab.run_units(job_id, 0, 1)

    def cancel() -> object:
        with session_scope() as session:
            return cancel_job(session, LOCAL_OWNER, job_id).state

    # The cancel request has read the job (running) and is about to write its transition...
    with hold_before_statement(lab.engine, "canceller", "UPDATE jobs SET state") as hold:
        thread, outcome = in_thread("canceller", cancel)
        assert hold.reached.wait(60)
        runner.finish_job(job_id)  # ...when the finishing step commits the final scores and succeeds.
        assert lab.row(job_id)["state"] == JobState.SUCCEEDED
        hold.release.set()
        thread.join(60)
    assert lab.row(job_id)["state"] == JobState.SUCCEEDED, "a succeeded job went back to cancelling"
    assert len(outcome) == 1 and type(outcome[0]).__name__ == "Conflict", outcome  # the API's 409
    assert lab.row(job_id)["scores_provisional"] is False


@pytest.mark.parametrize("meanwhile", ["cancel", "failure"])
def test_the_finishing_step_does_not_act_on_the_job_row_it_read_before(lab: Lab, meanwhile: str) -> None:
    from app.db import session_scope
    from app.services.jobs import cancel_job
    from app.settings import LOCAL_OWNER
    from workers import runner

    job_id = lab.new_job()
    lab.run_units(job_id, 0, 1)
    provisional = lab.scores(job_id)
    # The finishing step read the job (running), computed the final result, and is about to write it.
    with hold_before_statement(lab.engine, "finisher", "UPDATE jobs SET updated_at") as hold:
        thread, outcome = in_thread("finisher", lambda: runner.finish_job(job_id))
        assert hold.reached.wait(120)
        if meanwhile == "cancel":  # the user cancels while it computes
            with session_scope() as session:
                assert cancel_job(session, LOCAL_OWNER, job_id).state == JobState.CANCELLING
            expected = JobState.CANCELLED
        else:  # another worker fails the job meanwhile (e.g. its attempts ran out)
            lab.set_job(job_id, state=str(JobState.FAILED), error="finishing step: out of attempts")
            expected = JobState.FAILED
        hold.release.set()
        thread.join(120)
    assert outcome == [None]
    row = lab.row(job_id)
    assert row["state"] == expected, f"the finishing step overwrote a {meanwhile} with {row['state']}"
    assert row["summary"] is None and row["scores_provisional"] is True
    assert lab.scores(job_id) == provisional, "the final scores were written for a job that did not succeed"


def test_two_finishing_steps_at_once_finish_the_job_once(lab: Lab) -> None:
    from workers import runner

    job_id = lab.new_job()
    lab.run_units(job_id, 0, 1)
    lab.count_finish_passes()
    try:  # both have read the job and its units; both now try to start the finishing step
        with barrier_before_statement(lab.engine, "finisher-", "UPDATE jobs", parties=2):
            threads = [in_thread(f"finisher-{n}", lambda: runner.finish_job(job_id)) for n in (1, 2)]
            for thread, _ in threads:
                thread.join(180)
    finally:
        (lab.fault_dir / "finish.arm").unlink(missing_ok=True)
    assert [outcome for _, outcome in threads] == [[None], [None]]
    assert lab.row(job_id)["state"] == JobState.SUCCEEDED
    assert lab.finish_passes() == 1, "both finishing steps computed and wrote the final scores"


def test_a_duplicate_run_of_a_unit_after_the_job_succeeded_writes_nothing(lab: Lab) -> None:
    from workers import runner
    from workers.reconcile import reconcile

    job_id = lab.new_job()
    # Run A of unit 0 is slow, not dead: it holds at its first progress write...
    with (
        environment({"MEMAUDIT_STALE_AFTER_S": "1"}),
        hold_before_statement(lab.engine, "slow-run", "UPDATE units SET epoch") as hold,
    ):
        thread, outcome = in_thread("slow-run", lambda: runner.run_unit(job_id, 0))
        assert hold.reached.wait(120)
        time.sleep(1.5)  # ...long enough for its claim to look stale (its heartbeat is silent)
        assert reconcile() >= 1  # the reconciler re-sends unit 0; run B does it, and the job finishes
        lab.run_units(job_id, 0, 1)
        runner.finish_job(job_id)
        finished, unit, scores = lab.row(job_id), lab.unit(job_id, 0), lab.scores(job_id)
        artifact = lab.artifacts / job_id / "unit-0000.npz"
        written = artifact.stat().st_mtime_ns
        assert finished["state"] == JobState.SUCCEEDED
        hold.release.set()  # run A wakes up
        thread.join(180)
    assert outcome == [None]
    assert lab.row(job_id) == finished, "the duplicate run rewrote the succeeded job"
    assert lab.unit(job_id, 0) == unit, "the duplicate run rewrote the unit another run finished"
    assert lab.scores(job_id) == scores and artifact.stat().st_mtime_ns == written


@pytest.mark.parametrize("terminal", [JobState.FAILED, JobState.CANCELLED])
def test_a_progress_write_never_rewrites_a_finished_job(lab: Lab, terminal: JobState) -> None:
    from workers import runner

    job_id = lab.new_job()
    with hold_before_statement(lab.engine, "trainer", "UPDATE units SET epoch") as hold:
        thread, outcome = in_thread("trainer", lambda: runner.run_unit(job_id, 0))
        assert hold.reached.wait(120)  # unit 0 finished an epoch and is about to record its progress...
        # ...when the job ends elsewhere
        lab.set_job(job_id, state=str(terminal), finished_at=dt.datetime.now(dt.UTC))
        ended = lab.row(job_id)
        hold.release.set()
        thread.join(180)
    assert outcome == [None]
    assert lab.row(job_id) == ended, "a progress write rewrote a finished job"


@pytest.fixture(params=["postgresql", "sqlite"])
def reconciler_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    if request.param == "postgresql":
        yield request.getfixturevalue("lab")
        return
    database, broker = f"sqlite:///{tmp_path / 'memaudit.db'}", f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    with make_lab(tmp_path, database, broker) as sqlite_lab:
        yield sqlite_lab


def test_two_reconcilers_at_once_send_each_task_once(reconciler_lab: Lab) -> None:
    from app.tasks import RUN_UNIT
    from workers.reconcile import reconcile

    lab = reconciler_lab
    job_id = lab.new_job()
    purge(lab.broker_url)  # the plan step's messages are lost (a Redis restart)...
    hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    lab.set_job(job_id, updated_at=hour_ago)  # ...and nothing has touched the job for an hour
    with lab.engine.begin() as connection:
        connection.execute(text("UPDATE units SET heartbeat_at = NULL WHERE job_id = :id"), {"id": job_id})
    # Reconciler A has claimed what it will send and is about to commit; reconciler B runs meanwhile.
    with hold_before_commit(lab.engine, "reconciler-a") as hold:
        first, sent_by_a = in_thread("reconciler-a", reconcile)
        assert hold.reached.wait(60)
        second, sent_by_b = in_thread("reconciler-b", reconcile)
        second.join(10)
        b_waited = second.is_alive()
        hold.release.set()
        first.join(60)
        second.join(60)
    sends = [task for task in sent_tasks(lab.broker_url) if task[1][:1] == (job_id,)]
    assert sorted(sends) == [(RUN_UNIT, (job_id, index)) for index in range(UNITS)], sends
    assert sorted(sent_by_a + sent_by_b) == [0, UNITS]
    if lab.engine.dialect.name == "postgresql":  # SQLite has no row locks to skip: B waits there
        assert not b_waited, "reconciler B waited on reconciler A's claims instead of skipping them"


# --- the adaptive stop (audit.stop_when_stable): K = 2, L = 5, one unit per repetition; the rule (any
# overlap, twice in a row) fires once three repetitions are whole ---------------------------------------
STOPPING = {"folds": 2, "repeats": 5, "models_per_unit": 2, "stop_when_stable": 1e-9}


def _unit_states(lab: Lab, job_id: str) -> list[str]:
    with lab.engine.connect() as connection:
        query = text("SELECT state FROM units WHERE job_id = :id ORDER BY index")
        return [str(state) for state in connection.execute(query, {"id": job_id}).scalars()]


def _finish_sends(lab: Lab, job_id: str) -> int:
    from app.tasks import FINISH_JOB

    return sum(1 for task in sent_tasks(lab.broker_url) if task == (FINISH_JOB, (job_id,)))


def _finishes_on_three_repetitions(lab: Lab, job_id: str) -> None:
    from workers import runner

    runner.finish_job(job_id)
    row = lab.row(job_id)
    assert row["state"] == JobState.SUCCEEDED, row
    assert row["summary"]["repeats_used"] == 3 and row["summary"]["n_models"] == 6


def test_a_unit_finishing_while_the_stop_skips_it_writes_nothing(lab: Lab) -> None:
    """Unit 3 (repetition 4) finished training and is about to record itself done when unit 2's run
    decides to stop and skips units 3 and 4: the skip holds their rows, so unit 3's completion waits and
    then finds its claim gone. The job counts 3 done + 2 skipped and its finishing step is sent once."""
    from workers import runner

    job_id = lab.new_job(**STOPPING)
    lab.run_units(job_id, 0, 1)
    purge(lab.broker_url)
    # (both holds are registered before any thread runs: listeners must not change under a held thread)
    with (
        hold_before_statement(lab.engine, "late-unit", "UPDATE units", containing="artifact_path") as late,
        hold_before_statement(lab.engine, "stopper", "UPDATE jobs SET units_skipped") as stop,
    ):
        late_thread, late_outcome = in_thread("late-unit", lambda: runner.run_unit(job_id, 3))
        assert late.reached.wait(120)  # trained, artifact written, nothing locked yet
        stop_thread, stop_outcome = in_thread("stopper", lambda: runner.run_unit(job_id, 2))
        assert stop.reached.wait(120)  # units 3 and 4 are skipped (rows locked), not yet committed
        late.release.set()
        late_thread.join(2)
        assert late_thread.is_alive(), "unit 3's completion did not wait for the skip's row lock"
        stop.release.set()
        stop_thread.join(120)
        late_thread.join(120)
    assert late_outcome == [None] and stop_outcome == [None]
    assert _unit_states(lab, job_id) == ["done", "done", "done", "skipped", "skipped"]
    assert lab.unit(job_id, 3)["artifact_path"] is None, "the skipped unit recorded its artifact"
    row = lab.row(job_id)
    assert (row["units_done"], row["units_total"]) == (3, 5)
    assert _finish_sends(lab, job_id) == 1
    _finishes_on_three_repetitions(lab, job_id)


def test_a_unit_completing_before_the_stop_reaches_its_row_stays_done(lab: Lab) -> None:
    """The other order: unit 3 has marked itself done (its row locked, not committed) when the stop
    tries to skip it; the skip waits, then skips unit 4 only. The finishing step combines the first
    three repetitions (the rule's stop point), not the fourth that also finished."""
    from workers import runner

    job_id = lab.new_job(**STOPPING)
    lab.run_units(job_id, 0, 1)
    purge(lab.broker_url)
    with (
        hold_before_statement(lab.engine, "late-unit", "UPDATE jobs SET units_done") as late,
        hold_before_statement(lab.engine, "stopper", "UPDATE jobs SET units_skipped") as stop,
    ):
        late_thread, late_outcome = in_thread("late-unit", lambda: runner.run_unit(job_id, 3))
        assert late.reached.wait(120)  # unit 3 is done in its open transaction
        stop_thread, stop_outcome = in_thread("stopper", lambda: runner.run_unit(job_id, 2))
        stop_thread.join(15)
        assert not stop.reached.is_set(), "the skip went past a unit row another run had locked"
        late.release.set()
        assert stop.reached.wait(120)
        stop.release.set()
        stop_thread.join(120)
        late_thread.join(120)
    assert late_outcome == [None] and stop_outcome == [None]
    assert _unit_states(lab, job_id) == ["done", "done", "done", "done", "skipped"]
    assert lab.row(job_id)["units_done"] == 4
    assert _finish_sends(lab, job_id) == 1
    _finishes_on_three_repetitions(lab, job_id)


def test_two_units_completing_repetitions_at_once_both_stopping_finish_once(lab: Lab) -> None:
    """Units 1 and 2 finish together after units 0 and 3: both then see four whole repetitions, both
    decide to stop and both try to skip unit 4. One skips it; the other changes nothing and sends
    nothing: the finishing step is sent once."""
    from workers import runner

    job_id = lab.new_job(**STOPPING)
    lab.run_units(job_id, 3, 0)
    purge(lab.broker_url)
    # both completions are committed before either looks at the repetitions (their provisional
    # score writes meet here), and both reach the stop's transaction together
    with (
        barrier_before_statement(lab.engine, "stopper-", "UPDATE jobs SET updated_at", parties=2),
        barrier_before_statement(lab.engine, "stopper-", "SELECT jobs.state \nFROM jobs", parties=2),
    ):
        threads = [in_thread(f"stopper-{n}", lambda n=n: runner.run_unit(job_id, n)) for n in (1, 2)]
        for thread, _ in threads:
            thread.join(240)
    assert [outcome for _, outcome in threads] == [[None], [None]]
    assert _unit_states(lab, job_id) == ["done", "done", "done", "done", "skipped"]
    row = lab.row(job_id)
    assert row["units_done"] == 4
    with lab.engine.connect() as connection:
        skipped = connection.execute(text("SELECT units_skipped FROM jobs WHERE id = :id"), {"id": job_id})
        assert skipped.scalar() == 1, "two stops both counted the skipped unit"
    assert _finish_sends(lab, job_id) == 1, "both stops sent the finishing step"
    _finishes_on_three_repetitions(lab, job_id)


def test_a_running_unit_the_stop_skipped_stops_at_its_next_epoch_check_and_writes_nothing(lab: Lab) -> None:
    """Unit 3 is training (held at its first progress write) when unit 2's run stops the job: the skip
    takes its claim, so its progress write is refused, it stops with nothing written (no epoch, no
    artifact, no count) and the job finishes on three repetitions."""
    from workers import runner

    job_id = lab.new_job(**STOPPING)
    lab.run_units(job_id, 0, 1)
    with hold_before_statement(lab.engine, "trainer", "UPDATE units SET epoch") as hold:
        thread, outcome = in_thread("trainer", lambda: runner.run_unit(job_id, 3))
        assert hold.reached.wait(120)  # unit 3 finished an epoch and is about to record it...
        runner.run_unit(job_id, 2)  # ...when unit 2 completes the third repetition and the rule fires
        assert _unit_states(lab, job_id) == ["done", "done", "done", "skipped", "skipped"]
        skipped = lab.unit(job_id, 3)
        hold.release.set()
        thread.join(180)
    assert outcome == [None]
    assert lab.unit(job_id, 3) == skipped and skipped["epoch"] == 0 and skipped["artifact_path"] is None
    assert not (lab.artifacts / job_id / "unit-0003.npz").exists(), "the skipped unit wrote its artifact"
    assert lab.row(job_id)["units_done"] == 3
    _finishes_on_three_repetitions(lab, job_id)


def test_the_progress_fraction_counts_the_units_the_stop_skipped_as_done(lab: Lab) -> None:
    """The stop skips 2 of 5 units: from its transaction on the job shows fraction 1.0, not the 3/5 of
    the units that ran until the finishing step jumps to 1.0; a unit's own progress counts them too."""
    from workers import runner
    from workers.claims import job_fraction

    job_id = lab.new_job(**STOPPING)
    lab.run_units(job_id, 0, 1)
    assert lab.row(job_id)["progress"]["fraction"] <= 0.4  # 2 of 5 units (writes are throttled)
    runner.run_unit(job_id, 2)  # completes the third repetition: the rule fires
    assert _unit_states(lab, job_id) == ["done", "done", "done", "skipped", "skipped"]
    assert lab.row(job_id)["progress"] == {"fraction": 1.0}, "the skipped units were not counted"
    assert job_fraction(3, 2, 5) == 1.0 and job_fraction(2, 1, 5, running=0.5) == 0.7
    _finishes_on_three_repetitions(lab, job_id)
