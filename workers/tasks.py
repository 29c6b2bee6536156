"""Celery tasks: thin wrappers taking ids; the work is in workers.runner, the names in app.tasks.

A transient DB error (connection drop) is retried with exponential backoff and never fails the job
(the runner gives the claimed attempt back first). Any other exception would recur on every
redelivery (and the reconciler would re-send the step forever), so it fails the job at once, with the
step and the reason as its error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import shared_task
from sqlalchemy.exc import OperationalError

from app.db import session_scope
from app.services.transitions import fail_job
from app.tasks import FINISH_JOB, PLAN_JOB, RUN_UNIT
from workers import runner

log = logging.getLogger(__name__)
_RETRY = {"autoretry_for": (OperationalError,), "retry_backoff": 2, "retry_backoff_max": 60, "max_retries": 8}


def _fail_job_on_crash(job_id: str, step: str, work: Callable[[], None]) -> None:
    try:
        work()
    except OperationalError:
        raise
    except Exception as error:
        log.exception("%s of job %s crashed; failing the job", step, job_id)
        with session_scope() as session:
            fail_job(session, job_id, f"{step}: {type(error).__name__}: {error}")


@shared_task(name=PLAN_JOB, acks_late=True, **_RETRY)
def plan_job(job_id: str) -> None:
    _fail_job_on_crash(job_id, "planning", lambda: runner.plan_job(job_id))


@shared_task(name=RUN_UNIT, acks_late=True, **_RETRY)
def run_unit(job_id: str, index: int) -> None:
    _fail_job_on_crash(job_id, f"unit {index}", lambda: runner.run_unit(job_id, index))


@shared_task(name=FINISH_JOB, acks_late=True, **_RETRY)
def finish_job(job_id: str) -> None:
    _fail_job_on_crash(job_id, "finishing step", lambda: runner.finish_job(job_id))
