"""Background tasks: their names, the Celery application, and the one way to enqueue them.

Tasks take ids and re-read their rows, so a task must never reach a worker before the rows it reads
are committed, and must not be sent at all when the transaction that made it necessary rolls back.
:func:`enqueue_on_commit` registers a task on the SQLAlchemy session; it is sent by the session's
``after_commit`` event and forgotten on rollback (pypi/warehouse's after-commit task hook). Every call
site (job creation, the plan / unit / finishing steps, the reconciler) uses it.

The Celery app is built here, from settings, by a function: the API needs it to send tasks and to
ping the broker in ``/health``. The task *implementations* live in ``workers.tasks``, which imports
this module; ``app`` never imports ``workers`` (tests/test_import_rules.py enforces it).

Delivery is at-least-once: acks_late + reject_on_worker_lost redeliver a task whose worker died,
prefetch 1 keeps one task per worker process, and the broker's visibility timeout is longer than
the task time limit so a long unit is not handed to a second worker while the first still runs.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from celery import Celery
from sqlalchemy.orm import Session

from app.db import on_commit
from app.settings import Settings, get_settings

log = logging.getLogger(__name__)

QUEUE = "gpu"
PLAN_JOB = "memaudit.plan_job"
RUN_UNIT = "memaudit.run_unit"
FINISH_JOB = "memaudit.finish_job"
TASK_NAMES = (PLAN_JOB, RUN_UNIT, FINISH_JOB)
WORKER_TASKS_MODULE = "workers.tasks"  # loaded by the worker process only (a name, never imported here)

_PENDING_KEY = "memaudit.pending_tasks"
Task = tuple[str, tuple[object, ...]]


def make_celery(settings: Settings) -> Celery:
    settings.ensure_dirs()
    celery = Celery("memaudit", broker=settings.resolved_broker_url, include=[WORKER_TASKS_MODULE])
    celery.conf.update(
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_time_limit=settings.task_time_limit_s,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_concurrency=1,  # one process per GPU: start one worker per device
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(settings),
    )
    return celery


def _transport_options(settings: Settings) -> dict[str, object]:
    if settings.resolved_broker_url.startswith("sqla+"):
        # kombu's SQLAlchemy transport passes its options to create_engine and has no
        # visibility timeout: a message taken by a killed worker is re-enqueued by reconcile().
        return {}
    return {"visibility_timeout": max(settings.visibility_timeout_s, settings.task_time_limit_s + 60)}


@lru_cache(maxsize=1)
def get_celery() -> Celery:
    return make_celery(get_settings())


def _send(task: Task) -> None:
    name, args = task
    try:
        get_celery().send_task(name, args=list(args), queue=QUEUE)
    except Exception:  # the rows are committed: a worker's reconcile() re-sends what was lost
        log.exception("could not enqueue %s%s; the reconciler will send it again", name, args)


def _send_pending(session: Session) -> None:
    pending: list[Task] = session.info.pop(_PENDING_KEY, [])
    for task in dict.fromkeys(pending):  # each distinct task once, in the order registered
        _send(task)


def enqueue_on_commit(session: Session, name: str, *args: object) -> None:
    """Send task ``name(*args)`` once ``session``'s transaction commits; never if it rolls back.

    Register it inside the transaction whose rows the task will read. Registering the same task twice
    in one transaction sends it once.
    """
    if name not in TASK_NAMES:
        raise ValueError(f"unknown task {name!r}")
    pending: list[Task] | None = session.info.get(_PENDING_KEY)
    if pending is None:  # the first task of this transaction
        pending = session.info[_PENDING_KEY] = []
        on_commit(session, lambda: _send_pending(session), lambda: session.info.pop(_PENDING_KEY, None))
    pending.append((name, tuple(args)))


def pending_tasks(session: Session) -> list[Task]:
    """What ``session`` will send when it commits (for logging and tests)."""
    return list(dict.fromkeys(session.info.get(_PENDING_KEY, [])))
