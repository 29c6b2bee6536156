"""Dataset formats other than arrays: image folders and archives, Hugging Face parquet, WebDataset shards,
CIFAR-10 binary batches, and the canonical store they are converted into (docs/science.md, "Datasets").

:func:`open_source` recognises the format of one or more paths and returns its reader (None for .npy /
.npz, which models.data_files reads); :func:`read_images` collects a reader into an ImageSet in memory;
:func:`models.formats.store.write_store` converts it into the canonical on-disk store instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from models.formats.base import MemorySink, Source, collect
from models.formats.cifar import CifarSource, cifar_batches, is_cifar_batch
from models.formats.decode import Conversion
from models.formats.images import FolderSource, TarSource, ZipSource, wanted
from models.formats.parquet import ParquetSource
from models.formats.safety import ArchiveLimits
from models.formats.webdataset import WebDatasetSource, looks_like_webdataset
from models.imageset import DataError, ImageSet, image_set_from_array

__all__ = ["FORMATS", "ArchiveLimits", "Conversion", "FormatName", "expand_braces", "is_cifar_batch",
           "open_source", "read_images"]

FormatName = Literal["auto", "array", "images", "parquet", "webdataset", "cifar10"]
FORMATS: tuple[FormatName, ...] = ("auto", "array", "images", "parquet", "webdataset", "cifar10")
ARRAY_SUFFIXES = (".npy", ".npz")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
MAX_EXPANSION = 100_000
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Brace expansion as the shell does it, for shard lists: ``a-{000..009}.tar``, ``{x,y}.tar``.
    Zero-padded ranges keep their width; groups may repeat and nest."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth = 0
    for end in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[end], 0)
        if depth == 0:
            break
    else:
        raise ValueError(f"unbalanced '{{' in {pattern!r}")
    inner, head, tail = pattern[start + 1:end], pattern[:start], pattern[end + 1:]
    match = _RANGE.match(inner)
    if match:
        low, high = int(match[1]), int(match[2])
        width = len(match[1]) if match[1].startswith("0") or match[2].startswith("0") else 0
        step = 1 if high >= low else -1
        if abs(high - low) + 1 > MAX_EXPANSION:
            raise ValueError(f"{pattern!r} expands to more than {MAX_EXPANSION} names")
        choices = [str(v).zfill(width) for v in range(low, high + step, step)]
    else:
        choices = _split_top_level(inner)
    expanded = [f"{head}{choice}{rest}" for choice in choices for rest in expand_braces(tail)]
    results = [name for item in expanded for name in expand_braces(item)]
    if len(results) > MAX_EXPANSION:
        raise ValueError(f"{pattern!r} expands to more than {MAX_EXPANSION} names")
    return results


def _split_top_level(inner: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in inner:
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        current += char
    return [*parts, current]


def _tar(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def _folder_has_images(folder: Path) -> bool:
    for base, subfolders, files in os.walk(folder):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        relative = Path(base).relative_to(folder).as_posix()
        if any(wanted(f if relative == "." else f"{relative}/{f}") for f in files):
            return True
    return False


def open_source(paths: list[Path], *, field: str, limits: ArchiveLimits, format: FormatName = "auto",
                confine_to: Path | None = None, name: str | None = None) -> Source | None:  # fmt: skip
    """The reader for ``paths`` (one file or folder, or the shards of a brace pattern); None for arrays."""
    if not paths:
        raise DataError(field, "the pattern names no file")
    first = paths[0]
    title = name or first.name
    if len(paths) > 1:
        return _shards(paths, field, limits, format, title)
    if first.is_dir():
        return _folder(first, field, limits, format, confine_to)
    lower = first.name.lower()
    if format == "array" or (format == "auto" and lower.endswith(ARRAY_SUFFIXES)):
        return None
    if format == "parquet" or (format == "auto" and lower.endswith(".parquet")):
        return ParquetSource([first], field, limits, title)
    if format == "cifar10" or (format == "auto" and lower.endswith(".bin")):
        return CifarSource([first], field, title)
    if format == "webdataset":
        return WebDatasetSource([first], field, limits, title)
    if lower.endswith(".zip") and format in ("auto", "images"):
        return ZipSource(first, field, limits)
    if _tar(first) and format in ("auto", "images"):
        if format == "auto" and looks_like_webdataset(first, field, limits):
            return WebDatasetSource([first], field, limits, title)
        return TarSource(first, field, limits)
    raise DataError(field, f"{first.name}: unsupported file type (use .npz, .npy, a folder or .zip / .tar / "
                           ".tar.gz of images, parquet, WebDataset .tar shards or CIFAR-10 .bin batches)")


def _shards(paths: list[Path], field: str, limits: ArchiveLimits, format: FormatName,
            title: str) -> Source:  # fmt: skip
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(field, f"{missing[0].name}: no such shard (the pattern names {len(paths)} files)")
    if format in ("auto", "parquet") and all(p.name.lower().endswith(".parquet") for p in paths):
        return ParquetSource(paths, field, limits, title)
    if format in ("auto", "webdataset") and all(_tar(p) for p in paths):
        return WebDatasetSource(paths, field, limits, title)
    if format in ("auto", "cifar10") and all(p.suffix == ".bin" for p in paths):
        return CifarSource(paths, field, title)
    raise DataError(field, "several files must all be parquet shards, WebDataset .tar shards or CIFAR-10 "
                           "batches")  # fmt: skip


def _folder(folder: Path, field: str, limits: ArchiveLimits, format: FormatName,
            confine_to: Path | None) -> Source:  # fmt: skip
    if format in ("auto", "images") and _folder_has_images(folder):
        return FolderSource(folder, field, limits, confine_to)
    parquets = sorted(p for p in folder.iterdir() if p.name.lower().endswith(".parquet"))
    if format in ("auto", "parquet") and parquets:
        return ParquetSource(parquets, field, limits, folder.name)
    shards = sorted(p for p in folder.iterdir() if _tar(p))
    if format in ("auto", "webdataset") and shards:
        return WebDatasetSource(shards, field, limits, folder.name)
    batches = cifar_batches(folder)
    if format in ("auto", "cifar10") and batches:
        return CifarSource(batches, field, folder.name)
    raise DataError(field, f"{folder.name}: the folder holds no images (no .png, .jpg, .jpeg, .bmp or .webp "
                           "files, parquet shards, WebDataset .tar shards or CIFAR-10 data_batch_*.bin)")


def read_images(source: Source, *, conversion: Conversion, limits: ArchiveLimits, field: str) -> ImageSet:
    """Collect a reader into memory (the CLI and notebooks; the service writes a store instead)."""
    sink = MemorySink()
    collected = collect(source, sink, conversion=conversion, limits=limits, field=field)
    images = image_set_from_array(sink.array(collected.order), name=source.name, field=field,
                                  labels=collected.labels, keys=collected.keys,
                                  label_names=collected.label_names)  # fmt: skip
    return images

