"""GET /scores?top=, GET /jobs/{job_id}/scores (keyset pages), one sample, its image and its neighbours;
images of generated samples and held-out images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from sqlalchemy.orm import Session

from app.api.deps import OwnerDep, SessionDep, SettingsDep
from app.api.presenters import score_out
from app.api.schemas import (
    NeighbourOut,
    SampleNeighboursOut,
    SampleOut,
    ScorePage,
    TauCountOut,
    TopScores,
)
from app.db import Job
from app.services import evidence as evidence_service
from app.services import jobs as job_service
from app.services import sample_images
from app.services import scores as service
from app.services.errors import Invalid
from app.services.exports import confidence_threshold
from app.services.gan_specs import GAN_KINDS
from app.services.tau_counts import counts_of_sample

router = APIRouter(tags=["scores"])
JobIdPath = Annotated[str, Path(max_length=64)]
SampleIdPath = Annotated[int, Path(ge=0, le=2**31 - 1)]  # a 32-bit column: larger is a 422, not a 500


@router.get("/scores", operation_id="top_scores", response_model=TopScores,
            responses={404: {"description": "no such job, or no finished job yet"}})
def top_scores(
    session: SessionDep, owner: OwnerDep, settings: SettingsDep,
    top: Annotated[int, Query(ge=1, description="how many, most memorized first")] = 100,
    job_id: Annotated[str | None, Query(max_length=64, description="default: latest succeeded job")] = None,
) -> TopScores:
    if top > settings.max_top:
        raise Invalid("top", f"at most {settings.max_top}; page through /jobs/{{id}}/scores for more")
    # job_id="" names no job (404); only an absent job_id means "the latest finished one"
    job = job_service.get_job(session, owner, job_id) if job_id is not None else service.latest_scored_job(
        session, owner)  # fmt: skip
    rows = service.top_scores(session, job.id, top)
    threshold = confidence_threshold(job)
    return TopScores(job_id=job.id, provisional=job.scores_provisional,
                     items=[score_out(r, threshold) for r in rows])


@router.get("/jobs/{job_id}/scores", operation_id="list_job_scores", response_model=ScorePage,
            responses={404: {"description": "no such job"}})
def list_job_scores(
    job_id: JobIdPath, session: SessionDep, owner: OwnerDep, settings: SettingsDep,
    sort: service.SortOrder = "score_desc",
    limit: Annotated[int, Query(ge=1, description="page size, at most MEMAUDIT_PAGE_SIZE_MAX")] = 100,
    cursor: Annotated[str | None, Query(max_length=512, description="previous page's next_cursor")] = None,
) -> ScorePage:
    if limit > settings.page_size_max:
        raise Invalid("limit", f"at most {settings.page_size_max}")
    job = job_service.get_job(session, owner, job_id)
    rows, next_cursor = service.score_page(session, job.id, sort, limit, cursor)
    threshold = confidence_threshold(job)
    return ScorePage(job_id=job.id, provisional=job.scores_provisional, sort=sort,
                     items=[score_out(r, threshold) for r in rows], next_cursor=next_cursor)


@router.get("/jobs/{job_id}/samples", operation_id="find_sample", response_model=SampleOut,
            responses={404: {"description": "no such job, or no sample with this key"}})
def find_sample(
    job_id: JobIdPath, session: SessionDep, owner: OwnerDep,
    key: Annotated[str, Query(min_length=1, max_length=1024, description="the sample's key (your id)")],
) -> SampleOut:
    job = job_service.get_job(session, owner, job_id)
    return _sample_out(session, job, service.sample_by_key(session, job.id, key))


@router.get("/jobs/{job_id}/samples/{sample_id}", operation_id="get_sample", response_model=SampleOut,
            responses={404: {"description": "no such job or no score for this sample yet"}})
def get_sample(job_id: JobIdPath, sample_id: SampleIdPath, session: SessionDep, owner: OwnerDep) -> SampleOut:
    job = job_service.get_job(session, owner, job_id)
    return _sample_out(session, job, service.sample_score(session, job.id, sample_id))


def _sample_out(session: Session, job: Job, scored: service.ScoredSample) -> SampleOut:
    threshold = confidence_threshold(job)
    score = scored.row.score
    above = None if threshold is None or score is None else bool(score > threshold)
    taus = None
    if job.kind in GAN_KINDS:
        taus = [TauCountOut(**row) for row in counts_of_sample(session, job.id, scored.row.sample_id)]
    return SampleOut(**score_out(scored, threshold).model_dump(), provisional=job.scores_provisional,
                     highly_memorized=above, tau_counts=taus)  # fmt: skip


@router.get("/jobs/{job_id}/samples/{sample_id}/image.png", operation_id="get_sample_image",
            response_class=Response, responses={200: {"content": {"image/png": {}}}, 404: {}})
def get_sample_image(
    job_id: JobIdPath, sample_id: SampleIdPath, session: SessionDep, owner: OwnerDep, settings: SettingsDep
) -> Response:
    png = sample_images.sample_png(session, settings, owner, job_id, sample_id)
    return Response(content=png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/jobs/{job_id}/samples/{sample_id}/neighbours", operation_id="get_sample_neighbours",
            response_model=SampleNeighboursOut,
            responses={404: {"description": "no such job or sample, job not succeeded, no evidence, or the "
                                            "sample is not flagged"}})
def get_sample_neighbours(job_id: JobIdPath, sample_id: SampleIdPath, session: SessionDep, owner: OwnerDep,
                          settings: SettingsDep) -> SampleNeighboursOut:  # fmt: skip
    found = evidence_service.sample_neighbours(session, settings, owner, job_id, sample_id)
    return SampleNeighboursOut(
        job_id=found.job_id, sample_id=found.sample_id, key=found.key, label=found.label,
        image_url=_image_url(found.job_id, "train", found.sample_id), flagged_rank=found.flagged_rank,
        space=found.space, metric="euclidean", train=[_neighbour(found.job_id, item) for item in found.train],
        heldout=None if found.heldout is None else _neighbour(found.job_id, found.heldout),
        generated=None if found.generated is None else _neighbour(found.job_id, found.generated),
        copies=[_neighbour(found.job_id, item) for item in found.copies], copies_space=found.copies_space,
        copy_threshold=found.copy_threshold,
    )  # fmt: skip


def _image_url(job_id: str, role: str, index: int) -> str:
    folder = {"train": "samples", "heldout": "heldout", "generated": "generated"}[role]
    return f"/jobs/{job_id}/{folder}/{index}/image.png"


def _neighbour(job_id: str, item: evidence_service.NeighbourItem) -> NeighbourOut:
    return NeighbourOut(role=item.role, index=item.index, key=item.key, label=item.label,  # type: ignore[arg-type]
                        distance=item.distance, image_url=_image_url(job_id, item.role, item.index))


def _png(content: bytes) -> Response:
    headers = {"Cache-Control": "private, max-age=3600"}
    return Response(content=content, media_type="image/png", headers=headers)


@router.get("/jobs/{job_id}/generated/{index}/image.png", operation_id="get_generated_image",
            response_class=Response, responses={200: {"content": {"image/png": {}}}, 404: {}})
def get_generated_image(job_id: JobIdPath, index: SampleIdPath, session: SessionDep, owner: OwnerDep,
                        settings: SettingsDep) -> Response:  # fmt: skip
    """A generated sample: a GAN job's scoring unit's images, a VAE job's fold-model samples."""
    return _png(evidence_service.generated_png(session, settings, owner, job_id, index))


@router.get("/jobs/{job_id}/heldout/{index}/image.png", operation_id="get_heldout_image",
            response_class=Response, responses={200: {"content": {"image/png": {}}}, 404: {}})
def get_heldout_image(job_id: JobIdPath, index: SampleIdPath, session: SessionDep, owner: OwnerDep,
                      settings: SettingsDep) -> Response:  # fmt: skip
    """One image of the job's held-out set."""
    return _png(evidence_service.heldout_png(session, settings, owner, job_id, index))
