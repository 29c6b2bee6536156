"""Which content a dataset spec names, and a thread-safe cache of loaded image sets keyed by it.

A spec (``{"id"}``, ``{"builtin"}`` or ``{"path"}``) names a place, not content: a file under the data
root can be replaced between two jobs, or while a job waits. Caches are therefore keyed by the
*content identity*:

- an upload: its sha256 (uploads are stored by hash and never change);
- a data-root path: (resolved path, size, mtime_ns, inode) of the file; for a folder, a digest of those
  of every file under it; for a brace pattern, those of every shard;
- a built-in: its name plus the same file identity of the files it is read from.

A job records the identity of each of its datasets when it is validated (``spec.facts.<set>.identity``);
workers and the API refuse to use a dataset whose identity no longer matches, so a job trains on the
content it was validated for, or fails saying that the file changed. Reading options (``resize``,
``mode``, ``format``) are part of the identity: the canonical stores (app/services/dataset_store.py) are
keyed by it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.services.dataset_store import options_of
from app.services.datasets import data_root_paths, get_dataset, load_dataset_spec
from app.services.errors import Invalid, NotFound
from app.settings import Settings
from models.builtin_datasets import FASHION_MNIST_DIR, FASHION_MNIST_FILES, is_builtin
from models.imageset import ImageSet

RELOAD_TRIES = 3


def file_identity(path: Path) -> str:
    """(resolved path, size, mtime_ns, inode) of a file, as one string; "missing" parts for no file."""
    resolved = path.resolve()
    try:
        stat = resolved.stat()
    except FileNotFoundError:
        return f"{resolved}:missing"
    return f"{resolved}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"


def tree_identity(folder: Path) -> str:
    """A folder's identity: a digest of (relative path, size, mtime_ns, inode) of every file under it."""
    resolved = folder.resolve()
    digest, count = hashlib.sha256(), 0
    for base, subfolders, files in os.walk(resolved):
        subfolders.sort()
        for name in sorted(files):
            path = Path(base) / name
            try:
                stat = path.stat()
            except OSError:
                continue
            digest.update(f"{path.relative_to(resolved)}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}\n"
                          .encode(errors="surrogateescape"))  # fmt: skip
            count += 1
    return f"{resolved}:tree:{count}:{digest.hexdigest()}"


def paths_identity(paths: list[Path]) -> str:
    return ";".join(tree_identity(path) if path.is_dir() else file_identity(path) for path in paths)


def builtin_source_files(name: str) -> list[Path]:
    """The files a built-in dataset is read from (models.builtin_datasets), for its identity."""
    base, *options = name.split(":")
    if base == "digits":
        return [Path(str(resources.files("sklearn.datasets") / "data" / "digits.csv.gz"))]
    split = next((option for option in options if option in FASHION_MNIST_FILES), "train")
    files = []
    for stem in FASHION_MNIST_FILES[split]:
        packed = FASHION_MNIST_DIR / f"{stem}.gz"
        files.append(packed if packed.is_file() else FASHION_MNIST_DIR / stem)
    return files


def dataset_identity(
    spec: dict[str, Any], session: Session, settings: Settings, owner: str, field: str
) -> str:
    """The content identity of a dataset spec (its reading options included); raises Invalid/NotFound
    naming the field like loading does."""
    options = options_of(spec)
    suffix = f"|{options}" if options else ""
    if "id" in spec:
        return f"upload:{get_dataset(session, owner, spec['id'], field=f'{field}.id').sha256}{suffix}"
    if "builtin" in spec:
        name = spec["builtin"]
        if not is_builtin(name):  # names nothing on this server: 404, like loading it
            raise NotFound(f"{field}.builtin", f"no built-in dataset {name!r}")
        files = ";".join(file_identity(path) for path in builtin_source_files(name))
        return f"builtin:{name}:{files}{suffix}"
    return "path:" + paths_identity(data_root_paths(spec["path"], settings, f"{field}.path")) + suffix


class ImageSetCache:
    """A small LRU of loaded image sets, safe to share between threads. Loads of one key happen once
    at a time (concurrent callers wait for the first); different keys load in parallel."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, ImageSet] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def _cached(self, key: str) -> ImageSet | None:
        with self._lock:
            images = self._entries.get(key)
            if images is not None:
                self._entries.move_to_end(key)
            return images

    def get(self, key: str, load: Callable[[], ImageSet]) -> ImageSet:
        cached = self._cached(key)
        if cached is not None:
            return cached
        with self._lock:
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            cached = self._cached(key)
            if cached is not None:
                return cached
            try:
                images = load()
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._entries[key] = images
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
        return images

    def discard(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)


def load_identified(
    spec: dict[str, Any],
    session: Session,
    settings: Settings,
    owner: str,
    field: str,
    cache: ImageSetCache | None = None,
) -> tuple[ImageSet, str]:
    """(images, identity) of a spec, through ``cache`` when given. A data-root file that changes while
    it is read is read again (the identity is taken before and after), so the pair always matches."""
    for _ in range(RELOAD_TRIES):
        identity = dataset_identity(spec, session, settings, owner, field)

        def load() -> ImageSet:
            return load_dataset_spec(spec, session, settings, owner, field)

        images = load() if cache is None else cache.get(identity, load)
        if (
            not identity.startswith("path:")
            or dataset_identity(spec, session, settings, owner, field) == identity
        ):
            return images, identity
        if cache is not None:
            cache.discard(identity)
    raise Invalid(f"{field}.path", "the file kept changing while it was read; try again once it is written")


def load_recorded(
    spec: dict[str, Any],
    recorded: dict[str, object],
    session: Session,
    settings: Settings,
    owner: str,
    field: str,
    cache: ImageSetCache | None = None,
) -> ImageSet:
    """The images of a job's dataset, refused (Invalid naming the field) unless they are the content the
    job was validated for: the same identity when the job recorded one, else the same count and shape."""
    images, identity = load_identified(spec, session, settings, owner, field, cache)
    expected = recorded.get("identity")
    where = f"{field}.{next(iter(spec))}"
    if expected is not None and expected != identity:
        raise Invalid(
            where,
            f"{_named(spec)} changed after the job was submitted (it now holds "
            f"{_described(images)}); submit the job again to use the new content",
        )
    count, shape = recorded.get("count"), recorded.get("image_shape")
    shape_list = list(shape) if isinstance(shape, list | tuple) else None
    if (count is not None and count != images.count) or (
        shape_list is not None and shape_list != list(images.image_shape)
    ):
        raise Invalid(
            where,
            f"{_named(spec)} now holds {_described(images)}, the job was validated for "
            f"{count} images of {shape_list}",
        )
    return images


def _named(spec: dict[str, Any]) -> str:
    kind, value = next(iter(spec.items()))
    return {"id": "dataset", "builtin": "built-in dataset", "path": "the file"}[kind] + f" {value!r}"


def _described(images: ImageSet) -> str:
    return f"{images.count} images of {list(images.image_shape)}"
