"""GET /jobs/{job_id}/scores.csv | scores.parquet (streamed) and GET /jobs/{job_id}/report (HTML)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse, StreamingResponse

from app.api.deps import OwnerDep, SessionDep, SettingsDep
from app.reports import render_report
from app.reports.build import build_report_data
from app.services import exports
from app.services import jobs as job_service

router = APIRouter(tags=["exports"])
JobIdPath = Annotated[str, Path(max_length=64)]
NOT_FOUND: dict[int | str, dict[str, object]] = {404: {"description": "no such job for this key"}}


def _attachment(job_id: str, suffix: str) -> dict[str, str]:
    # A CSV cannot carry the nested provenance block without breaking its readers: it links to it.
    return {"Content-Disposition": f'attachment; filename="memaudit-{job_id}-scores.{suffix}"',
            "Cache-Control": "no-store", "Link": f'</jobs/{job_id}/provenance>; rel="describedby"'}


@router.get("/jobs/{job_id}/scores.csv", operation_id="export_scores_csv", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}}}, **NOT_FOUND})
def export_scores_csv(job_id: JobIdPath, session: SessionDep, owner: OwnerDep) -> StreamingResponse:
    job = job_service.get_job(session, owner, job_id)  # 404 before the first byte is sent
    return StreamingResponse(exports.csv_stream(job.id), media_type=exports.MEDIA_TYPES["csv"],
                             headers=_attachment(job.id, "csv"))


@router.get("/jobs/{job_id}/scores.parquet", operation_id="export_scores_parquet",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/vnd.apache.parquet": {}}}, **NOT_FOUND})
def export_scores_parquet(job_id: JobIdPath, session: SessionDep, owner: OwnerDep) -> StreamingResponse:
    job = job_service.get_job(session, owner, job_id)
    return StreamingResponse(exports.parquet_stream(job), media_type=exports.MEDIA_TYPES["parquet"],
                             headers=_attachment(job.id, "parquet"))


@router.get("/jobs/{job_id}/report", operation_id="get_job_report", response_class=HTMLResponse,
            responses={200: {"content": {"text/html": {}}}, **NOT_FOUND})
def get_job_report(
    job_id: JobIdPath, session: SessionDep, owner: OwnerDep, settings: SettingsDep
) -> HTMLResponse:
    job = job_service.get_job(session, owner, job_id)
    html = render_report(build_report_data(session, settings, job))
    headers = {"Content-Disposition": f'inline; filename="memaudit-{job.id}-report.html"'}
    return HTMLResponse(html, headers=headers)
