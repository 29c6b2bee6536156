"""One image at a time: memory-mapped pixel rows of every dataset kind, for callers that show a few images.

A canonical store's ``images.npy`` and a plain ``.npy`` are memory-mapped as they are. The kinds that cannot
be mapped (a compressed ``.npz`` member, the gzip idx files of a built-in) are copied once, chunk by chunk,
into a *pixel file*: a uint8 ``.npy`` of the images as displayed, written to a temporary name and renamed
into place, so it exists whole or not at all. Nothing here holds more than one chunk of a set in memory.

``display_image`` / ``display_rows`` turn images of any accepted element type into the uint8 pixels
``ImageSet.as_uint8`` gives for them (exact for 8-bit data, rounded otherwise), channels last, a single
channel dropped.
"""

from __future__ import annotations

import gzip
import os
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from models.imageset import DataError, check_array_layout

CHUNK_BYTES = 2 << 20  # source bytes converted at a time while writing a pixel file


def display_image(record: np.ndarray) -> np.ndarray:
    """One image (H, W) or (H, W, C) of any accepted element type as uint8 (H, W) or (H, W, 3)."""
    return _as_uint8(record[..., 0] if record.ndim == 3 and record.shape[2] == 1 else record)


def display_rows(rows: np.ndarray) -> np.ndarray:
    """Images (N, H, W) or (N, H, W, C) of any accepted element type as uint8 (N, H, W) or (N, H, W, 3)."""
    return _as_uint8(rows[..., 0] if rows.ndim == 4 and rows.shape[3] == 1 else rows)


def _as_uint8(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.uint8:
        return np.array(values)
    if values.dtype.kind in "iu":
        return values.astype(np.uint8)
    scaled = values.astype(np.float32)  # a copy, scaled in place: rint(x * 255) as ImageSet.as_uint8
    np.multiply(scaled, np.float32(255.0), out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)


def map_npy(path: Path, field: str) -> np.ndarray:
    """The images of an .npy as a read-only memory map (N, H, W) or (N, H, W, C); nothing is read but the
    header, object arrays are refused."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(field, f"{path.name}: cannot map the images ({error})") from error
    if not isinstance(array, np.ndarray):
        raise DataError(field, f"{path.name}: not a single array")
    check_array_layout(array, field)
    return array


def write_pixel_file(path: Path, shape: tuple[int, ...], chunks: Iterator[np.ndarray]) -> None:
    """Write uint8 images ``shape`` (N, H, W) or (N, H, W, 3) from ``chunks`` of consecutive rows to
    ``path`` atomically (a concurrent writer of the same file ends with the same bytes). Plain writes, not
    a writable memory map, so the writer's resident memory does not grow with the file."""
    from models.formats.store import npy_header

    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with temp.open("wb") as stream:
            stream.write(npy_header(shape))
            written = 0
            for chunk in chunks:
                if chunk.shape[1:] != shape[1:] or chunk.dtype != np.uint8:
                    raise ValueError(f"{path.name}: a chunk shaped {chunk.shape} does not fit {shape}")
                stream.write(np.ascontiguousarray(chunk).tobytes())
                written += len(chunk)
        if written != shape[0]:
            raise ValueError(f"{path.name}: {written} images written, {shape[0]} expected")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def pixel_file_chunks(path: Path, *, field: str) -> tuple[tuple[int, ...], Iterator[np.ndarray]]:
    """(shape, uint8 chunks) of a pixel file, read with plain reads a chunk at a time (through a memory
    map the reader's resident memory would grow with the file)."""
    stream = path.open("rb")
    try:
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0  # fmt: skip
        shape, fortran_order, dtype = read_header(stream)
    except (ValueError, OSError) as error:
        stream.close()
        raise DataError(field, f"{path.name}: not a pixel file ({error})") from error
    if dtype != np.uint8 or fortran_order or len(shape) not in (3, 4):
        stream.close()
        raise DataError(field, f"{path.name}: not a pixel file ({dtype}, shape {shape})")
    row_bytes = int(np.prod(shape[1:]))
    per_chunk = max(1, CHUNK_BYTES // row_bytes)

    def chunks() -> Iterator[np.ndarray]:
        with stream:
            for start in range(0, shape[0], per_chunk):
                rows = min(per_chunk, shape[0] - start)
                raw = stream.read(rows * row_bytes)
                if len(raw) != rows * row_bytes:
                    raise DataError(field, f"{path.name}: the pixel file is truncated")
                yield np.frombuffer(raw, dtype=np.uint8).reshape(rows, *shape[1:])

    return tuple(int(size) for size in shape), chunks()


def displayed_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The pixel file shape of images stored as ``shape`` (a single channel dropped)."""
    return shape[:3] if len(shape) == 4 and shape[3] == 1 else tuple(shape)


def npz_image_chunks(path: Path, *, max_bytes: int,
                     field: str) -> tuple[tuple[int, ...], Iterator[np.ndarray]]:  # fmt: skip
    """(displayed shape, uint8 chunks) of an .npz's ``images`` member, inflated chunk by chunk."""
    from models.data_files import _open_npz, _read_header

    archive, members = _open_npz(path, field)
    info = members["images.npy"]
    if info.file_size > max_bytes:
        archive.close()
        raise DataError(field, f"{path.name}: uncompressed size {info.file_size} bytes exceeds the limit")
    stream = archive.open(info)
    shape, fortran_order, dtype = _read_header(stream, field, path.name)
    if dtype.hasobject or dtype.kind not in "biuf":
        stream.close()
        archive.close()
        raise DataError(field, f"{path.name}: element type {dtype} is not allowed")
    check_array_layout(np.broadcast_to(np.zeros((), dtype=dtype), shape), field)  # a view: no memory

    def chunks() -> Iterator[np.ndarray]:
        try:
            if fortran_order:  # rare: rows are not contiguous in the file; read this one member whole
                whole = np.frombuffer(stream.read(), dtype=dtype, count=int(np.prod(shape))).reshape(
                    shape, order="F")  # fmt: skip
                yield display_rows(whole)
                return
            row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
            per_chunk = max(1, CHUNK_BYTES // row_bytes)
            for start in range(0, shape[0], per_chunk):
                rows = min(per_chunk, shape[0] - start)
                raw = stream.read(rows * row_bytes)
                if len(raw) != rows * row_bytes:
                    raise DataError(field, f"{path.name}: the images member is truncated")
                yield display_rows(np.frombuffer(raw, dtype=dtype).reshape(rows, *shape[1:]))
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise DataError(field, f"{path.name}: the archive member is corrupt ({error})") from error
        finally:
            stream.close()
            archive.close()

    return displayed_shape(tuple(shape)), chunks()


def idx_image_chunks(path: Path, *, pad: int, field: str) -> tuple[tuple[int, ...], Iterator[np.ndarray]]:
    """(shape, uint8 chunks) of an unsigned-byte idx image file (gzip or not), ``pad`` black pixels added
    on every side, decompressed chunk by chunk."""
    from models.builtin_datasets import IDX_UBYTE

    opener = gzip.open if path.suffix == ".gz" else open
    stream = opener(path, "rb")
    header = stream.read(16)
    if len(header) != 16 or header[:4] != bytes((0, 0, IDX_UBYTE, 3)):
        stream.close()
        raise DataError(field, f"{path}: not an unsigned-byte idx file with 3 dimensions")
    count, height, width = (int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(3))
    row_bytes, per_chunk = height * width, max(1, CHUNK_BYTES // (height * width))

    def chunks() -> Iterator[np.ndarray]:
        try:
            for start in range(0, count, per_chunk):
                rows = min(per_chunk, count - start)
                raw = stream.read(rows * row_bytes)
                if len(raw) != rows * row_bytes:
                    raise DataError(field, f"{path}: the idx file is truncated")
                block = np.frombuffer(raw, dtype=np.uint8).reshape(rows, height, width)
                yield np.pad(block, ((0, 0), (pad, pad), (pad, pad))) if pad else block
        except (OSError, EOFError) as error:
            raise DataError(field, f"{path}: cannot read the idx file ({error})") from error
        finally:
            stream.close()

    return (count, height + 2 * pad, width + 2 * pad), chunks()


def builtin_image_chunks(spec: str, *, field: str) -> tuple[tuple[int, ...], Iterator[np.ndarray]]:
    """(shape, uint8 chunks) of a built-in (models.builtin_datasets): Fashion-MNIST streamed from its idx
    file, digits (115 kB) read at once."""
    from models.builtin_datasets import (
        FASHION_MNIST_DIR,
        FASHION_MNIST_FILES,
        _find_idx,
        _split_option,
        load_builtin,
    )

    name, *options = spec.split(":")
    if name != "fashion-mnist":
        images = load_builtin(spec, field=field)
        pixels = images.as_uint8()[:, 0]  # (N, H, W): digits are grey
        return tuple(pixels.shape), iter([pixels])
    split = _split_option(options, spec, field) or "train"
    if split not in FASHION_MNIST_FILES:
        raise DataError(field, f"fashion-mnist has splits train and test, not {split!r}")
    path = _find_idx(FASHION_MNIST_DIR, FASHION_MNIST_FILES[split][0], field)
    return idx_image_chunks(path, pad=2 if "pad32" in options else 0, field=field)


def map_npz_member(path: Path, name: str, field: str) -> np.ndarray | None:
    """Member ``name`` of an .npz written by ``numpy.savez`` (stored, not compressed) as a read-only
    memory map; None when the archive has no such member or it is compressed (read it as usual then)."""
    import struct

    from models.data_files import _read_header

    try:
        with zipfile.ZipFile(path) as archive:
            info = next((i for i in archive.infolist() if i.filename == f"{name}.npy"), None)
            if info is None or info.compress_type != zipfile.ZIP_STORED:
                return None
        with path.open("rb") as stream:
            stream.seek(info.header_offset)
            local = stream.read(30)  # the local file header: its name and extra field lengths at 26..30
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise DataError(field, f"{path.name}: {name}.npy has no valid zip header")
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_length + extra_length
            stream.seek(start)
            shape, fortran_order, dtype = _read_header(stream, field, f"{path.name}:{name}.npy")
            data_offset = stream.tell()
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(field, f"{path.name}: not a readable .npz ({error})") from error
    if dtype.hasobject:
        raise DataError(field, f"{path.name}: {name}.npy holds objects")
    return np.memmap(path, dtype=dtype, mode="r", offset=data_offset, shape=tuple(shape),
                     order="F" if fortran_order else "C")  # fmt: skip
