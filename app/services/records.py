"""A few images of a job's training or held-out set, read record by record (never the whole set).

Reading goes through app/services/sample_images.py: a canonical store, a plain .npy, a pixel file or the
display copy below, each memory-mapped, so reading k images touches k records. Plain arrays (.npy / .npz
uploads, built-ins) have no store; the finishing step, which has them loaded anyway, keeps a uint8 copy for
display under ``<data_dir>/stores/records/``, named by the content identity the job recorded (so it is the
job's content even if the source changes later). Images must still be what the job was validated for,
otherwise NotFound names the field. Nothing is cached in the API process.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from app.db import Job
from app.settings import Settings
from models.formats.records import display_image
from models.imageset import ImageSet

FACTS_OF = {"dataset": "train", "heldout": "heldout"}


def _hwc(pixels: np.ndarray) -> np.ndarray:
    """(k, C, H, W) -> (k, H, W) for one channel, (k, H, W, C) otherwise: the store's layout."""
    return pixels[:, 0] if pixels.shape[1] == 1 else pixels.transpose(0, 2, 3, 1)


def records_file(settings: Settings, identity: str) -> Path:
    return settings.stores_dir / "records" / f"{hashlib.sha256(identity.encode()).hexdigest()[:40]}.npy"


def keep_records(settings: Settings, identity: str, images: ImageSet) -> Path:
    """Write the display copy (uint8, the store's layout) of ``images`` once, atomically."""
    path = records_file(settings, identity)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp.npy")
    try:
        np.save(temp, _hwc(images.as_uint8()), allow_pickle=False)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def read_records(session: Session, settings: Settings, job: Job, field: str,
                 ids: Iterable[int]) -> dict[int, np.ndarray]:  # fmt: skip
    """Images ``ids`` of the job's ``field`` ("dataset" or "heldout") as uint8 (H, W) or (H, W, 3), read
    record by record from a memory map (app/services/sample_images.py); ids outside the set are left out."""
    from app.services.sample_images import job_rows

    wanted = sorted({int(i) for i in ids})
    if not wanted or not job.spec.get(field):
        return {}
    rows = job_rows(job, session, settings, field)  # (N, H, W) or (N, H, W, C), memory-mapped
    return {i: display_image(rows[i]) for i in wanted if 0 <= i < len(rows)}
