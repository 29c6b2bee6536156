"""Image files in a folder, a .zip or a .tar / .tar.gz (ImageFolder layout), read recursively.

Files are taken in sorted relative-path order and the key is the relative POSIX path (``cat/0001.jpg``).
When images sit in first-level subfolders, the subfolder is the label (images at the top level have none).
An archive whose members all sit in one top-level folder (``zip -r data.zip data/``) is read from inside
that folder. Hidden files and folders (a leading ``.``) and ``__MACOSX`` are skipped; other files that are
not images are ignored.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from models.data_files import ensure_inside
from models.formats.base import Decoded, Naming, RawLabel
from models.formats.decode import Conversion, decode_image, is_image_name
from models.formats.safety import (
    ArchiveLimits,
    check_member_count,
    check_ratio,
    check_tar_member,
    check_zip_members,
    check_zip_sizes,
)
from models.imageset import DataError

SKIPPED_FOLDERS = frozenset({"__MACOSX"})


def wanted(relative: str) -> bool:
    """An image file that is not hidden (no path segment starts with '.') and not macOS metadata."""
    parts = relative.split("/")
    return is_image_name(parts[-1]) and not any(p.startswith(".") or p in SKIPPED_FOLDERS for p in parts)


def image_folder_naming(names: list[str], strip_single_root: bool) -> Naming:
    """Keys = relative paths (without a single wrapping folder); labels = first-level folder names."""
    parts = [name.split("/") for name in names]
    if strip_single_root and parts and all(len(p) > 1 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    keys = ["/".join(p) for p in parts]
    nested = any(len(p) > 1 for p in parts)
    labels: list[RawLabel] = [p[0] if nested and len(p) > 1 else None for p in parts]
    return Naming(keys=keys, labels=labels)


class _ImageFiles:
    format = "image-folder"
    sort_by_key = True
    label_names: tuple[str, ...] | None = None

    def __init__(self, path: Path, field: str, limits: ArchiveLimits) -> None:
        self.path, self.field, self.limits = path, field, limits
        self.name = path.name

    def naming(self, names: list[str], labels: list[RawLabel]) -> Naming:
        return image_folder_naming(names, strip_single_root=self.format != "image-folder")

    def _decode(self, data: bytes, name: str, conversion: Conversion, budget: Callable[[], int]) -> Decoded:
        pixels = decode_image(data, name, budget=budget(), field=self.field, conversion=conversion)
        return Decoded(name=name, label=None, pixels=pixels)


class FolderSource(_ImageFiles):
    format = "image-folder"

    def __init__(self, path: Path, field: str, limits: ArchiveLimits, confine_to: Path | None) -> None:
        super().__init__(path, field, limits)
        self.confine_to = confine_to

    def _files(self) -> list[str]:
        found: list[str] = []
        for folder, subfolders, files in os.walk(self.path):  # symlinked folders are not followed
            subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in SKIPPED_FOLDERS]
            base = Path(folder).relative_to(self.path).as_posix()
            for file in files:
                relative = file if base == "." else f"{base}/{file}"
                if wanted(relative):
                    found.append(relative)
                    check_member_count(len(found), self.name, self.field, self.limits)
        return sorted(found)

    def items(self, conversion: Conversion, budget: Callable[[], int]) -> Iterator[Decoded]:
        for relative in self._files():
            path = self.path / relative
            if self.confine_to is not None:
                path = ensure_inside(path, self.confine_to, self.field)
            try:
                data = path.read_bytes()
            except OSError as error:
                raise DataError(self.field, f"{relative}: cannot read the file ({error.strerror})") from error
            yield self._decode(data, relative, conversion, budget)


class ZipSource(_ImageFiles):
    format = "image-zip"

    def items(self, conversion: Conversion, budget: Callable[[], int]) -> Iterator[Decoded]:
        try:
            archive = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            raise DataError(self.field, f"{self.name}: not a readable .zip archive") from error
        with archive:
            infos = archive.infolist()
            check_zip_members(infos, self.name, self.field, self.limits)
            chosen = sorted((i for i in infos if not i.is_dir() and wanted(i.filename)),
                            key=lambda i: i.filename)  # fmt: skip
            check_zip_sizes(chosen, self.name, self.field, self.limits)
            for info in chosen:
                try:
                    data = archive.read(info)  # at most its declared size; the CRC is checked
                except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
                    raise DataError(self.field, f"{self.name}:{info.filename}: the member is corrupt "
                                                f"({error})") from error  # fmt: skip
                yield self._decode(data, info.filename, conversion, budget)


class _CountingReader:
    """A read-only file that counts the bytes read from it (the compressed side of a tar.gz)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.count = raw, 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data


def tar_members(path: Path, field: str, limits: ArchiveLimits) -> Iterator[tuple[str, IO[bytes] | None]]:
    """(name, stream or None for a folder or file not read) of every member, streaming (gzip, bz2, xz
    or plain), each checked by the archive-safety rules before its data is read."""
    try:
        raw = path.open("rb")
    except OSError as error:
        raise DataError(field, f"{path.name}: cannot read the file ({error.strerror})") from error
    with raw:
        counter = _CountingReader(raw)
        try:
            archive = tarfile.open(fileobj=counter, mode="r|*")  # type: ignore[call-overload]  # noqa: SIM115
        except (tarfile.TarError, OSError, EOFError) as error:
            raise DataError(field, f"{path.name}: not a readable tar archive ({error})") from error
        declared, members = 0, 0
        try:
            with archive:
                for info in _iterate(archive, path.name, field):
                    members += 1
                    check_member_count(members, path.name, field, limits)
                    regular = check_tar_member(info, path.name, field, limits.max_bytes - declared)
                    declared += info.size if regular else 0
                    check_ratio(archive.offset, counter.count, path.name, field, limits)
                    yield info.name, archive.extractfile(info) if regular else None
        except (tarfile.TarError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise DataError(field, f"{path.name}: the archive is corrupt ({error})") from error


def _iterate(archive: tarfile.TarFile, name: str, field: str) -> Iterator[Any]:
    while True:
        try:
            info = archive.next()
        except tarfile.TarError as error:
            raise DataError(field, f"{name}: the archive is corrupt ({error})") from error
        if info is None:
            return
        yield info


class TarSource(_ImageFiles):
    format = "image-tar"

    def items(self, conversion: Conversion, budget: Callable[[], int]) -> Iterator[Decoded]:
        for name, stream in tar_members(self.path, self.field, self.limits):
            if stream is not None and wanted(name):
                yield self._decode(stream.read(), name, conversion, budget)
