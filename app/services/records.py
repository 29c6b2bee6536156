"""A few images of a job's training or held-out set, read record by record where the data allows it.

Datasets with a canonical uint8 store (app/services/dataset_store.py) are memory-mapped, so reading k
images touches k records and nothing else (the store of the recorded identity is found without opening the
source). Plain arrays (.npy / .npz uploads, built-ins) have no store; the
finishing step, which has them loaded anyway, keeps a uint8 copy for display under
``<data_dir>/stores/records/``, named by the content identity the job recorded (so it is the job's content
even if the source changes later). Without either, the set is loaded once and kept in a small cache, and
must still be what the job was validated for, otherwise NotFound names the field.
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
from app.services.data_identity import ImageSetCache, dataset_identity, load_recorded
from app.services.errors import Invalid, NotFound
from app.settings import Settings
from models.imageset import ImageSet

FACTS_OF = {"dataset": "train", "heldout": "heldout"}
_CACHE = ImageSetCache(capacity=4)


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


def _pick(stored: np.ndarray, wanted: list[int]) -> dict[int, np.ndarray]:
    return {i: np.array(stored[i]) for i in wanted if 0 <= i < len(stored)}


def read_records(session: Session, settings: Settings, job: Job, field: str,
                 ids: Iterable[int]) -> dict[int, np.ndarray]:  # fmt: skip
    """Images ``ids`` of the job's ``field`` ("dataset" or "heldout") as uint8 (H, W) or (H, W, 3)."""
    from app.services.dataset_store import store_dir
    from app.services.datasets import dataset_store_of
    from models.formats.store import is_store, store_images

    wanted = sorted({int(i) for i in ids})
    spec = job.spec.get(field)
    if not wanted or not spec:
        return {}
    recorded = job.spec.get("facts", {}).get(FACTS_OF[field], {})
    identity = recorded.get("identity")
    if isinstance(identity, str):  # content-addressed by the identity the job recorded: the job's content
        if records_file(settings, identity).is_file():
            return _pick(np.load(records_file(settings, identity), mmap_mode="r", allow_pickle=False), wanted)
        if is_store(store_dir(settings, identity, {})):  # without opening the source (a 60k-file folder)
            return _pick(store_images(store_dir(settings, identity, {})), wanted)
    try:
        store = dataset_store_of(spec, session, settings, job.owner, field)
        same = recorded.get("identity") in (None, dataset_identity(spec, session, settings, job.owner, field))
        if store is not None and same:
            return _pick(store_images(store), wanted)  # (N, H, W) or (N, H, W, 3), memory-mapped
        images = load_recorded(spec, recorded, session, settings, job.owner, field, _CACHE)
    except Invalid as error:
        raise NotFound(error.field, f"the images of job {job.id} are no longer available: {error.message}") \
            from None  # fmt: skip
    present = [i for i in wanted if 0 <= i < images.count]
    pixels = images.as_uint8()[present]  # (k, C, H, W)
    return dict(zip(present, _hwc(pixels), strict=True))
