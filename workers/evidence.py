"""The finishing step's neighbour evidence (models/evidence.py), stored as `<artifacts>/<job>/neighbours.npz`
(app/services/evidence.py reads it).

Computed once per job, after the final scores and before the job succeeds; the API route and the report only
read it (app/services/evidence.py). Written atomically like the unit artifacts. A job whose images cannot be
read any more still succeeds, without evidence (the report and the route say so).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.services.errors import ServiceError
from app.services.evidence import EVIDENCE_FILE
from app.services.pixel_files import FACTS_OF, keep_pixel_file
from app.settings import get_settings
from models.evidence import Evidence, EvidenceConfig, compute_evidence, save_evidence, with_copies
from models.imageset import ImageSet
from workers.results import temp_sibling

log = logging.getLogger(__name__)
# "dataset" / "heldout" -> the job's images, None when it has no such set
ImageLoader = Callable[[str], ImageSet | None]


def write_evidence(path: Path, evidence: Evidence) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_sibling(path)
    try:
        save_evidence(temp, evidence)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _copy_space(job_spec: dict[str, Any], kind: str) -> str:
    section = job_spec.get(kind) or {}
    embedding = (section.get("embedding") or {}).get("kind", "pixels")
    metric = "cosine" if kind == "mrgan" else section.get("metric", "euclidean")
    return f"{embedding}, {metric}"


def _scoring_unit(paths: list[Path], summary: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    reference = int(summary.get("scores_from_unit", 0) or 0)
    path = paths[min(reference, len(paths) - 1)]
    with np.load(path, allow_pickle=False) as data:
        unit_summary = json.loads(str(data["summary_json"]))
    return path, unit_summary


def _gan_copies(evidence: Evidence, job_spec: dict[str, Any], kind: str, paths: list[Path],
                summary: dict[str, Any]) -> Evidence:  # fmt: skip
    path, unit_summary = _scoring_unit(paths, summary)
    threshold = unit_summary.get("copy_threshold")
    with np.load(path, allow_pickle=False) as data:
        if threshold is None or "generated_nearest" not in data.files:
            return evidence
        nearest_of, distance = data["generated_nearest"], data["generated_distance"]
    return with_copies(evidence, nearest_of, distance, float(threshold), _copy_space(job_spec, kind))


def job_evidence(
    job_spec: dict[str, Any], kind: str, score: np.ndarray, load: ImageLoader, *,
    paths: list[Path] | None = None, summary: dict[str, Any] | None = None,
    generated: np.ndarray | None = None,
    config: EvidenceConfig = EvidenceConfig(),
) -> Evidence:  # fmt: skip
    """Pixels (intensities in [0, 1], Euclidean) for training / held-out / generated neighbours; for GAN
    jobs the copies come from the scoring unit's artifact, in the job's own feature space."""
    train = load("dataset")
    assert train is not None
    heldout = load("heldout")
    evidence = compute_evidence(score, train.pixels, heldout=None if heldout is None else heldout.pixels,
                                generated=generated, config=config)  # fmt: skip
    if kind in ("mrgan", "copy_test") and paths:
        evidence = _gan_copies(evidence, job_spec, kind, paths, summary or {})
    return evidence


def keep_display_copy(session: Session, job_spec: dict[str, Any], owner: str, field: str,
                      images: ImageSet) -> None:  # fmt: skip
    """Plain arrays have no canonical store: keep their pixel file (app/services/pixel_files.py) so the
    report reads single records, and the job's own images stay readable if a data-root file changes."""
    from app.services.datasets import dataset_store_of

    settings = get_settings()
    identity = job_spec.get("facts", {}).get(FACTS_OF[field], {}).get("identity")
    if not isinstance(identity, str) or dataset_store_of(job_spec[field], session, settings, owner, field):
        return
    try:
        keep_pixel_file(settings, identity, images)
    except OSError as error:  # a display copy is an optimisation; the report falls back to loading
        log.warning("cannot keep the display copy of %s: %s", field, error)


def finish_evidence(job_id: str, job_dir: Path, compute: Callable[[], Evidence]) -> float | None:
    """Compute and store the evidence; the seconds it took, or None when the images could not be read."""
    started = time.monotonic()
    try:
        evidence = compute()
    except ServiceError as error:
        log.warning("job %s: no neighbour evidence: %s: %s", job_id, error.field, error.message)
        return None
    except Exception:  # evidence illustrates the scores; it never keeps a finished audit from succeeding
        log.exception("job %s: computing the neighbour evidence failed; the job succeeds without it", job_id)
        return None
    try:
        write_evidence(job_dir / EVIDENCE_FILE, evidence)
    except OSError as error:
        log.warning("job %s: cannot store the neighbour evidence: %s", job_id, error)
        return None
    return time.monotonic() - started
