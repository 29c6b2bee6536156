"""Reading a job's stored neighbour evidence (written by the finishing step, workers/evidence.py) and the
images it points at: generated samples and held-out images get their own PNG routes."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import Job, JobSample
from app.lifecycle import JobState
from app.services.errors import NotFound
from app.services.jobs import get_job
from app.settings import Settings
from models.evidence import Evidence, EvidenceConfig, load_evidence

EVIDENCE_FILE = "neighbours.npz"  # workers/evidence.py writes it
GENERATED_FILE = "generated.npy"  # VAE jobs: the fold models' pooled samples (workers/results.py)
GAN_KINDS = ("mrgan", "copy_test")
FLAGGED_RULE = (f"the top {EvidenceConfig.top} by score plus every sample above the job's "
                f"{EvidenceConfig.quantile} quantile, at most {EvidenceConfig.cap}")  # fmt: skip


@dataclass(frozen=True)
class NeighbourItem:
    role: str  # "train" | "heldout" | "generated"
    index: int
    distance: float
    key: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class SampleNeighbours:
    job_id: str
    sample_id: int
    flagged_rank: int  # 1 = the highest-scored flagged sample
    key: str | None
    label: str | None
    space: str
    metric: str
    train: list[NeighbourItem]
    heldout: NeighbourItem | None
    generated: NeighbourItem | None
    copies: list[NeighbourItem]
    copies_space: str | None
    copy_threshold: float | None


def evidence_file(settings: Settings, job_id: str) -> Path:
    return settings.resolved_artifacts_dir / job_id / EVIDENCE_FILE


def job_evidence(settings: Settings, job: Job) -> Evidence | None:
    """The job's evidence, None when it has none (finished before it was computed, or images unreadable)."""
    path = evidence_file(settings, job.id)
    if not path.is_file():
        return None
    try:
        return load_evidence(path)
    except (ValueError, OSError, KeyError):
        return None


def _finished_job(session: Session, owner: str, job_id: str) -> Job:
    job = get_job(session, owner, job_id)
    if job.state != JobState.SUCCEEDED:
        raise NotFound("job_id", f"job {job_id} is {job.state}: neighbours are computed when it succeeds")
    return job


def sample_keys(session: Session, job_id: str, ids: list[int]) -> dict[int, tuple[str | None, str | None]]:
    """(key, label) of the given training samples; absent when the job has none."""
    if not ids:
        return {}
    query = select(JobSample.sample_id, JobSample.key, JobSample.label).where(
        JobSample.job_id == job_id, JobSample.sample_id.in_(ids))
    return {int(sample_id): (key, label) for sample_id, key, label in session.execute(query)}


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _item(role: str, index: int, distance: float, names: dict[int, tuple[str | None, str | None]]
          | None = None) -> NeighbourItem:  # fmt: skip
    key, label = (names or {}).get(index, (None, None))
    return NeighbourItem(role=role, index=int(index), distance=float(distance), key=key, label=label)


def _one(role: str, index: np.ndarray | None, distance: np.ndarray | None, row: int) -> NeighbourItem | None:
    if index is None or distance is None or index[row] < 0 or not np.isfinite(distance[row]):
        return None
    return _item(role, int(index[row]), float(distance[row]))


def sample_neighbours(session: Session, settings: Settings, owner: str, job_id: str,
                      sample_id: int) -> SampleNeighbours:  # fmt: skip
    job = _finished_job(session, owner, job_id)
    if not 0 <= sample_id < job.n_samples:
        raise NotFound("sample_id", f"job {job_id} has samples 0..{job.n_samples - 1}")
    evidence = job_evidence(settings, job)
    if evidence is None:
        raise NotFound("job_id", f"job {job_id} has no neighbour evidence (it finished before evidence was "
                       "computed, or its images could not be read when it finished)")  # fmt: skip
    row = evidence.row_of(sample_id)
    if row is None:
        raise NotFound("sample_id", f"sample {sample_id} is not among the {len(evidence.sample_ids)} flagged "
                       f"samples of job {job_id} ({FLAGGED_RULE}); GET /jobs/{job_id}/scores lists them "
                       "in order")  # fmt: skip
    found = [(int(i), float(d)) for i, d in zip(evidence.train_index[row], evidence.train_distance[row],
                                               strict=True) if i >= 0 and np.isfinite(d)]  # fmt: skip
    names = sample_keys(session, job.id, [sample_id] + [i for i, _ in found])
    copies: list[NeighbourItem] = []
    if evidence.copies_index is not None and evidence.copies_distance is not None:
        copies = [_item("generated", int(i), float(d))
                  for i, d in zip(evidence.copies_index[row], evidence.copies_distance[row], strict=True)
                  if i >= 0]  # fmt: skip
    key, label = names.get(sample_id, (None, None))
    return SampleNeighbours(
        job_id=job.id, sample_id=sample_id, flagged_rank=row + 1, key=key, label=label,
        space=evidence.space, metric=evidence.metric,
        train=[_item("train", i, d, names) for i, d in found],
        heldout=_one("heldout", evidence.heldout_index, evidence.heldout_distance, row),
        generated=_one("generated", evidence.generated_index, evidence.generated_distance, row),
        copies=copies, copies_space=evidence.copies_space or None,
        copy_threshold=None if evidence.copies_index is None else _finite(evidence.copy_threshold),
    )  # fmt: skip


def _scoring_unit(job: Job) -> int:
    return int((job.summary or {}).get("scores_from_unit", 0) or 0)


def _generated_member(path: Path) -> np.ndarray | None:
    """A GAN unit's generated images: memory-mapped (units are written by numpy.savez, uncompressed), so a
    request reads its records only; read whole only from a compressed archive."""
    from models.formats.records import map_npz_member
    from models.imageset import DataError

    try:
        mapped = map_npz_member(path, "generated", "index")
    except DataError as error:
        raise NotFound("index", error.message) from None
    if mapped is not None:
        return mapped
    with np.load(path, allow_pickle=False) as data:
        return data["generated"] if "generated" in data.files else None


def generated_images(settings: Settings, job: Job, ids: list[int]) -> dict[int, np.ndarray]:
    """Generated samples ``ids`` as uint8 (H, W) or (H, W, 3): the scoring unit's images for GAN jobs,
    the fold models' pooled samples (memory-mapped) for VAE jobs; missing ids are left out."""
    folder = settings.resolved_artifacts_dir / job.id
    if job.kind in GAN_KINDS:
        path = folder / f"unit-{_scoring_unit(job):04d}.npz"
        if not path.is_file():
            return {}
        images = _generated_member(path)  # (m, C, H, W) uint8 (float in [0, 1] from older artifacts)
        if images is None:
            return {}
    else:
        path = folder / GENERATED_FILE
        if not path.is_file():
            return {}
        images = np.load(path, mmap_mode="r", allow_pickle=False)  # (S, C, H, W) float32 in [0, 1]
    wanted = [i for i in sorted(set(ids)) if 0 <= i < len(images)]
    pixels = np.asarray(images[wanted])
    if pixels.dtype != np.uint8:
        pixels = np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    pixels = pixels[:, 0] if pixels.shape[1] == 1 else pixels.transpose(0, 2, 3, 1)
    return dict(zip(wanted, pixels, strict=True))


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image  # Pillow only where an image is rendered

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def generated_png(session: Session, settings: Settings, owner: str, job_id: str, index: int) -> bytes:
    job = get_job(session, owner, job_id)
    found = generated_images(settings, job, [index])
    if index not in found:
        count = _generated_count(settings, job)
        where = "no generated samples (yet)" if count == 0 else f"generated samples 0..{count - 1}"
        raise NotFound("index", f"job {job_id} has {where}")
    return png_bytes(found[index])


def _generated_count(settings: Settings, job: Job) -> int:
    folder = settings.resolved_artifacts_dir / job.id
    if job.kind in GAN_KINDS:
        path = folder / f"unit-{_scoring_unit(job):04d}.npz"
        if not path.is_file():
            return 0
        images = _generated_member(path)
        return 0 if images is None else int(images.shape[0])
    path = folder / GENERATED_FILE
    return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0]) if path.is_file() else 0


def heldout_png(session: Session, settings: Settings, owner: str, job_id: str, index: int) -> bytes:
    from app.services.records import read_records

    job = get_job(session, owner, job_id)
    if not job.spec.get("heldout"):
        raise NotFound("job_id", f"job {job_id} has no held-out set")
    count = int(job.spec.get("facts", {}).get("heldout", {}).get("count", 0) or 0)
    found = read_records(session, settings, job, "heldout", [index])
    if index not in found:
        raise NotFound("index", f"job {job_id} has held-out images 0..{count - 1}")
    return png_bytes(found[index])

