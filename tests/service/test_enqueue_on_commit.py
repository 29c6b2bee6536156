"""Tasks registered with app.tasks.enqueue_on_commit reach the broker only when their transaction
commits: never before, never after a rollback, once per distinct task (a real kombu broker on SQLite)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from app.db import Job, get_sessionmaker
from app.tasks import FINISH_JOB, PLAN_JOB, RUN_UNIT, enqueue_on_commit
from tests.reliability.racing import sent_tasks
from tests.service.harness import environment


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[str]:
    from app.migrate import upgrade_to_head

    database, broker_url = f"sqlite:///{tmp_path / 'memaudit.db'}", f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    with environment({"MEMAUDIT_DATA_DIR": str(tmp_path), "MEMAUDIT_DATABASE_URL": database,
                      "MEMAUDIT_BROKER_URL": broker_url}):  # fmt: skip
        upgrade_to_head(database)
        yield broker_url


def _job(job_id: str) -> Job:
    return Job(id=job_id, owner="o", spec={}, request_hash="h", n_samples=1, image_shape=[1, 2, 2])


def test_tasks_are_sent_after_the_commit_once_and_never_after_a_rollback(broker: str) -> None:
    session = get_sessionmaker()()
    try:
        session.add(_job("rolled-back"))
        enqueue_on_commit(session, PLAN_JOB, "rolled-back")
        session.rollback()
        assert sent_tasks(broker) == []

        job_id = str(uuid.uuid4())
        session.add(_job(job_id))
        enqueue_on_commit(session, RUN_UNIT, job_id, 0)
        enqueue_on_commit(session, RUN_UNIT, job_id, 0)  # the same task twice: sent once
        enqueue_on_commit(session, FINISH_JOB, job_id)
        session.flush()
        assert sent_tasks(broker) == [], "a task was sent before its rows were committed"
        session.commit()
        assert sent_tasks(broker) == [(RUN_UNIT, (job_id, 0)), (FINISH_JOB, (job_id,))]

        session.add(_job(job_id))  # a duplicate primary key: the commit fails and rolls back
        enqueue_on_commit(session, PLAN_JOB, job_id)
        with pytest.raises(IntegrityError):
            session.commit()
        session.rollback()
        session.commit()  # a later, empty commit does not send what the failed one registered
        assert [name for name, _ in sent_tasks(broker)] == [RUN_UNIT, FINISH_JOB]
    finally:
        session.close()


def test_an_unknown_task_name_is_refused(broker: str) -> None:
    with get_sessionmaker()() as session, pytest.raises(ValueError, match="unknown task"):
        enqueue_on_commit(session, "memaudit.no_such_task", "x")
