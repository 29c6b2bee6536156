"""Pixel files: the one uint8 display copy of a dataset whose images cannot be memory-mapped as they are.

``<data_dir>/stores/pixels/<digest>.npy`` holds a dataset's images as displayed (uint8, channels last, a
single channel dropped: ``display_rows`` of models/formats/records.py, the pixels ``ImageSet.as_uint8``
gives), named by the content identity (app/services/data_identity.py) and so a copy of exactly that
content, whatever happens to the source later. It is written chunk by chunk to a temporary name and
renamed into place: readers see it whole or not at all, concurrent writers end with the same bytes.

Which datasets get one: a compressed ``.npz`` (upload or data-root file) and a built-in (gzip idx files)
need one for the image route, as early as possible, so that no image request decompresses a set:

- POST /datasets writes it for an ``.npz`` upload once the upload is recorded;
- POST /jobs for the job's training and held-out sets, once the job is valid and before its row exists
  (a refused job writes nothing); a built-in's facts are read back from its pixel file from then on
  (app/services/dataset_facts.py), so a restarted API does not decompress it either;
- the worker again when it plans the job, and the image route itself, if it is still missing.

Every write but the image route's is best effort: a failure (a full disk) is logged, the file is not
there, and the next reader writes it. The finishing step, which has the images loaded anyway, also keeps
the pixel file of every plain array (``keep_pixel_file``; an ``.npy`` too: a data-root file may change
after the job, and the job's own images stay readable from the copy). Earlier versions kept that copy
under ``stores/records/`` with the same name; it is still read there (``legacy_copy``), never written.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.services.data_identity import dataset_identity
from app.services.dataset_store import conversion_of
from app.services.datasets import data_root_paths, get_dataset, is_array_upload, uploaded_file
from app.services.errors import NotFound, ServiceError
from app.settings import Settings
from models.formats.records import (
    CHUNK_BYTES,
    builtin_image_chunks,
    npz_image_chunks,
    write_pixel_file,
)
from models.imageset import DataError, ImageSet

log = logging.getLogger(__name__)
FACTS_OF = {"dataset": "train", "heldout": "heldout"}  # a job's spec key -> its spec["facts"] key


def pixel_file(settings: Settings, identity: str) -> Path:
    return settings.stores_dir / "pixels" / f"{_digest(identity)}.npy"


def legacy_copy(settings: Settings, identity: str) -> Path:
    """Where the finishing step kept the same copy before it became the pixel file (``stores/records/``,
    same name): read if it exists, never written."""
    return settings.stores_dir / "records" / f"{_digest(identity)}.npy"


def _digest(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()[:40]


def plain_array(spec: dict[str, Any], session: Session, settings: Settings, owner: str,
                field: str) -> Path | None:  # fmt: skip
    """The .npy / .npz file a spec names when it is read as a plain array (no store), else None."""
    if conversion_of(spec).active or "builtin" in spec:
        return None
    if "id" in spec:
        row = get_dataset(session, owner, spec["id"], field=f"{field}.id")
        return uploaded_file(row, settings) if is_array_upload(row) else None
    paths = data_root_paths(spec["path"], settings, f"{field}.path")
    is_array = len(paths) == 1 and paths[0].is_file() and (
        spec.get("format") == "array" or paths[0].suffix.lower() in (".npy", ".npz"))  # fmt: skip
    return paths[0] if is_array else None


def is_plain_builtin(spec: dict[str, Any]) -> bool:
    return "builtin" in spec and not conversion_of(spec).active


def needs_pixel_file(spec: dict[str, Any], array_file: Path | None) -> bool:
    """Whether the image route reads this spec from a pixel file (``array_file``: its ``plain_array``)."""
    if array_file is None:
        return is_plain_builtin(spec)
    return array_file.suffix.lower() != ".npy"


def write_pixels(spec: dict[str, Any], identity: str, array_file: Path | None, session: Session,
                 settings: Settings, owner: str, field: str) -> Path:  # fmt: skip
    """The pixel file of ``spec`` (content ``identity``; ``array_file`` its ``plain_array``), written now
    if it does not exist. Raises DataError, ServiceError (a data-root file that changed while it was read:
    NotFound) or OSError."""
    target = pixel_file(settings, identity)
    if target.is_file():
        return target
    if array_file is None:
        shape, chunks = builtin_image_chunks(spec["builtin"], field=f"{field}.builtin")
    else:
        shape, chunks = npz_image_chunks(array_file, max_bytes=settings.max_uncompressed_bytes, field=field)
    write_pixel_file(target, shape, chunks)
    if "path" in spec and dataset_identity(spec, session, settings, owner, field) != identity:
        target.unlink(missing_ok=True)  # replaced while it was read: the copy may mix two files
        raise NotFound(f"{field}.path", "the file changed while it was read; try again")
    return target


def prepare_pixel_file(spec: dict[str, Any], session: Session, settings: Settings, owner: str, field: str,
                       expected: str | None = None) -> None:  # fmt: skip
    """``write_pixels`` for a spec that needs one, best effort: a failure is logged, never raised (the
    image route writes the file when it is missing). With ``expected`` (the identity a job recorded),
    nothing is written once the source holds other content."""
    try:
        array_file = plain_array(spec, session, settings, owner, field)
        if not needs_pixel_file(spec, array_file):
            return
        identity = dataset_identity(spec, session, settings, owner, field)
        if expected is not None and identity != expected:
            log.warning("%s: not writing a pixel file: the dataset changed since the job recorded it", field)
            return
        write_pixels(spec, identity, array_file, session, settings, owner, field)
    except (ServiceError, DataError, OSError, ValueError) as error:
        log.warning("%s: pixel file not written: %s", field, error)


def prepare_job_pixel_files(spec: dict[str, Any], session: Session, settings: Settings, owner: str) -> None:
    """``prepare_pixel_file`` for a job's training and held-out sets (``spec``: the job's spec with the
    ``facts`` recording their identities)."""
    for field, facts_key in FACTS_OF.items():
        if spec.get(field):
            recorded = spec.get("facts", {}).get(facts_key, {}).get("identity")
            expected = recorded if isinstance(recorded, str) else None
            prepare_pixel_file(spec[field], session, settings, owner, field, expected)


def prepare_upload_pixel_file(dataset_id: str, session: Session, settings: Settings, owner: str) -> None:
    """``prepare_pixel_file`` for a stored upload (an .npz needs one; nothing else does)."""
    prepare_pixel_file({"id": dataset_id}, session, settings, owner, "file")


def keep_pixel_file(settings: Settings, identity: str, images: ImageSet) -> Path:
    """The pixel file of ``images`` (loaded from content ``identity``), written from them if missing."""
    path = pixel_file(settings, identity)
    if not path.is_file():
        levels = images.as_uint8()  # (N, C, H, W); a view of a uint8 set
        shown = levels[:, 0] if levels.shape[1] == 1 else levels.transpose(0, 2, 3, 1)
        write_pixel_file(path, tuple(shown.shape), _row_chunks(shown))
    return path


def _row_chunks(rows: np.ndarray) -> Iterator[np.ndarray]:
    per_chunk = max(1, CHUNK_BYTES // max(1, int(np.prod(rows.shape[1:]))))
    for start in range(0, len(rows), per_chunk):
        yield np.ascontiguousarray(rows[start:start + per_chunk])
