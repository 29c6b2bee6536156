"""POST /jobs, GET /jobs, GET /jobs/{job_id}, GET /jobs/{job_id}/provenance, POST /jobs/{job_id}/cancel."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from app.api.deps import OwnerDep, SessionDep, SettingsDep
from app.api.presenters import job_out, job_url
from app.api.schemas import JobList, JobOut, ProvenanceOut
from app.lifecycle import JobState
from app.services import jobs as service
from app.services.specs import JobCreate

router = APIRouter(prefix="/jobs", tags=["jobs"])
log = logging.getLogger(__name__)

CREATE_RESPONSES: dict[int | str, dict[str, object]] = {
    400: {"description": "body is not parseable (e.g. not UTF-8 JSON)"},
    404: {"description": "dataset id unknown"},
    409: {"description": "Idempotency-Key reused with another body"},
    413: {"description": "body over MEMAUDIT_MAX_JSON_BYTES"},
    422: {"description": "invalid spec; the location names the field"},
    429: {"description": "too many new jobs for this owner; see Retry-After"},
}


@router.post("", operation_id="create_job", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED,
             responses=CREATE_RESPONSES)
def create_job(
    body: JobCreate, session: SessionDep, settings: SettingsDep, owner: OwnerDep, response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> JobOut:
    created = service.create_job(session, settings, owner, body, idempotency_key)  # enqueues on commit
    if created.created:
        log.info("job %s created by owner %s", created.job.id, owner)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = job_url(created.job.id)
    return job_out(session, created.job)


@router.get("", operation_id="list_jobs", response_model=JobList)
def list_jobs(
    session: SessionDep, owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50, offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    state: JobState | None = None,
) -> JobList:
    rows = service.list_jobs(session, owner, limit, offset, state)
    return JobList(items=[job_out(session, row) for row in rows], limit=limit, offset=offset)


@router.get("/{job_id}", operation_id="get_job", response_model=JobOut,
            responses={404: {"description": "no such job for this key"}})
def get_job(job_id: str, session: SessionDep, owner: OwnerDep) -> JobOut:
    return job_out(session, service.get_job(session, owner, job_id))


@router.get("/{job_id}/provenance", operation_id="get_job_provenance", response_model=ProvenanceOut,
            response_model_by_alias=True, response_model_exclude_unset=True,
            responses={404: {"description": "no such job, or it has not succeeded yet"}})
def get_job_provenance(job_id: str, session: SessionDep, owner: OwnerDep) -> ProvenanceOut:
    return ProvenanceOut.model_validate(service.job_provenance(session, owner, job_id))


@router.post("/{job_id}/cancel", operation_id="cancel_job", response_model=JobOut,
             status_code=status.HTTP_202_ACCEPTED,
             responses={404: {"description": "no such job"}, 409: {"description": "job already finished"}})
def cancel_job(job_id: str, session: SessionDep, owner: OwnerDep) -> JobOut:
    return job_out(session, service.cancel_job(session, owner, job_id))
