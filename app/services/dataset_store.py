"""The canonical stores of converted datasets (models/formats/store.py) under ``<data_dir>/stores/``.

Every dataset that is not a plain array (image folders and archives, parquet, WebDataset shards, CIFAR-10
batches), and any dataset with a conversion (``resize`` / ``mode``), is converted once into a store:
uploads when they are uploaded, data-root paths and conversions the first time a job names them. The
store's folder is named by the content identity of its source (app/services/data_identity.py) plus the
conversion, so a replaced data-root file gets a new store and the workers, the API's image route and the
reports all read one memory-mappable layout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.services.errors import Invalid, ServiceError, TooLarge
from app.settings import Settings
from models.formats import ArchiveLimits, Conversion, FormatName
from models.formats.base import Source
from models.formats.decode import ImageMode
from models.formats.store import is_store, read_meta, write_store
from models.imageset import DataError, DataTooLarge

OPTION_KEYS = ("resize", "mode", "format")


def conversion_of(spec: dict[str, Any]) -> Conversion:
    resize = spec.get("resize")
    mode: ImageMode | None = spec.get("mode")
    return Conversion(resize=None if resize is None else (int(resize[0]), int(resize[1])), mode=mode)


def format_of(spec: dict[str, Any]) -> FormatName:
    value: FormatName = spec.get("format") or "auto"
    return value


def options_of(spec: dict[str, Any]) -> str:
    """The reading options of a spec as a stable string ('' when there are none)."""
    return ";".join(f"{key}={spec[key]}" for key in OPTION_KEYS if spec.get(key) is not None)


def archive_limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits(max_bytes=settings.max_uncompressed_bytes, max_members=settings.max_archive_members,
                         max_ratio=settings.max_compression_ratio)  # fmt: skip


def store_dir(settings: Settings, identity: str, spec: dict[str, Any]) -> Path:
    digest = hashlib.sha256(f"{identity}|{options_of(spec)}".encode()).hexdigest()
    return settings.stores_dir / digest[:40]


def as_service_error(error: DataError, replace: tuple[str, str] | None = None) -> ServiceError:
    message = error.message if replace is None else error.message.replace(*replace)
    return (TooLarge if isinstance(error, DataTooLarge) else Invalid)(error.field, message)


def ensure_store(directory: Path, make_source: Callable[[], Source | None], spec: dict[str, Any],
                 settings: Settings, field: str, identity: str) -> dict[str, Any]:  # fmt: skip
    """The meta of the store at ``directory``, converting the source first when it does not exist yet."""
    if is_store(directory):
        return read_meta(directory)
    try:
        source = make_source()
        if source is None:
            raise DataError(field, "this dataset is an array; it has no store")
        return write_store(directory, source, conversion=conversion_of(spec), limits=archive_limits(settings),
                           field=field, extra={"identity": identity})  # fmt: skip
    except DataError as error:
        raise as_service_error(error) from None
