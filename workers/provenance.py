"""A job's provenance block (app.provenance), assembled by the worker: inputs fingerprinted at plan
time, configuration and per-unit devices / precision / seconds, and the time of each phase."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app import provenance
from app.db import Job, Unit
from app.services.provenance_inputs import job_inputs, read_inputs, write_inputs
from app.services.specs import build_configs
from app.settings import get_settings

GAN_SECTIONS = ("mrgan", "copy_test")


def record_inputs(session: Session, job: Job, job_dir: Path, images_of: Callable[[str], Any]) -> None:
    """Once per job, at plan time; a later plan (redelivered task) keeps the first record."""
    if read_inputs(job_dir) is None:
        write_inputs(job_dir, job_inputs(job.spec, session, get_settings(), job.owner, images_of))


def job_config(job: Job) -> dict[str, Any]:
    """The configuration the job ran with: the resolved science configs of a VAE audit (preset and
    defaults filled in), the job's own section for GAN jobs."""
    if job.kind in GAN_SECTIONS:
        return {job.kind: job.spec.get(job.kind) or {}}
    configs = build_configs(job.spec)
    audit = {key: value for key, value in configs.audit.to_dict().items() if key != "device"}
    return {"model": configs.model.to_dict(), "training": configs.training.to_dict(), "audit": audit}


def _seconds(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def unit_records(units: Sequence[Unit], environment: dict[str, Any] | None, device: str | None
                 ) -> list[dict[str, Any]]:  # fmt: skip
    """Per unit, DB facts (attempts, seconds) beside what its artifact recorded (device, precision);
    units whose artifacts record no device (GAN units) show the device the job was planned for."""
    recorded = (environment or {}).get("units") or []
    # matched by model ids: with the adaptive stop the result holds only some units (skipped ones have none)
    by_models = {tuple(r["model_ids"]): r for r in recorded if isinstance(r, dict) and r.get("model_ids")}
    records = []
    for unit in units:
        ran = by_models.get(tuple(unit.model_ids), {})
        facts = {"index": unit.index, "model_ids": list(unit.model_ids), "attempts": unit.attempts,
                 "seconds": unit.seconds, "device": device,
                 "state": str(unit.state)}  # "skipped": made unnecessary by the adaptive stop
        records.append({**facts, **{key: value for key, value in ran.items() if key != "model_ids"}})
    return records


def phases(job: Job, units: Sequence[Unit], timings: dict[str, Any], finish_seconds: float) -> dict[str, Any]:
    starts = [unit.started_at for unit in units if unit.started_at is not None]
    ends = [unit.finished_at for unit in units if unit.finished_at is not None]
    return {
        "queued_seconds": _seconds(job.created_at, job.started_at),
        "units_wall_seconds": _seconds(min(starts), max(ends)) if starts and ends else None,
        "unit_seconds_total": sum(unit.seconds or 0.0 for unit in units),
        "train_seconds": timings.get("train_seconds"),
        "likelihood_seconds": timings.get("is_seconds"),
        "finish_seconds": finish_seconds,
    }


def job_provenance(job: Job, units: Sequence[Unit], job_dir: Path, summary: dict[str, Any],
                   finish_seconds: float) -> dict[str, Any]:  # fmt: skip
    return provenance.build(
        inputs=read_inputs(job_dir) or {},
        config=job_config(job),
        units=unit_records(units, summary.get("environment"), job.device),
        phases=phases(job, units, summary.get("timings") or {}, finish_seconds),
    )
