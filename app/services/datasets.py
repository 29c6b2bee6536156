"""Datasets: uploads (validated, stored by sha256, deduplicated per owner) and the resolution of a
job's dataset spec (uploaded id | built-in name | path under the data root, with optional ``resize`` /
``mode`` / ``format``) into an ImageSet.

An upload is streamed to a temp file with a hard size cap, hashed on the way, and validated without ever
holding the dataset in memory: arrays (.npy / .npz) are scanned chunk by chunk; every other format (image
zip / tar, parquet, WebDataset shard, CIFAR-10 batch) is decoded image by image straight into its
canonical store (app/services/dataset_store.py). Only then is the file moved into place and recorded: a
refused upload leaves neither a file, a store nor a row. A recorded compressed .npz then gets its pixel
file (app/services/pixel_files.py), so that no image request has to decompress it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import Dataset
from app.services.dataset_store import (
    archive_limits,
    as_service_error,
    conversion_of,
    ensure_store,
    format_of,
    store_dir,
)
from app.services.errors import Invalid, NotFound, TooLarge
from app.settings import Settings
from models.builtin_datasets import BUILTIN_NAMES, is_builtin, load_builtin
from models.data import read_array_dataset, resolve_paths
from models.data_files import ArrayFacts, ensure_inside, npy_facts, npz_facts, read_npz_side
from models.formats import open_source
from models.formats.arrays import ImageSetSource, npz_keys_and_labels
from models.formats.base import Source
from models.formats.decode import Conformer
from models.formats.store import is_store, read_meta, read_store
from models.imageset import DataError, ImageSet

CHUNK = 1 << 20
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
ARRAY_FORMATS = frozenset({"npy", "npz"})
CIFAR_RECORD = 3073
CONVERT_HINT = Conformer.hint
UPLOAD_HINT = ("uploads are stored as they are: resize them first, or put them under the data root and name "
               "them with dataset.path and dataset.resize [H, W] (and dataset.mode)")
FORMAT_SUFFIX = {"npy": ".npy", "npz": ".npz", "image-zip": ".zip", "tar": ".tar", "tar.gz": ".tar.gz",
                 "parquet": ".parquet", "cifar10-bin": ".bin"}  # fmt: skip


@dataclass(frozen=True)
class StoredUpload:
    dataset: Dataset
    created: bool  # False when the same bytes were uploaded before by the same owner


def _sniff(path: Path, filename: str, field: str) -> str:
    """What an upload is, from its first bytes (and, for CIFAR-10 batches, its name and size)."""
    with path.open("rb") as stream:
        head = stream.read(512)
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()  # an .npz is a zip of .npy members (numpy.savez)
                return "npz" if any(name.endswith(".npy") for name in names) else "image-zip"
        except (zipfile.BadZipFile, OSError, ValueError):
            return "npz"  # the .npz reader names the problem
    if head.startswith(GZIP_MAGIC):
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if filename.lower().endswith(".bin") and path.stat().st_size % CIFAR_RECORD == 0:
        return "cifar10-bin"
    raise Invalid(field, f"{filename!r} is neither an .npy nor an .npz file, nor a .zip / .tar / .tar.gz of "
                         "images, a parquet file, a WebDataset .tar shard or a CIFAR-10 .bin batch")


def array_facts(path: Path, kind: str, settings: Settings, field: str) -> ArrayFacts:
    """Facts of a stored .npy / .npz, scanned in chunks (no float copy); keys and labels checked too."""
    return array_facts_and_details(path, kind, settings, field)[0]


def array_facts_and_details(
    path: Path, kind: str, settings: Settings, field: str
) -> tuple[ArrayFacts, dict[str, Any]]:
    """array_facts, and what the samples carry (keys, labels, class names) for the datasets row."""
    try:
        if kind == "npy":
            return npy_facts(path, max_bytes=settings.max_uncompressed_bytes, field=field), {}
        facts = npz_facts(path, max_bytes=settings.max_uncompressed_bytes, field=field)
        labels, keys = read_npz_side(path, max_bytes=settings.max_uncompressed_bytes, field=field)
        if labels is not None and labels.dtype.kind in "iu" and labels.shape != facts.shape[:1]:
            count = facts.shape[0]
            raise DataError(f"{field}.labels", f"expected {count} labels shaped ({count},), "
                                               f"got {labels.shape}")  # fmt: skip
        if labels is not None and labels.dtype.kind not in "iuUS":
            raise DataError(f"{field}.labels", f"labels must be integers, got element type {labels.dtype}")
        _, indices, names = npz_keys_and_labels(keys, labels, facts.shape[0], field)
        details = {"has_keys": keys is not None, "has_labels": indices is not None,
                   "label_names": None if names is None else list(names)}  # fmt: skip
        return facts, details
    except DataError as error:
        raise as_service_error(error) from None


def read_array_file(path: Path, suffix: str, settings: Settings, field: str) -> ImageSet:
    """An ImageSet from a stored .npy/.npz (science-core readers: no pickle, sizes checked first)."""
    try:
        return read_array_dataset(path.with_suffix(suffix) if path.suffix != suffix else path,
                                  max_bytes=settings.max_uncompressed_bytes, field=field)  # fmt: skip
    except DataError as error:
        raise as_service_error(error) from None


def _stream_to_temp(upload: BinaryIO, directory: Path, limit: int, field: str) -> tuple[Path, str, int]:
    digest, size = hashlib.sha256(), 0
    handle, name = tempfile.mkstemp(dir=directory, prefix=".upload-")
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := upload.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(field, f"the upload exceeds the limit of {limit} bytes")
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    if size == 0:
        Path(name).unlink(missing_ok=True)
        raise Invalid(field, "the upload is empty")
    return Path(name), digest.hexdigest(), size


def _find_by_hash(session: Session, owner: str, sha256: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.owner == owner, Dataset.sha256 == sha256))


def store_upload(
    session: Session, settings: Settings, owner: str, upload: BinaryIO, filename: str, field: str = "file"
) -> StoredUpload:
    settings.ensure_dirs()
    temp, sha256, size = _stream_to_temp(upload, settings.uploads_dir, settings.max_upload_bytes, field)
    store: Path | None = None
    try:
        existing = _find_by_hash(session, owner, sha256)
        if existing is not None:
            return StoredUpload(existing, created=False)
        kind = _sniff(temp, filename, field)
        named = temp.with_name(temp.name + FORMAT_SUFFIX[kind])  # the readers recognise formats by suffix
        os.replace(temp, named)
        temp = named
        shown = Path(filename).name
        try:
            if kind in ARRAY_FORMATS:
                facts, details = array_facts_and_details(temp, kind, settings, field)
            else:
                store = store_dir(settings, f"upload:{sha256}", {})
                existed = is_store(store)
                meta = ensure_store(store, lambda: _open(temp, field, settings, name=shown), {}, settings,
                                    field, f"upload:{sha256}")  # fmt: skip
                store = None if existed else store
                facts = ArrayFacts(tuple(meta["shape"]), "uint8", meta["min"], meta["max"], True)
                details = {"store": meta_store_name(settings, f"upload:{sha256}"),
                           "label_names": meta["label_names"], "has_labels": meta["has_labels"],
                           "has_keys": True, "source_format": meta["format"]}  # fmt: skip
        except (Invalid, TooLarge) as error:  # name the caller's file, not our temp file
            error.message = error.message.replace(temp.name, shown).replace(CONVERT_HINT, UPLOAD_HINT)
            raise
        final = settings.uploads_dir / f"{sha256}{FORMAT_SUFFIX[kind]}"
        os.replace(temp, final)  # same bytes -> same name: a concurrent twin writes identical content
        row = _insert_dataset(session, owner, sha256, filename, final.name, size, facts,
                              details.get("source_format", kind), details or None)  # fmt: skip
        store = None
        if kind == "npz":  # the image route's pixel file, now that the upload is recorded (best effort)
            from app.services.pixel_files import prepare_upload_pixel_file  # it imports this module

            prepare_upload_pixel_file(row.id, session, settings, owner)
        return StoredUpload(row, True)
    finally:
        temp.unlink(missing_ok=True)
        if store is not None:  # a refused upload leaves no store behind either
            shutil.rmtree(store, ignore_errors=True)


def meta_store_name(settings: Settings, identity: str) -> str:
    return store_dir(settings, identity, {}).name


def _open(path: Path, field: str, settings: Settings, *, name: str | None = None,
          spec: dict[str, Any] | None = None, confine_to: Path | None = None) -> Source | None:  # fmt: skip
    return open_source([path], field=field, limits=archive_limits(settings), format=format_of(spec or {}),
                       confine_to=confine_to, name=name)  # fmt: skip


def _insert_dataset(
    session: Session, owner: str, sha256: str, filename: str, stored: str, size: int, facts: ArrayFacts,
    kind: str, details: dict[str, Any] | None,
) -> Dataset:
    row = Dataset(
        id=str(uuid.uuid4()),
        owner=owner,
        sha256=sha256,
        filename=Path(filename).name[:256] or "upload",
        storage_path=stored,
        shape=list(facts.shape),
        dtype=facts.source_kind,
        min_value=facts.min,
        max_value=facts.max,
        is_8bit=facts.is_8bit,  # so that POST /jobs checks likelihoods from the row, not the file
        size_bytes=size,
        format=kind,
        details=details,
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()  # the same owner uploaded the same bytes concurrently: use theirs
        existing = _find_by_hash(session, owner, sha256)
        if existing is None:
            raise
        return existing
    return row


def get_dataset(session: Session, owner: str, dataset_id: str, field: str = "dataset_id") -> Dataset:
    row = session.get(Dataset, dataset_id)
    if row is None or row.owner != owner:
        raise NotFound(field, f"no dataset {dataset_id!r}")
    return row


def list_datasets(session: Session, owner: str, limit: int, offset: int) -> list[Dataset]:
    query = select(Dataset).where(Dataset.owner == owner).order_by(Dataset.created_at.desc(), Dataset.id)
    return list(session.scalars(query.limit(limit).offset(offset)))


def uploaded_file(row: Dataset, settings: Settings) -> Path:
    return settings.uploads_dir / row.storage_path


def is_array_upload(row: Dataset) -> bool:
    return row.format is None or row.format in ARRAY_FORMATS


def load_dataset_spec(
    spec: dict[str, Any], session: Session, settings: Settings, owner: str, field: str
) -> ImageSet:
    """Resolve {"id"} | {"builtin"} | {"path"} (+ resize / mode / format) into validated images (API and
    workers alike). Anything but a plain array is read from its canonical store (made on first use)."""
    store = dataset_store_of(spec, session, settings, owner, field)
    if store is not None:
        return _read_store(store, settings, f"{field}.{_kind(spec)}")
    if "id" in spec:
        row = get_dataset(session, owner, spec["id"], field=f"{field}.id")
        stored = uploaded_file(row, settings)
        return read_array_file(stored, stored.suffix, settings, f"{field}.id")
    if "builtin" in spec:
        return _load_builtin(spec["builtin"], f"{field}.builtin")
    paths = data_root_paths(spec["path"], settings, f"{field}.path")
    return read_array_file(paths[0], paths[0].suffix, settings, f"{field}.path")


def _kind(spec: dict[str, Any]) -> str:
    return next(key for key in ("id", "builtin", "path") if key in spec)


def _read_store(store: Path, settings: Settings, field: str) -> ImageSet:
    try:
        return read_store(store, field=field, max_bytes=settings.max_uncompressed_bytes)
    except DataError as error:
        raise as_service_error(error) from None


def dataset_store_of(
    spec: dict[str, Any], session: Session, settings: Settings, owner: str, field: str
) -> Path | None:
    """The canonical store a spec is read from, converting it now if needed; None for plain arrays."""
    from app.services.data_identity import dataset_identity  # data_identity imports this module

    converted = conversion_of(spec).active
    where = f"{field}.{_kind(spec)}"
    if "id" in spec:
        row = get_dataset(session, owner, spec["id"], field=f"{field}.id")
        if is_array_upload(row) and not converted:
            return None
        identity = dataset_identity(spec, session, settings, owner, field)
        upload = uploaded_file(row, settings)
        _check_converted_size(int(row.shape[0]), spec, settings, where)

        def from_upload() -> Source | None:
            source = _open(upload, where, settings, name=row.filename)
            return _array_source(read_array_file(upload, upload.suffix, settings, where), where) \
                if source is None else source  # fmt: skip
    elif "builtin" in spec:
        if not converted:
            return None
        identity = dataset_identity(spec, session, settings, owner, field)
        _check_converted_size(_builtin_count(spec["builtin"], where), spec, settings, where)

        def from_upload() -> Source | None:
            return _array_source(_load_builtin(spec["builtin"], where), where)
    else:
        paths = data_root_paths(spec["path"], settings, where)
        try:
            source = open_source(paths, field=where, limits=archive_limits(settings), format=format_of(spec),
                                 confine_to=settings.data_root, name=Path(spec["path"]).name)  # fmt: skip
        except DataError as error:
            raise as_service_error(error) from None
        if source is None and not converted:
            return None
        identity = dataset_identity(spec, session, settings, owner, field)

        def from_upload() -> Source | None:
            return source if source is not None else _array_source(
                read_array_file(paths[0], paths[0].suffix, settings, where), where)  # fmt: skip
    store = store_dir(settings, identity, {})
    ensure_store(store, from_upload, spec, settings, where, identity)
    return store


def _check_converted_size(count: int, spec: dict[str, Any], settings: Settings, field: str) -> None:
    """Refuse a resize whose result cannot fit MEMAUDIT_MAX_UNCOMPRESSED_BYTES before converting anything."""
    conversion = conversion_of(spec)
    if conversion.resize is None:
        return
    height, width = conversion.resize
    needed = count * height * width * (1 if conversion.mode == "L" else 3)
    if needed > settings.max_uncompressed_bytes:
        raise TooLarge(f"{field.rsplit('.', 1)[0]}.resize", f"{count} images of {height}x{width} need up to "
                       f"{needed} bytes, over the limit of {settings.max_uncompressed_bytes} "
                       "(MEMAUDIT_MAX_UNCOMPRESSED_BYTES)")  # fmt: skip


def _array_source(images: ImageSet, field: str) -> Source:
    try:
        return ImageSetSource(images, field)
    except DataError as error:
        raise as_service_error(error) from None


def _builtin_count(name: str, field: str) -> int:
    from app.services.dataset_facts import builtin_facts_for  # dataset_facts imports this module

    return builtin_facts_for(name, field).count


def store_meta(store: Path) -> dict[str, Any]:
    return read_meta(store)


def _load_builtin(name: str, field: str) -> ImageSet:
    # A built-in this server does not have (unknown, bad option, not installed) names nothing: 404,
    # like an unknown dataset id; the message says which built-ins exist.
    if not is_builtin(name):
        raise NotFound(field, f"no built-in dataset {name!r} (built-ins: {', '.join(BUILTIN_NAMES)})")
    try:
        return load_builtin(name, field=field)
    except DataError as error:
        raise NotFound(error.field, error.message) from None


def data_root_file(relative: str, settings: Settings, field: str) -> Path:
    """A file under the data root (never outside it, symlinks resolved).

    A path that leaves the root is a 422 (Invalid); one that names no file there, or a server without
    a data root, is a 404 (NotFound): the reference names nothing, like an unknown dataset id.
    """
    path = _data_root_path(relative, settings, field, folders=False)
    return path


def data_root_paths(relative: str, settings: Settings, field: str) -> list[Path]:
    """The file or folder a dataset path names, or every shard of a brace pattern
    (``shards/train-{000..009}.tar``), each resolved inside the data root (404 when one is missing)."""
    if settings.data_root is None:
        _data_root_path(relative, settings, field, folders=True)  # raises the 404
    try:
        names = resolve_paths(relative, None, field) if "{" in relative else [Path(relative)]
    except DataError as error:  # a malformed or huge pattern names no file
        raise NotFound(field, f"no file {relative!r} under the data root ({error.message})") from None
    return [_data_root_path(str(name), settings, field, folders=True) for name in names]


def _data_root_path(relative: str, settings: Settings, field: str, *, folders: bool) -> Path:
    if settings.data_root is None:
        raise NotFound(field, f"no file {relative!r}: this server has no data root (MEMAUDIT_DATA_ROOT); "
                              "upload the file instead")  # fmt: skip
    if "\x00" in relative:
        raise Invalid(field, "a path cannot contain a NUL character")
    root = settings.data_root.resolve()
    try:
        path = ensure_inside(root / relative, root, field)
        exists = path.is_file() or (folders and path.is_dir() and path != root)
    except DataError as error:
        raise Invalid(error.field, error.message) from None
    except OSError:  # e.g. a name longer than the filesystem allows: it names no file
        exists = False
    if not exists:
        raise NotFound(field, f"no file {relative!r} under the data root")
    return path
