"""Per-owner limits on job creation, each a 429 with Retry-After: at most ``job_rate_limit`` new jobs in
any sliding window of ``job_rate_window_s`` seconds, and at most ``max_active_jobs`` jobs queued or
running at once.

Counted from the jobs table itself (index ix_jobs_owner_created), so every API replica and restart
sees the same count and nothing extra is stored. An Idempotency-Key replay creates nothing and is
never limited. Two requests racing at a limit can both pass (one job over, never more per racer).
"""

from __future__ import annotations

import datetime as dt
import math

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import Job, utcnow
from app.lifecycle import JOB_ACTIVE
from app.services.errors import ServiceError
from app.settings import Settings


class RateLimited(ServiceError):
    status_code = 429

    def __init__(self, field: str, message: str, retry_after_s: int) -> None:
        super().__init__(field, message)
        self.retry_after_s = retry_after_s


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def check_job_rate(session: Session, settings: Settings, owner: str) -> None:
    """Raise RateLimited when ``owner`` already created the maximum of jobs within the window."""
    limit = settings.job_rate_limit
    if limit <= 0:
        return
    now, window = utcnow(), dt.timedelta(seconds=settings.job_rate_window_s)
    recent = session.scalars(
        select(Job.created_at).where(Job.owner == owner, Job.created_at > now - window)
        .order_by(Job.created_at.desc()).limit(limit)
    ).all()
    if len(recent) < limit:
        return
    # The window frees a slot when the oldest of the last ``limit`` creations leaves it.
    retry_after = max(1, math.ceil((_aware(recent[-1]) + window - now).total_seconds()))
    raise RateLimited("jobs", f"at most {limit} new jobs per {settings.job_rate_window_s} s for this owner; "
                      f"retry in {retry_after} s", retry_after)


# A finishing job frees its slot at an unknown moment; clients poll again after this long.
ACTIVE_JOBS_RETRY_AFTER_S = 30


def check_active_jobs(session: Session, settings: Settings, owner: str) -> None:
    """Raise RateLimited when ``owner`` already has ``max_active_jobs`` jobs queued or running."""
    limit = settings.max_active_jobs
    if limit <= 0:
        return
    active = session.scalar(
        select(func.count()).select_from(Job).where(Job.owner == owner, Job.state.in_(sorted(JOB_ACTIVE)))
    ) or 0
    if active >= limit:
        raise RateLimited("jobs", f"at most {limit} active jobs per owner (MEMAUDIT_MAX_ACTIVE_JOBS); "
                          f"{active} are queued or running: wait for one to finish or cancel one",
                          ACTIVE_JOBS_RETRY_AFTER_S)
