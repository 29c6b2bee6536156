"""The Celery application, built from settings by a function (never at import time).

Delivery is at-least-once: acks_late + reject_on_worker_lost redeliver a task whose worker died,
prefetch 1 keeps one task per worker process, and the broker's visibility timeout is longer than
the task time limit so a long unit is not handed to a second worker while the first still runs.
The DB, not the broker, is the source of truth: tasks re-read their rows and are idempotent.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from app.settings import Settings, get_settings

QUEUE = "gpu"
PLAN_JOB = "memaudit.plan_job"
RUN_UNIT = "memaudit.run_unit"
FINISH_JOB = "memaudit.finish_job"


def make_celery(settings: Settings) -> Celery:
    settings.ensure_dirs()
    app = Celery("memaudit", broker=settings.resolved_broker_url, include=["workers.tasks"])
    app.conf.update(
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
    return app


def _transport_options(settings: Settings) -> dict[str, object]:
    if settings.resolved_broker_url.startswith("sqla+"):
        # kombu's SQLAlchemy transport passes its options to create_engine and has no
        # visibility timeout: a message taken by a killed worker is re-enqueued by reconcile().
        return {}
    return {"visibility_timeout": max(settings.visibility_timeout_s, settings.task_time_limit_s + 60)}


@lru_cache(maxsize=1)
def get_celery() -> Celery:
    return make_celery(get_settings())


def enqueue(task_name: str, *args: object) -> None:
    """Send a task by name; callers do this only after the rows it reads have committed."""
    get_celery().send_task(task_name, args=list(args), queue=QUEUE)
