"""One training image of a job as PNG, read as one record from a memory map: never the whole dataset.

Where a job's pixels are read from (models/formats/records.py):

- a dataset with a canonical store (every non-array format, every conversion): the store's ``images.npy``;
- a plain ``.npy`` (an upload or a data-root file): the file itself;
- a compressed ``.npz`` (upload or data root) or a built-in: its *pixel file*
  (app/services/pixel_files.py: uint8 as displayed, keyed by the content identity like the stores), which
  POST /datasets or POST /jobs wrote, the worker when it planned the job, and this route only if it is
  still missing.

A store or pixel file made from the content identity the job recorded is a copy of exactly the job's images
and is read without looking at the source again; otherwise (a plain ``.npy``, nothing converted yet) the
request checks the source's identity against the job's, so a replaced file answers 404 instead of another
image. Nothing is cached in the API process but the page cache's pages of
the rows that were read.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.db import Job
from app.services.data_identity import dataset_identity
from app.services.dataset_store import as_service_error, store_dir
from app.services.datasets import dataset_store_of
from app.services.errors import NotFound
from app.services.jobs import get_job
from app.services.pixel_files import (
    FACTS_OF,
    legacy_copy,
    needs_pixel_file,
    pixel_file,
    plain_array,
    prepare_job_pixel_files,
    write_pixels,
)
from app.settings import Settings
from models.formats.records import display_image, map_npy
from models.formats.store import IMAGES, is_store
from models.imageset import DataError

FIELD = "dataset"


def image_rows(spec: dict[str, Any], identity: str, session: Session, settings: Settings, owner: str,
               field: str = FIELD) -> np.ndarray:  # fmt: skip
    """The dataset's images as a memory map (N, H, W) or (N, H, W, C), any accepted element type; the
    pixel file is written first when the dataset needs one and has none yet."""
    try:
        store = store_dir(settings, identity, {})
        if is_store(store):
            return map_npy(store / IMAGES, field)
        array_file = plain_array(spec, session, settings, owner, field)
        if needs_pixel_file(spec, array_file):
            return map_npy(write_pixels(spec, identity, array_file, session, settings, owner, field), field)
        if array_file is not None:  # a plain .npy
            return map_npy(array_file, field)
        converted = dataset_store_of(spec, session, settings, owner, field)  # a format or a conversion
        if converted is None:
            raise NotFound(field, "this dataset has no images to show")
        return map_npy(converted / IMAGES, field)
    except DataError as error:
        raise as_service_error(error) from None


def prepare_sample_images(job: Job, session: Session, settings: Settings) -> None:
    """Write the job's pixel files now if they are still missing (the worker, while planning: POST /jobs
    normally wrote them already), so that no image request converts a set. Best effort."""
    prepare_job_pixel_files(job.spec, session, settings, job.owner)


def _snapshot(settings: Settings, identity: str, field: str) -> np.ndarray | None:
    """A store or pixel file made from exactly the content ``identity`` names, if one exists: a copy of
    the job's images that no later change to the source can alter."""
    try:
        store = store_dir(settings, identity, {})
        if is_store(store):
            return map_npy(store / IMAGES, field)
        for copy in (pixel_file(settings, identity), legacy_copy(settings, identity)):
            if copy.is_file():
                return map_npy(copy, field)
        return None
    except DataError as error:
        raise as_service_error(error) from None


def job_rows(job: Job, session: Session, settings: Settings, field: str = FIELD) -> np.ndarray:
    """The images of the job's ``field`` ("dataset" or "heldout") as a memory map (N, H, W) or
    (N, H, W, C): the content the job was validated for, else NotFound saying they are no longer there."""
    spec, recorded = job.spec[field], job.spec.get("facts", {}).get(FACTS_OF[field], {})
    expected = recorded.get("identity")
    # The job's own content, converted before: no need to identify the source again (a 60k-file folder
    # takes over a second to walk).
    rows = None if expected is None else _snapshot(settings, expected, field)
    if rows is None:
        identity = dataset_identity(spec, session, settings, job.owner, field)
        if expected is not None and expected != identity:
            raise NotFound(field, f"the images of job {job.id} are no longer available: the dataset "
                                  "changed after the job was submitted")  # fmt: skip
        rows = image_rows(spec, identity, session, settings, job.owner, field)
    count, shape = recorded.get("count"), recorded.get("image_shape")
    channels = 1 if rows.ndim == 3 else int(rows.shape[3])
    if (count is not None and count != rows.shape[0]) or (
        isinstance(shape, list) and shape != [channels, int(rows.shape[1]), int(rows.shape[2])]
    ):
        raise NotFound(field, f"the images of job {job.id} are no longer available: the dataset now "
                              f"holds {rows.shape[0]} images of {list(rows.shape[1:])}")  # fmt: skip
    return rows


def sample_png(session: Session, settings: Settings, owner: str, job_id: str, sample_id: int) -> bytes:
    from PIL import Image  # Pillow only where an image is rendered

    job = get_job(session, owner, job_id)
    if not 0 <= sample_id < job.n_samples:
        raise NotFound("sample_id", f"job {job_id} has samples 0..{job.n_samples - 1}")
    pixels = display_image(job_rows(job, session, settings)[sample_id])  # (H, W) or (H, W, 3) uint8
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
