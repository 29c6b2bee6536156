"""A few images of a job's training or held-out set, read record by record where the data allows it.

Datasets with a canonical uint8 store (app/services/dataset_store.py) are memory-mapped, so reading k
images touches k records and nothing else. Plain arrays (.npy / .npz uploads, built-ins) have no store;
they are loaded once and kept in a small cache. Either way the content must still be what the job was
validated for (the recorded identity), otherwise NotFound names the field.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from sqlalchemy.orm import Session

from app.db import Job
from app.services.data_identity import ImageSetCache, dataset_identity, load_recorded
from app.services.errors import Invalid, NotFound
from app.settings import Settings

FACTS_OF = {"dataset": "train", "heldout": "heldout"}
_CACHE = ImageSetCache(capacity=4)


def _hwc(pixels: np.ndarray) -> np.ndarray:
    """(k, C, H, W) -> (k, H, W) for one channel, (k, H, W, C) otherwise: the store's layout."""
    return pixels[:, 0] if pixels.shape[1] == 1 else pixels.transpose(0, 2, 3, 1)


def read_records(session: Session, settings: Settings, job: Job, field: str,
                 ids: Iterable[int]) -> dict[int, np.ndarray]:  # fmt: skip
    """Images ``ids`` of the job's ``field`` ("dataset" or "heldout") as uint8 (H, W) or (H, W, 3)."""
    from app.services.datasets import dataset_store_of
    from models.formats.store import store_images

    wanted = sorted({int(i) for i in ids})
    spec = job.spec.get(field)
    if not wanted or not spec:
        return {}
    recorded = job.spec.get("facts", {}).get(FACTS_OF[field], {})
    try:
        store = dataset_store_of(spec, session, settings, job.owner, field)
        same = recorded.get("identity") in (None, dataset_identity(spec, session, settings, job.owner, field))
        if store is not None and same:
            stored = store_images(store)  # (N, H, W) or (N, H, W, 3), memory-mapped
            return {i: np.array(stored[i]) for i in wanted if 0 <= i < len(stored)}
        images = load_recorded(spec, recorded, session, settings, job.owner, field, _CACHE)
    except Invalid as error:
        raise NotFound(error.field, f"the images of job {job.id} are no longer available: {error.message}") \
            from None  # fmt: skip
    present = [i for i in wanted if 0 <= i < images.count]
    pixels = images.as_uint8()[present]  # (k, C, H, W)
    return dict(zip(present, _hwc(pixels), strict=True))
