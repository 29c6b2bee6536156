"""Rows -> response models (URLs built here so every route links the same way)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.api.schemas import DatasetOut, JobOut, Progress, ScoreOut, ScoresInfo
from app.db import Dataset, Job
from app.services.jobs import aware, job_timings, job_units
from app.services.scores import ScoredSample


def dataset_out(row: Dataset) -> DatasetOut:
    details = row.details or {}
    return DatasetOut(
        id=row.id, filename=row.filename, sha256=row.sha256, shape=list(row.shape), dtype=row.dtype,
        min=row.min_value, max=row.max_value, count=int(row.shape[0]), size_bytes=row.size_bytes,
        created_at=aware(row.created_at), format=row.format or row.storage_path.rsplit(".", 1)[-1],
        has_keys=bool(details.get("has_keys")), has_labels=bool(details.get("has_labels")),
        label_names=details.get("label_names"),
    )


def job_url(job_id: str) -> str:
    return f"/jobs/{job_id}"


def job_out(session: Session, job: Job) -> JobOut:
    units = job_units(session, job.id)
    return JobOut(
        id=job.id, kind=job.kind, state=job.state,
        progress=Progress.model_validate(job.progress_document()),
        timings=job_timings(job, units),
        error=job.error,
        summary=job.summary,
        scores=ScoresInfo(available=job.scores_units > 0, provisional=job.scores_provisional,
                          units=job.scores_units, url=f"{job_url(job.id)}/scores"),
        device=job.device, n_samples=job.n_samples, image_shape=list(job.image_shape),
        spec={key: value for key, value in job.spec.items() if key != "facts"},
        url=job_url(job.id),
    )


def is_confident(score_lo: float | None, threshold: float | None) -> bool:
    return score_lo is not None and threshold is not None and score_lo > threshold


def score_out(scored: ScoredSample, threshold: float | None = None) -> ScoreOut:
    """``threshold``: confidence_threshold of the row's job."""
    row = scored.row
    sample_url = f"{job_url(row.job_id)}/samples/{row.sample_id}"
    return ScoreOut(
        job_id=row.job_id, sample_id=row.sample_id, key=scored.key, label=scored.label, rank=row.rank,
        score=row.score, log_p_in=row.log_p_in,
        log_p_out=row.log_p_out, n_in=row.n_in, n_out=row.n_out,
        score_se=row.score_se, score_lo=row.score_lo, score_hi=row.score_hi,
        confident=is_confident(row.score_lo, threshold),
        rho=row.rho, within_tau_count=row.within_tau_count, nearest_copy_count=row.nearest_copy_count,
        image_url=f"{sample_url}/image.png", url=sample_url,
    )
