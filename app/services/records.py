"""A few images of a job's training or held-out set, read record by record (never the whole set).

Reading goes through app/services/sample_images.py: a canonical store, a plain .npy or a pixel file
(app/services/pixel_files.py; the finishing step keeps one of every plain array, named by the content
identity the job recorded, so it is the job's content even if the source changes later), each
memory-mapped, so reading k images touches k records. Images must still be what the job was validated
for, otherwise NotFound names the field. Nothing is cached in the API process.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from sqlalchemy.orm import Session

from app.db import Job
from app.settings import Settings
from models.formats.records import display_image


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
