"""What job validation needs to know about a dataset (count, image shape, pixel range, 8-bit), without
loading pixels where the facts were recorded already.

Uploaded datasets (``{"id"}``) are described by their `datasets` row, written when the upload was
validated: POST /jobs never reads an uploaded file (except once for a float upload recorded before
revision 0002, whose 8-bit flag is then written back). Built-ins are scanned chunk by chunk once per
process and their facts cached, read from the built-in's pixel file when it exists
(app/services/pixel_files.py; nothing here writes one). ``{"path"}`` files are loaded, as the file
may change between requests. Workers still load the arrays themselves (they need the pixels). The facts
carry the dataset's content identity (app.services.data_identity), which workers check before they train.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.db import Dataset
from app.services.data_identity import RELOAD_TRIES, dataset_identity
from app.services.dataset_store import conversion_of
from app.services.datasets import (
    array_facts,
    data_root_paths,
    dataset_store_of,
    get_dataset,
    read_array_file,
    store_meta,
)
from app.services.errors import Invalid, NotFound
from app.services.pixel_files import pixel_file
from app.settings import Settings
from models.builtin_datasets import BUILTIN_NAMES, is_builtin
from models.formats.records import builtin_image_chunks, pixel_file_chunks
from models.imageset import DataError, ImageSet, SourceKind, check_likelihood_facts

_BUILTIN_FIELD = "builtin"  # replaced by the caller's field when loading fails (errors are not cached)


@dataclass(frozen=True)
class DatasetFacts:
    count: int
    image_shape: tuple[int, int, int]  # (C, H, W) as the science core sees it
    min: float  # pixel range after scaling to [0, 1]
    max: float
    source_kind: SourceKind
    is_8bit: bool
    # app.services.data_identity: which content the facts describe (not part of what they say about it)
    identity: str | None = dataclasses.field(default=None, compare=False)
    conversion: dict[str, Any] | None = None  # resize / mode applied while reading (models.formats.decode)

    @classmethod
    def of_images(cls, images: ImageSet) -> DatasetFacts:
        return cls(count=images.count, image_shape=images.image_shape, min=images.min_intensity,
                   max=images.max_intensity, source_kind=images.source_kind,
                   is_8bit=images.is_8bit)  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """The JSON stored in a job's spec["facts"] (the keys from before facts existed, plus identity)."""
        facts = {"count": self.count, "image_shape": list(self.image_shape), "min": self.min, "max": self.max,
                 "source_kind": self.source_kind, "identity": self.identity}  # fmt: skip
        return facts if self.conversion is None else {**facts, "conversion": self.conversion}


def dataset_facts(
    spec: dict[str, Any], session: Session, settings: Settings, owner: str, field: str
) -> DatasetFacts:
    """Facts of {"id"} | {"builtin"} | {"path"}; raises Invalid/NotFound naming the field."""
    if "id" in spec and not conversion_of(spec).active:
        row = get_dataset(session, owner, spec["id"], field=f"{field}.id")
        return replace(_row_facts(row, settings, f"{field}.id"),
                       identity=dataset_identity(spec, session, settings, owner, field))  # fmt: skip
    if "builtin" in spec and not conversion_of(spec).active:
        identity = dataset_identity(spec, session, settings, owner, field)
        facts = builtin_facts_for(spec["builtin"], f"{field}.builtin", pixel_file(settings, identity))
        return replace(facts, identity=identity)
    return _read_facts(spec, session, settings, owner, field)


def _read_facts(spec: dict[str, Any], session: Session, settings: Settings, owner: str,
                field: str) -> DatasetFacts:  # fmt: skip
    """Facts of a data-root path or a conversion, read from its store or scanned: never a float copy. The
    identity is taken before and after, so that facts and identity describe the same content."""
    for _ in range(RELOAD_TRIES):
        identity = dataset_identity(spec, session, settings, owner, field)
        store = dataset_store_of(spec, session, settings, owner, field)
        if store is not None:
            meta = store_meta(store)
            facts = DatasetFacts(count=int(meta["count"]), image_shape=image_shape_of(meta["shape"]),
                                 min=float(meta["min"]), max=float(meta["max"]), source_kind="uint8",
                                 is_8bit=True, conversion=meta.get("conversion"))  # fmt: skip
        else:
            path = data_root_paths(spec["path"], settings, f"{field}.path")[0]
            scanned = array_facts(path, path.suffix.lower().lstrip("."), settings, f"{field}.path")
            facts = DatasetFacts(count=scanned.shape[0], image_shape=image_shape_of(list(scanned.shape)),
                                 min=scanned.min, max=scanned.max,
                                 source_kind="uint8" if scanned.source_kind == "uint8" else "float",
                                 is_8bit=scanned.is_8bit)  # fmt: skip
        if dataset_identity(spec, session, settings, owner, field) == identity:
            return replace(facts, identity=identity)
    raise Invalid(f"{field}.path", "the file kept changing while it was read; try again once it is written")


def check_likelihood(facts: DatasetFacts, likelihood: str, field: str) -> None:
    """`check_likelihood_range` on facts (one rule, in models.imageset), as Invalid."""
    try:
        check_likelihood_facts(likelihood, is_8bit=facts.is_8bit, field=field)
    except DataError as error:
        raise Invalid(error.field, error.message) from None


def image_shape_of(original_shape: list[int]) -> tuple[int, int, int]:
    """(C, H, W) of a stored (N, H, W) or (N, H, W, C) shape (what image_set_from_array makes of it)."""
    if len(original_shape) == 3:
        return 1, int(original_shape[1]), int(original_shape[2])
    return int(original_shape[3]), int(original_shape[1]), int(original_shape[2])


def _row_facts(row: Dataset, settings: Settings, field: str) -> DatasetFacts:
    if row.is_8bit is None:  # a float upload recorded before revision 0002: scan it once
        stored = settings.uploads_dir / row.storage_path
        row.is_8bit = read_array_file(stored, stored.suffix, settings, field).is_8bit
    return DatasetFacts(count=int(row.shape[0]), image_shape=image_shape_of(row.shape), min=row.min_value,
                        max=row.max_value, source_kind="uint8" if row.dtype == "uint8" else "float",
                        is_8bit=row.is_8bit)  # fmt: skip


def builtin_facts_for(name: str, field: str, pixels: Path | None = None) -> DatasetFacts:
    """A built-in's facts; ``pixels``: its pixel file (app/services/pixel_files.py), read instead of the
    built-in's own files when it exists."""
    # Built-ins this server does not have are a 404, like unknown ids (app.services.datasets).
    if not is_builtin(name):
        raise NotFound(field, f"no built-in dataset {name!r} (built-ins: {', '.join(BUILTIN_NAMES)})")
    try:
        return _builtin_facts(name, pixels)
    except DataError as error:
        raise NotFound(field if error.field == _BUILTIN_FIELD else error.field, error.message) from None


_SCANNED: dict[str, DatasetFacts] = {}  # built-in name -> its facts, once per process (a handful of names)


def _builtin_facts(name: str, pixels: Path | None = None) -> DatasetFacts:
    """Scanned chunk by chunk (the API never holds the whole set), once per process. When the built-in's
    pixel file exists (an earlier job's: the same uint8 rows), it is read with plain reads instead of
    decompressing the set, so a restarted API does not decompress a built-in at all."""
    known = _SCANNED.get(name)
    if known is None:
        written = pixels if pixels is not None and pixels.is_file() else None
        shape, chunks = builtin_image_chunks(name, field=_BUILTIN_FIELD) if written is None else \
            pixel_file_chunks(written, field=_BUILTIN_FIELD)  # fmt: skip
        low, high = 255, 0
        for chunk in chunks:
            low, high = min(low, int(chunk.min())), max(high, int(chunk.max()))
        known = _SCANNED.setdefault(name, DatasetFacts(
            count=int(shape[0]), image_shape=image_shape_of(list(shape)),
            min=float(np.float32(low) / np.float32(255.0)), max=float(np.float32(high) / np.float32(255.0)),
            source_kind="uint8", is_8bit=True))  # fmt: skip
    return known
