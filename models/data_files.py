"""Readers for the array file formats, .npy and .npz (the other formats are in models/formats/).

Nothing is ever unpickled: .npy headers are parsed and object dtypes refused before any data is read.
Sizes are checked before decompressing or allocating: an .npz member's declared size (zip directory) and
its array header must both fit ``max_bytes``, so a decompression bomb is refused after reading a few
hundred bytes. Every failure is a :class:`~models.imageset.DataError`, never a raw traceback.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from models.imageset import DataError, DataTooLarge

TEXT_KINDS = "biufUS"  # labels and keys may be strings (fixed-width unicode or bytes: never objects)


def read_npy(path: Path, *, max_bytes: int, field: str) -> np.ndarray:
    """The array of an .npy file, refusing object dtypes, oversize and truncated files."""
    file_size = _nonempty_size(path, field)
    try:
        with path.open("rb") as stream:
            return _read_array(stream, available=file_size, max_bytes=max_bytes, field=field, what=path.name)
    except OSError as error:
        raise DataError(field, f"{path.name}: cannot read the file ({error.strerror or error})") from error


def read_npz(
    path: Path, *, max_bytes: int, field: str
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(images, labels or None, keys or None) from an .npz archive with key ``images`` and optional
    ``labels`` (integers, or strings: class names) and ``keys`` (strings, the user's sample ids)."""
    archive, members = _open_npz(path, field)
    with archive:
        budget = max_bytes
        images = _read_member(archive, members["images.npy"], budget, field, path.name)
        budget -= images.nbytes
        optional: dict[str, np.ndarray | None] = {}
        for name in ("labels", "keys"):
            info = members.get(f"{name}.npy")
            array = None if info is None else _read_member(
                archive, info, budget, f"{field}.{name}", path.name, kinds=TEXT_KINDS)  # fmt: skip
            budget -= 0 if array is None else array.nbytes
            optional[name] = array
    return images, optional["labels"], optional["keys"]


@dataclass(frozen=True)
class ArrayFacts:
    """What validation needs from an image array, scanned chunk by chunk (never a float copy)."""

    shape: tuple[int, ...]  # as stored: (N, H, W) or (N, H, W, C)
    source_kind: str  # "uint8" or "float"
    min: float  # on the [0, 1] scale
    max: float
    is_8bit: bool


def npy_facts(path: Path, *, max_bytes: int, field: str) -> ArrayFacts:
    file_size = _nonempty_size(path, field)
    with path.open("rb") as stream:
        return _scan_array(stream, available=file_size, max_bytes=max_bytes, field=field, what=path.name)


def npz_facts(path: Path, *, max_bytes: int, field: str) -> ArrayFacts:
    """Facts of an .npz's ``images`` member, inflated chunk by chunk (CRC checked at the end)."""
    archive, members = _open_npz(path, field)
    with archive:
        info = members["images.npy"]
        label = f"{path.name}:{info.filename}"
        if info.file_size > max_bytes:
            raise DataTooLarge(field, f"{label}: uncompressed size {info.file_size} bytes exceeds the limit "
                                      f"of {max_bytes}")  # fmt: skip
        try:
            with archive.open(info) as stream:
                facts = _scan_array(stream, available=info.file_size, max_bytes=max_bytes, field=field,
                                    what=label)  # fmt: skip
                if stream.read(1):
                    raise DataError(field, f"{label}: unexpected bytes after the array data")
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            if isinstance(error, DataError):
                raise
            raise DataError(field, f"{label}: the archive member is corrupt ({error})") from error
    return facts


SCAN_BYTES = 16 << 20


def _scan_array(stream: IO[bytes], *, available: int, max_bytes: int, field: str, what: str) -> ArrayFacts:
    from models.imageset import EIGHT_BIT_TOLERANCE, check_array_layout

    shape, _, dtype = _read_header(stream, field, what)
    if dtype.hasobject or dtype.kind not in "biuf":
        hint = "; ragged images are saved as objects: stack same-sized images" if dtype.hasobject else ""
        raise DataError(field, f"{what}: element type {dtype} is not allowed (numbers only, never "
                               f"objects{hint})")  # fmt: skip
    check_array_layout(np.broadcast_to(np.zeros((), dtype=dtype), shape), field)  # a view: no memory
    count = int(np.prod(shape, dtype=np.int64))
    data_bytes = count * dtype.itemsize
    if data_bytes > max_bytes:
        raise DataTooLarge(field, f"{what}: the array needs {data_bytes} bytes, over the limit of "
                                  f"{max_bytes}")  # fmt: skip
    if data_bytes > available:
        raise DataError(field, f"{what}: the header declares {data_bytes} bytes of data but the file is "
                               "smaller")  # fmt: skip
    low, high, eight_bit, non_finite, left = math.inf, -math.inf, True, 0, data_bytes
    step = max(dtype.itemsize, SCAN_BYTES // dtype.itemsize * dtype.itemsize)
    while left:
        raw = stream.read(min(step, left))
        if not raw:
            raise DataError(field, f"{what}: the file is truncated ({data_bytes - left} of {data_bytes} "
                                   "data bytes)")  # fmt: skip
        left -= len(raw)
        chunk = np.frombuffer(raw, dtype=dtype)  # (k,) one chunk of pixels, in file order
        if dtype.kind == "f":
            finite = np.isfinite(chunk)
            non_finite += int((~finite).sum())
            if non_finite:
                continue
            scaled = chunk.astype(np.float64) * 255.0
            off = np.abs(scaled - np.rint(scaled)).max(initial=0.0)
            eight_bit = eight_bit and bool(off <= EIGHT_BIT_TOLERANCE)
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    if non_finite:
        raise DataError(field, f"{non_finite} pixel values are NaN or infinite")
    if dtype.kind in "iu":
        if low < 0 or high > 255:
            raise DataError(field, f"integer pixels must lie in 0..255, found {int(low)}..{int(high)}")
        return ArrayFacts(tuple(shape), "uint8", low / 255.0, high / 255.0, True)
    if low < 0.0 or high > 1.0:
        raise DataError(field, f"float pixels must lie in [0, 1], found [{low:.6g}, {high:.6g}] (uint8 data: "
                               "keep it uint8)")  # fmt: skip
    return ArrayFacts(tuple(shape), "float", low, high, eight_bit)  # bool: 0 and 1 are 8-bit too


def read_npz_side(path: Path, *, max_bytes: int, field: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(labels, keys) of an .npz, without reading its images."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: info for info in archive.infolist()}
        found = []
        for name in ("labels", "keys"):
            info = members.get(f"{name}.npy")
            found.append(None if info is None else _read_member(archive, info, max_bytes, f"{field}.{name}",
                                                                path.name, kinds=TEXT_KINDS))  # fmt: skip
    return found[0], found[1]


def text_values(array: np.ndarray, field: str) -> list[str]:
    """A 1-d array of strings (unicode or UTF-8 bytes) as Python strings."""
    if array.ndim != 1:
        raise DataError(field, f"expected a 1-d array of strings, got shape {array.shape}")
    if array.dtype.kind == "S":
        try:
            return [value.decode("utf-8") for value in array.tolist()]
        except UnicodeDecodeError as error:
            raise DataError(field, "strings must be UTF-8") from error
    return [str(value) for value in array.tolist()]


def _open_npz(path: Path, field: str) -> tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo]]:
    """The archive and its members by name; refuses empty, unreadable, and ``images``-less files."""
    _nonempty_size(path, field)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise DataError(field, f"{path.name}: not a readable .npz (zip) archive") from error
    members = {info.filename: info for info in archive.infolist()}
    if "images.npy" not in members:
        archive.close()
        keys = ", ".join(sorted(name.removesuffix(".npy") for name in members)) or "none"
        raise DataError(field, f"{path.name}: no array named 'images' in the archive (found: {keys})")
    return archive, members


def ensure_inside(path: Path, root: Path, field: str) -> Path:
    """The resolved path (symlinks followed), refusing anything outside ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise DataError(field, "path is outside the data root")
    return resolved


def _nonempty_size(path: Path, field: str) -> int:
    try:
        size = path.stat().st_size
    except OSError as error:
        raise DataError(field, f"{path.name}: cannot read the file ({error.strerror or error})") from error
    if size == 0:
        raise DataError(field, f"{path.name}: the file is empty")
    return size


def _read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int, field: str, what: str,
    kinds: str = "biuf",
) -> np.ndarray:
    label = f"{what}:{info.filename}"
    if info.file_size > budget:
        raise DataTooLarge(
            field, f"{label}: uncompressed size {info.file_size} bytes exceeds the limit of {budget}"
        )
    try:
        with archive.open(info) as stream:
            array = _read_array(stream, available=info.file_size, max_bytes=budget, field=field, what=label,
                                kinds=kinds)
            if stream.read(1):  # also makes zipfile verify the CRC of the whole member
                raise DataError(field, f"{label}: unexpected bytes after the array data")
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(field, f"{label}: the archive member is corrupt ({error})") from error
    return array


def _read_array(stream: IO[bytes], *, available: int, max_bytes: int, field: str, what: str,
                kinds: str = "biuf") -> np.ndarray:
    """Parse an .npy header from ``stream`` and read exactly the data it declares."""
    shape, fortran_order, dtype = _read_header(stream, field, what)
    if dtype.hasobject or dtype.kind not in kinds:
        hint = "; ragged images are saved as objects: stack same-sized images" if dtype.hasobject else ""
        raise DataError(
            field, f"{what}: element type {dtype} is not allowed (numbers only, never objects{hint})"
        )
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    data_bytes = count * dtype.itemsize
    if data_bytes > max_bytes:
        raise DataTooLarge(
            field, f"{what}: the array needs {data_bytes} bytes, over the limit of {max_bytes}"
        )
    if data_bytes > available:
        raise DataError(
            field, f"{what}: the header declares {data_bytes} bytes of data but the file is smaller"
        )
    raw = stream.read(data_bytes)
    if len(raw) != data_bytes:
        raise DataError(field, f"{what}: the file is truncated ({len(raw)} of {data_bytes} data bytes)")
    flat = np.frombuffer(raw, dtype=dtype, count=count)
    return flat.reshape(shape, order="F" if fortran_order else "C")


def _read_header(
    stream: IO[bytes], field: str, what: str
) -> tuple[tuple[int, ...], bool, np.dtype[np.generic]]:
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_2_0(stream)
        else:
            raise DataError(field, f"{what}: unsupported .npy format version {version}")
    except DataError:
        raise
    except (ValueError, EOFError, OSError, SyntaxError, TypeError) as error:
        raise DataError(field, f"{what}: not a valid .npy array ({error})") from error
    return tuple(int(s) for s in shape), bool(fortran_order), np.dtype(dtype)
