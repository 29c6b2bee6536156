"""Fill the report's evidence panel (app/reports/evidence.py) from the job's stored evidence
(``neighbours.npz``, written by the finishing step) and single records of its images
(app/services/records.py): nothing is searched, and no image set is loaded whole, at request time."""

from __future__ import annotations

import logging

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import Job, SampleScore
from app.reports.evidence import EvidenceFigure, EvidencePanel, EvidenceRow
from app.services.errors import ServiceError
from app.services.evidence import generated_images, job_evidence, sample_keys
from app.services.records import read_records
from app.settings import Settings
from models.evidence import Evidence

log = logging.getLogger(__name__)
EVIDENCE_ROWS = 12
COPIES_SHOWN = 4


def _named(prefix: str, index: int, names: dict[int, tuple[str | None, str | None]]) -> str:
    key, label = names.get(index, (None, None))
    return f"{prefix} #{index}" + (f" {key}" if key else "") + (f" [{label}]" if label is not None else "")


def _safe_records(session: Session, settings: Settings, job: Job, which: str,
                  ids: list[int]) -> dict[int, np.ndarray]:  # fmt: skip
    try:
        return read_records(session, settings, job, which, ids)
    except ServiceError as error:  # the panel still shows the distances, without pictures
        log.warning("report evidence: %s: %s", error.field, error.message)
        return {}


def _scores(session: Session, job_id: str, ids: list[int]) -> dict[int, float | None]:
    query = select(SampleScore.sample_id, SampleScore.score).where(
        SampleScore.job_id == job_id, SampleScore.sample_id.in_(ids))
    return {int(sample_id): score for sample_id, score in session.execute(query)}


def _wanted(evidence: Evidence, rows: int) -> tuple[list[int], list[int], list[int]]:
    """Training, held-out and generated indices the first ``rows`` flagged samples show."""
    train = list(evidence.sample_ids[:rows]) + [i for i in evidence.train_index[:rows].ravel() if i >= 0]
    heldout = [] if evidence.heldout_index is None else list(evidence.heldout_index[:rows])
    generated = [] if evidence.generated_index is None else list(evidence.generated_index[:rows])
    if evidence.copies_index is not None:
        generated += [i for i in evidence.copies_index[:rows, :COPIES_SHOWN].ravel() if i >= 0]
    return [int(i) for i in train], [int(i) for i in heldout], [int(i) for i in generated]


def build_evidence_panel(session: Session, settings: Settings, job: Job,
                         rows: int = EVIDENCE_ROWS) -> EvidencePanel | None:  # fmt: skip
    evidence = job_evidence(settings, job)
    if evidence is None or len(evidence.sample_ids) == 0:
        return None
    train_ids, heldout_ids, generated_ids = _wanted(evidence, rows)
    train = _safe_records(session, settings, job, "dataset", train_ids)
    heldout = _safe_records(session, settings, job, "heldout", heldout_ids)
    generated = generated_images(settings, job, generated_ids)
    names = sample_keys(session, job.id, train_ids)
    scores = _scores(session, job.id, train_ids[:rows])
    panel_rows = []
    for row, sample_id in enumerate(int(i) for i in evidence.sample_ids[:rows]):
        figures = [EvidenceFigure(_named("train", int(i), names), float(d), train.get(int(i)))
                   for i, d in zip(evidence.train_index[row], evidence.train_distance[row], strict=True)
                   if i >= 0 and np.isfinite(d)]  # fmt: skip
        for label, index, distance, images in (
            ("held-out", evidence.heldout_index, evidence.heldout_distance, heldout),
            ("generated", evidence.generated_index, evidence.generated_distance, generated),
        ):
            if index is not None and distance is not None and index[row] >= 0:
                figures.append(EvidenceFigure(f"{label} #{int(index[row])}", float(distance[row]),
                                              images.get(int(index[row]))))  # fmt: skip
        copies = []
        if evidence.copies_index is not None and evidence.copies_distance is not None:
            copies = [EvidenceFigure(f"copy: generated #{int(i)}", float(d), generated.get(int(i)))
                      for i, d in zip(evidence.copies_index[row, :COPIES_SHOWN],
                                      evidence.copies_distance[row, :COPIES_SHOWN], strict=True) if i >= 0]
        panel_rows.append(EvidenceRow(sample_id, _named("train", sample_id, names), scores.get(sample_id),
                                      train.get(sample_id), figures, copies))  # fmt: skip
    return EvidencePanel(panel_rows, evidence.space, evidence.metric, evidence.copies_space,
                         flagged=len(evidence.sample_ids))  # fmt: skip
