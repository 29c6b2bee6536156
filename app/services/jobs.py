"""Jobs: creation (validated, idempotent), reading, listing and cooperative cancel.

The plan task is registered on the session that inserts the job row and sent only once that commits
(app.tasks.enqueue_on_commit), so a worker never sees an id that does not exist yet, and a refused
or rolled-back creation sends nothing. Units are planned by the worker (they are sized by its device).
The datasets' pixel files (app/services/pixel_files.py) are written before the job row, so that no image
request of the job decompresses a set.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import Job, Unit, utcnow
from app.lifecycle import JOB_ACTIVE, JOB_TERMINAL, JobState
from app.ratelimit import check_active_jobs, check_job_rate
from app.services.dataset_facts import check_likelihood, dataset_facts
from app.services.errors import Conflict, Invalid, NotFound
from app.services.gan_specs import GAN_KINDS, reject_gan_sections, validate_gan_job
from app.services.limits import check_fields, check_vae_cost
from app.services.pixel_files import prepare_job_pixel_files
from app.services.specs import JobCreate, request_hash
from app.services.transitions import request_cancel
from app.settings import Settings
from app.tasks import PLAN_JOB, enqueue_on_commit
from app.webhook_targets import BlockedTarget, check_at_submit
from models.config import AuditConfig, ModelConfig, TrainConfig


@dataclass(frozen=True)
class CreatedJob:
    job: Job
    created: bool  # False: an earlier request with the same Idempotency-Key


def _check_section(section: str, build: Any, data: dict[str, Any]) -> None:
    try:
        build(data)
    except ValueError as error:
        field, _, message = str(error).partition(": ")
        raise Invalid(f"{section}.{field}", message or str(error)) from None


def _validate(request: JobCreate, canonical: dict[str, Any], session: Session, settings: Settings,
              owner: str) -> dict[str, Any]:
    """Every check a worker would otherwise fail on, done before the job exists: each field alone
    (the bounds /openapi.json states), then, once the datasets resolve (unknown: 404), the rules
    that need them and what the job would cost, and last the webhook's address."""
    check_fields(canonical, settings)
    if request.kind in GAN_KINDS:
        facts = validate_gan_job(canonical, session, settings, owner)
    else:
        facts = _validate_vae_audit(canonical, session, settings, owner)
    if canonical["webhook_url"] is not None:
        try:
            check_at_submit(canonical["webhook_url"], allow_private=settings.webhook_allow_private)
        except BlockedTarget as error:
            raise Invalid("webhook_url", str(error)) from None
    return facts


def _validate_vae_audit(canonical: dict[str, Any], session: Session, settings: Settings,
                        owner: str) -> dict[str, Any]:  # fmt: skip
    _check_section("model", ModelConfig.from_dict, canonical["model"])
    _check_section("training", TrainConfig.from_dict, canonical["training"])
    _check_section("audit", AuditConfig.from_dict, canonical["audit"])
    train = dataset_facts(canonical["dataset"], session, settings, owner, "dataset")
    heldout = None
    if canonical["heldout"] is not None:
        heldout = dataset_facts(canonical["heldout"], session, settings, owner, "heldout")
    reject_gan_sections(canonical)
    check_likelihood(train, canonical["model"]["likelihood"], field="dataset")
    folds: int = canonical["audit"]["folds"]
    if folds > train.count:
        raise Invalid("audit.folds", f"K={folds} exceeds the {train.count} samples of the dataset")
    facts: dict[str, Any] = {"train": train.summary()}
    if heldout is not None:
        if heldout.image_shape != train.image_shape:
            raise Invalid("heldout", f"images are {list(heldout.image_shape)}, the training set's are "
                          f"{list(train.image_shape)}")
        facts["heldout"] = heldout.summary()
    facts["work"] = check_vae_cost(canonical, train, heldout, settings).parts
    return facts


def create_job(session: Session, settings: Settings, owner: str, request: JobCreate,
               idempotency_key: str | None) -> CreatedJob:
    canonical = request.canonical()
    digest = request_hash(canonical)
    if idempotency_key is not None:
        earlier = _by_idempotency_key(session, owner, idempotency_key)
        if earlier is not None:
            return CreatedJob(_same_request(earlier, digest), created=False)
    check_job_rate(session, settings, owner)
    check_active_jobs(session, settings, owner)
    facts = _validate(request, canonical, session, settings, owner)
    # The image route's pixel files exist before anyone can name the job (best effort: the route writes
    # them itself when missing); written only now, so that a refused job leaves nothing behind.
    prepare_job_pixel_files({**canonical, "facts": facts}, session, settings, owner)
    train_facts = facts["train"]
    job = Job(
        id=str(uuid.uuid4()), owner=owner, kind=request.kind, state=JobState.QUEUED,
        spec={**canonical, "facts": facts}, idempotency_key=idempotency_key, request_hash=digest,
        n_samples=train_facts["count"], image_shape=train_facts["image_shape"], progress={},
    )
    session.add(job)
    enqueue_on_commit(session, PLAN_JOB, job.id)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()  # a concurrent request with the same key won the race
        earlier = _by_idempotency_key(session, owner, idempotency_key or "")
        if earlier is None:
            raise
        return CreatedJob(_same_request(earlier, digest), created=False)
    return CreatedJob(job, created=True)


def _by_idempotency_key(session: Session, owner: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))


def _same_request(job: Job, digest: str) -> Job:
    if job.request_hash != digest:
        raise Conflict("Idempotency-Key", "this key was used for a different request body")
    return job


def get_job(session: Session, owner: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.owner != owner:
        raise NotFound("job_id", f"no job {job_id!r}")
    return job


def job_provenance(session: Session, owner: str, job_id: str) -> dict[str, Any]:
    """The provenance block of a finished job (app.provenance): 404 until the finishing step wrote it."""
    job = get_job(session, owner, job_id)
    block = (job.summary or {}).get("provenance")
    if not isinstance(block, dict):
        succeeded = job.state == JobState.SUCCEEDED
        why = "not recorded for this job" if succeeded else "written when the job succeeds"
        raise NotFound("job_id", f"job {job_id!r} has no provenance yet ({why})")
    return block


def list_jobs(session: Session, owner: str, limit: int, offset: int, state: JobState | None) -> list[Job]:
    query = select(Job).where(Job.owner == owner)
    if state is not None:
        query = query.where(Job.state == state)
    query = query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    return list(session.scalars(query))


def cancel_job(session: Session, owner: str, job_id: str) -> Job:
    """Queued -> cancelled at once; running -> cancelling (the worker stops between epochs).

    Cancelling a job that is cancelling already is a no-op; a finished job is a 409. The decision is
    the guarded UPDATE's, not this request's earlier read, so a job that succeeded meanwhile stays
    succeeded.
    """
    job = get_job(session, owner, job_id)
    moved = request_cancel(session, job.id)
    session.commit()
    session.refresh(job)
    if moved is None and job.state in JOB_TERMINAL:
        raise Conflict("state", f"the job already {job.state}")
    return job


def job_units(session: Session, job_id: str) -> list[Unit]:
    return list(session.scalars(select(Unit).where(Unit.job_id == job_id).order_by(Unit.index)))


def _seconds(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((aware(end) - aware(start)).total_seconds(), 3)


def aware(moment: dt.datetime) -> dt.datetime:
    # SQLite returns naive datetimes even for timezone-aware columns; they were stored in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def job_timings(job: Job, units: list[Unit]) -> dict[str, Any]:
    end = job.finished_at or (utcnow() if job.state in JOB_ACTIVE else None)
    unit_seconds = [unit.seconds for unit in units if unit.seconds is not None]
    return {
        "created_at": aware(job.created_at).isoformat(),
        "started_at": aware(job.started_at).isoformat() if job.started_at else None,
        "finished_at": aware(job.finished_at).isoformat() if job.finished_at else None,
        "queued_seconds": _seconds(job.created_at, job.started_at),
        "running_seconds": _seconds(job.started_at, end),
        "unit_seconds_total": round(sum(unit_seconds), 3) if unit_seconds else None,
    }
