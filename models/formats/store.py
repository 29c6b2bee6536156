"""The canonical store: one simple, memory-mappable layout every non-array format is converted into once.

    <store>/images.npy       uint8 (N, H, W) or (N, H, W, 3), C order, an .npy 1.0 file (header 128 bytes)
    <store>/samples.parquet  key (string), label (int64, null for none): one row per image, in order
    <store>/meta.json        format, name, count, shape, pixel range, class names, conversion, version

It is written image by image (the pixels go straight to disk, never a whole float copy in memory) into a
temporary folder that is renamed into place, so a store exists whole or not at all and two processes
converting the same source at once both end with the same store. ``store_images`` memory-maps the pixels.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from models.formats.base import Collected, Source, collect
from models.formats.decode import Conversion
from models.formats.safety import ArchiveLimits
from models.imageset import DataError, ImageSet, image_set_from_array

STORE_VERSION = 1
IMAGES, SAMPLES, META = "images.npy", "samples.parquet", "meta.json"
HEADER_BYTES = 128
PERMUTE_ROWS = 4096


def npy_header(shape: tuple[int, ...]) -> bytes:
    """A version 1.0 .npy header for uint8 C-order ``shape``, padded to HEADER_BYTES."""
    text = "{'descr': '|u1', 'fortran_order': False, 'shape': %r, }" % (shape,)  # noqa: UP031
    if len(text) > HEADER_BYTES - 11:
        raise ValueError(f"shape {shape} does not fit the reserved .npy header")
    body = text.ljust(HEADER_BYTES - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


class StoreSink:
    """Appends images to ``images.npy`` behind a reserved header; the header is written at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stream: BinaryIO = path.open("wb")
        self.stream.write(b"\x00" * HEADER_BYTES)
        self.count = 0
        self.shape: tuple[int, ...] | None = None

    def add(self, pixels: np.ndarray) -> None:
        self.stream.write(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
        self.count += 1
        self.shape = tuple(pixels.shape)

    def finish(self, order: np.ndarray | None) -> None:
        assert self.shape is not None
        shape = (self.count, *self.shape)
        self.stream.seek(0)
        self.stream.write(npy_header(shape))
        self.stream.close()
        if order is not None:  # e.g. a tar read in archive order: rewrite in key order
            source = np.load(self.path, mmap_mode="r", allow_pickle=False)
            sorted_path = self.path.with_name("sorted-" + self.path.name)
            target = np.lib.format.open_memmap(sorted_path, mode="w+", dtype=np.uint8, shape=shape)
            for start in range(0, len(order), PERMUTE_ROWS):
                target[start:start + PERMUTE_ROWS] = source[order[start:start + PERMUTE_ROWS]]
            target.flush()
            del source, target
            os.replace(sorted_path, self.path)

    def close(self) -> None:
        if not self.stream.closed:
            self.stream.close()


def write_store(directory: Path, source: Source, *, conversion: Conversion, limits: ArchiveLimits,
                field: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Convert ``source`` into a store at ``directory`` (atomically); returns its meta. If another process
    made the same store meanwhile, that one is kept."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    temp = directory.with_name(f".{directory.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    temp.mkdir()
    try:
        sink = StoreSink(temp / IMAGES)
        try:
            collected = collect(source, sink, conversion=conversion, limits=limits, field=field)
            sink.finish(collected.order)
        finally:
            sink.close()
        _write_samples(temp / SAMPLES, collected)
        meta = _meta(collected, extra)
        (temp / META).write_text(json.dumps(meta, indent=1))
        try:
            os.rename(temp, directory)
        except OSError:
            if not (directory / META).is_file():
                raise
        return read_meta(directory)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _meta(collected: Collected, extra: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "version": STORE_VERSION, "format": collected.format, "name": collected.name,
        "count": collected.count, "shape": [collected.count, *collected.pixel_shape],
        "min": collected.min / 255.0, "max": collected.max / 255.0,
        "has_labels": collected.labels is not None,
        "label_names": None if collected.label_names is None else list(collected.label_names),
        "conversion": collected.conversion, **(extra or {}),
    }  # fmt: skip


def _write_samples(path: Path, collected: Collected) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = None if collected.labels is None else collected.labels.tolist()
    table = pa.table({
        "key": pa.array(collected.keys.tolist(), type=pa.string()),
        "label": pa.array(labels if labels is not None else [None] * collected.count, type=pa.int64()),
    })  # fmt: skip
    pq.write_table(table, path)


def read_meta(directory: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((directory / META).read_text())
    if meta.get("version") != STORE_VERSION:
        raise ValueError(f"{directory}: store version {meta.get('version')} is not {STORE_VERSION}")
    return meta


def is_store(directory: Path) -> bool:
    return (directory / META).is_file()


def read_store(directory: Path, *, field: str, max_bytes: int) -> ImageSet:
    """The store as an ImageSet (keys, labels and class names included)."""
    import pyarrow.parquet as pq

    from models.data_files import read_npy

    meta = read_meta(directory)
    pixels = read_npy(directory / IMAGES, max_bytes=max_bytes, field=field)
    table = pq.read_table(directory / SAMPLES)
    keys = np.array(table.column("key").to_pylist(), dtype=object)
    labels = None
    if meta["has_labels"]:
        labels = np.array([-1 if v is None else v for v in table.column("label").to_pylist()], dtype=np.int64)
    names = None if meta["label_names"] is None else tuple(meta["label_names"])
    if pixels.shape[0] != meta["count"] or len(keys) != meta["count"]:
        raise DataError(field, f"{directory.name}: the store is inconsistent; convert the dataset again")
    return image_set_from_array(pixels, name=meta["name"], field=field, labels=labels, keys=keys,
                                label_names=names)  # fmt: skip


def store_images(directory: Path) -> np.ndarray:
    """The pixels memory-mapped read-only: (N, H, W) or (N, H, W, 3) uint8 (for serving single images)."""
    return np.load(directory / IMAGES, mmap_mode="r", allow_pickle=False)
