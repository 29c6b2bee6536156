"""What every format reader yields, and the collection step shared by all of them.

A reader (a :class:`Source`) yields :class:`Decoded` items: a name (the member / file / row it came from,
for messages), an optional raw label (a class name or an integer) and the uint8 pixels, one image at a
time. :func:`collect` runs a source through the conformer (one shape for all, or the user's conversion),
the byte budget and a sink (memory for the CLI, the on-disk canonical store for the service), then turns
names into keys and labels and checks that keys are unique.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from models.formats.decode import Conformer, Conversion
from models.formats.safety import ArchiveLimits, check_member_count
from models.imageset import DataError, DataTooLarge

MAX_KEY_LENGTH = 1024
MAX_LABEL_LENGTH = 256
DUPLICATES_SHOWN = 5
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
RawLabel = str | int | None


@dataclass(frozen=True)
class Decoded:
    name: str  # where it came from (messages); also the key unless the source names keys itself
    label: RawLabel
    pixels: np.ndarray  # uint8 (H, W) or (H, W, 3)


@dataclass(frozen=True)
class Naming:
    """Keys and raw labels for every item, in the order the items were yielded."""

    keys: list[str]
    labels: list[RawLabel]


class Source(Protocol):
    name: str  # what to call the dataset (file or folder name)
    format: str  # e.g. "image-zip", "parquet", "webdataset"
    sort_by_key: bool  # image files are taken in sorted relative-path order
    label_names: tuple[str, ...] | None  # known class names (ClassLabel, batches.meta.txt), else None

    def items(self, conversion: Conversion, budget: Callable[[], int]) -> Iterator[Decoded]: ...

    def naming(self, names: list[str], labels: list[RawLabel]) -> Naming: ...


class Sink(Protocol):
    def add(self, pixels: np.ndarray) -> None: ...


@dataclass(frozen=True)
class Collected:
    """Everything but the pixels (which went to the sink), in the final sample order."""

    format: str
    name: str
    count: int
    pixel_shape: tuple[int, ...]  # (H, W) or (H, W, 3)
    keys: np.ndarray  # (N,) object array of str
    labels: np.ndarray | None  # (N,) int64; -1 = no label (only with label_names)
    label_names: tuple[str, ...] | None
    order: np.ndarray | None  # sink position of sample i, when not the identity
    min: int  # uint8 pixel range
    max: int
    conversion: dict[str, Any] | None


def collect(source: Source, sink: Sink, *, conversion: Conversion, limits: ArchiveLimits,
            field: str) -> Collected:  # fmt: skip
    conformer = Conformer(field=field)
    names: list[str] = []
    raw_labels: list[RawLabel] = []
    used = 0
    low, high = 255, 0

    def budget() -> int:
        return limits.max_bytes - used

    for item in source.items(conversion, budget):
        conformer.check(item.pixels, item.name)
        used += item.pixels.nbytes
        if used > limits.max_bytes:
            raise DataTooLarge(field, f"{item.name}: the decoded images exceed the limit of "
                                      f"{limits.max_bytes} bytes")  # fmt: skip
        check_member_count(len(names) + 1, source.name, field, limits)
        low, high = min(low, int(item.pixels.min())), max(high, int(item.pixels.max()))
        sink.add(item.pixels)
        names.append(item.name)
        raw_labels.append(item.label)
    if not names or conformer.shape is None:
        raise DataError(field, f"{source.name}: holds no images (expected .png, .jpg, .jpeg, .bmp or .webp "
                               "images, or rows of encoded images)")  # fmt: skip
    naming = source.naming(names, raw_labels)
    keys = np.array(naming.keys, dtype=object)
    check_keys(keys, field)
    order = np.argsort(np.array(naming.keys, dtype=str), kind="stable") if source.sort_by_key else None
    if order is not None and bool(np.all(order == np.arange(len(order)))):
        order = None
    labels, label_names = index_labels(naming.labels, source.label_names, field)
    if order is not None:
        keys = keys[order]
        labels = None if labels is None else labels[order]
    return Collected(format=source.format, name=source.name, count=len(names), pixel_shape=conformer.shape,
                     keys=keys, labels=labels, label_names=label_names, order=order, min=low, max=high,
                     conversion=conversion.describe())  # fmt: skip


def check_keys(keys: Sequence[Any] | np.ndarray, field: str) -> None:
    """Keys are non-empty strings of at most MAX_KEY_LENGTH characters without control characters,
    and unique; the error lists the first duplicates."""
    seen: set[str] = set()
    duplicates: list[str] = []
    for key in keys:
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH or _CONTROL.search(key):
            raise DataError(f"{field}.keys", f"key {str(key)[:80]!r} is not a non-empty string of at most "
                                             f"{MAX_KEY_LENGTH} printable characters")  # fmt: skip
        if key in seen:
            if key not in duplicates:
                duplicates.append(key)
            if len(duplicates) >= DUPLICATES_SHOWN:
                break
        seen.add(key)
    if duplicates:
        shown = ", ".join(repr(key) for key in duplicates)
        raise DataError(f"{field}.keys", f"keys must be unique; duplicated: {shown}")


def index_labels(raw: Sequence[RawLabel], known_names: tuple[str, ...] | None,
                 field: str) -> tuple[np.ndarray | None, tuple[str, ...] | None]:  # fmt: skip
    """Raw labels -> (int64 indices or None, class names or None).

    All integers (and no names known): the integers themselves. Names (or some samples without a label):
    indices into the sorted names (ImageFolder's convention), -1 for no label; integers given with known
    names (ClassLabel) index those names.
    """
    if all(label is None for label in raw):
        return None, None
    ints = all(isinstance(label, int) for label in raw)
    if ints and known_names is not None:
        values = np.array(raw, dtype=np.int64)
        if values.min() < 0 or values.max() >= len(known_names):
            raise DataError(f"{field}.labels", f"labels must lie in 0..{len(known_names) - 1} (the class "
                                               f"names), found {values.min()}..{values.max()}")  # fmt: skip
        return values, known_names
    if ints:
        return np.array(raw, dtype=np.int64), None
    texts = [None if label is None else str(label) for label in raw]
    for text in texts:
        if text is not None and (not text or len(text) > MAX_LABEL_LENGTH or _CONTROL.search(text)):
            raise DataError(f"{field}.labels", f"label {text[:80]!r} is not a non-empty string of at most "
                                               f"{MAX_LABEL_LENGTH} printable characters")  # fmt: skip
    names = tuple(sorted({text for text in texts if text is not None}))
    index = {name: number for number, name in enumerate(names)}
    return np.array([-1 if t is None else index[t] for t in texts], dtype=np.int64), names


class MemorySink:
    """Keeps the images in memory (the CLI, notebooks)."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []

    def add(self, pixels: np.ndarray) -> None:
        self.images.append(pixels)

    def array(self, order: np.ndarray | None) -> np.ndarray:
        stacked = np.stack(self.images)  # (N, H, W) or (N, H, W, 3) uint8
        return stacked if order is None else stacked[order]
