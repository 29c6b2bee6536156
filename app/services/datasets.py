"""Datasets: uploads (validated, stored by sha256, deduplicated per owner) and the resolution of a
job's dataset spec (uploaded id | built-in name | path under the data root) into an ImageSet.

An upload is streamed to a temp file with a hard size cap, hashed on the way, read back through the
science core's safe readers (no pickle, uncompressed size checked before inflating) and only then
moved into place and recorded: a refused upload leaves neither a file nor a row.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import Dataset
from app.services.errors import Invalid, NotFound, TooLarge
from app.settings import Settings
from models.builtin_datasets import BUILTIN_NAMES, is_builtin, load_builtin
from models.data_files import ensure_inside, read_npy, read_npz
from models.imageset import DataError, DataTooLarge, ImageSet, image_set_from_array

CHUNK = 1 << 20
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class StoredUpload:
    dataset: Dataset
    created: bool  # False when the same bytes were uploaded before by the same owner


def _suffix_for(head: bytes, filename: str, field: str) -> str:
    if head.startswith(NPY_MAGIC):
        return ".npy"
    if head.startswith(ZIP_MAGIC):
        return ".npz"
    raise Invalid(field, f"{filename!r} is neither an .npy nor an .npz file")


def read_array_file(path: Path, suffix: str, settings: Settings, field: str) -> ImageSet:
    """An ImageSet from a stored .npy/.npz (science-core readers: no pickle, sizes checked first)."""
    try:
        if suffix == ".npz":
            images, labels = read_npz(path, max_bytes=settings.max_uncompressed_bytes, field=field)
        else:
            images, labels = read_npy(path, max_bytes=settings.max_uncompressed_bytes, field=field), None
        return image_set_from_array(images, name=path.name, field=field, labels=labels)
    except DataTooLarge as error:
        raise TooLarge(error.field, error.message) from None
    except DataError as error:
        raise Invalid(error.field, error.message) from None


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
    try:
        existing = _find_by_hash(session, owner, sha256)
        if existing is not None:
            return StoredUpload(existing, created=False)
        with temp.open("rb") as stream:
            suffix = _suffix_for(stream.read(8), filename, field)
        try:
            images = read_array_file(temp, suffix, settings, field)
        except (Invalid, TooLarge) as error:  # name the caller's file, not our temp file
            error.message = error.message.replace(temp.name, Path(filename).name)
            raise
        final = settings.uploads_dir / f"{sha256}{suffix}"
        os.replace(temp, final)  # same bytes -> same name: a concurrent twin writes identical content
        return StoredUpload(_insert_dataset(session, owner, sha256, filename, final.name, size, images), True)
    finally:
        temp.unlink(missing_ok=True)


def _insert_dataset(
    session: Session, owner: str, sha256: str, filename: str, stored: str, size: int, images: ImageSet
) -> Dataset:
    pixels = images.images
    row = Dataset(
        id=str(uuid.uuid4()),
        owner=owner,
        sha256=sha256,
        filename=Path(filename).name[:256] or "upload",
        storage_path=stored,
        shape=list(images.original_shape),
        dtype=images.source_kind,
        min_value=float(pixels.min()),
        max_value=float(pixels.max()),
        is_8bit=images.is_8bit,  # so that POST /jobs checks likelihoods from the row, not the file
        size_bytes=size,
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


def load_dataset_spec(
    spec: dict[str, str], session: Session, settings: Settings, owner: str, field: str
) -> ImageSet:
    """Resolve {"id"} | {"builtin"} | {"path"} into validated images (API and workers alike)."""
    if "id" in spec:
        row = get_dataset(session, owner, spec["id"], field=f"{field}.id")
        stored = settings.uploads_dir / row.storage_path
        return read_array_file(stored, stored.suffix, settings, f"{field}.id")
    if "builtin" in spec:
        return _load_builtin(spec["builtin"], f"{field}.builtin")
    return _load_path(spec["path"], settings, f"{field}.path")


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
    if settings.data_root is None:
        raise NotFound(field, f"no file {relative!r}: this server has no data root (MEMAUDIT_DATA_ROOT); "
                              "upload the file instead")  # fmt: skip
    if "\x00" in relative:
        raise Invalid(field, "a path cannot contain a NUL character")
    root = settings.data_root.resolve()
    try:
        path = ensure_inside(root / relative, root, field)
        exists = path.is_file()
    except DataError as error:
        raise Invalid(error.field, error.message) from None
    except OSError:  # e.g. a name longer than the filesystem allows: it names no file
        exists = False
    if not exists:
        raise NotFound(field, f"no file {relative!r} under the data root")
    return path


def _load_path(relative: str, settings: Settings, field: str) -> ImageSet:
    path = data_root_file(relative, settings, field)
    if not relative.endswith((".npy", ".npz")):
        raise Invalid(field, "only .npy and .npz files can be named by path")
    return read_array_file(path, relative[-4:], settings, field)
