"""Celery tasks: thin wrappers taking ids; the work is in workers.runner."""

from __future__ import annotations

from celery import shared_task
from sqlalchemy.exc import OperationalError

from workers import runner
from workers.celery_app import FINISH_JOB, PLAN_JOB, RUN_UNIT

# A transient DB error (connection drop) is retried with backoff instead of failing the job.
_RETRY = {"autoretry_for": (OperationalError,), "retry_backoff": 2, "retry_backoff_max": 60, "max_retries": 8}


@shared_task(name=PLAN_JOB, acks_late=True, **_RETRY)
def plan_job(job_id: str) -> None:
    runner.plan_job(job_id)


@shared_task(name=RUN_UNIT, acks_late=True, **_RETRY)
def run_unit(job_id: str, index: int) -> None:
    try:
        runner.run_unit(job_id, index)
    except OperationalError:
        runner.release_after_db_error(job_id, index)
        raise


@shared_task(name=FINISH_JOB, acks_late=True, **_RETRY)
def finish_job(job_id: str) -> None:
    runner.finish_job(job_id)
