"""The one archive-safety checker: member names, member types, counts, declared sizes and ratios, all
checked before a member is inflated.

- names: relative POSIX paths only; absolute paths, drive letters, backslashes, ``..`` segments, NUL and
  other control characters are refused (a name that could leave the extraction root is never accepted,
  even though nothing is ever extracted to disk);
- zip: every member's declared size is summed against the byte budget and its declared ratio checked,
  encrypted and symbolic-link members are refused, duplicate names are refused;
- tar (plain or gzip): only regular files and folders; symbolic links, hard links, devices, FIFOs and
  sparse files are refused; each header's declared size is checked before its data is read, and the
  bytes inflated so far are checked against the budget and the ratio as the stream is read.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from typing import Any

from models.imageset import DataError, DataTooLarge

DEFAULT_MAX_MEMBERS = 2_000_000
DEFAULT_MAX_RATIO = 200.0
RATIO_FLOOR_BYTES = 1 << 20  # ratios of members (or streams) smaller than this are not checked
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ArchiveLimits:
    """``max_bytes`` bounds the uncompressed bytes read from one dataset; the rest bound its archives."""

    max_bytes: int
    max_members: int = DEFAULT_MAX_MEMBERS
    max_ratio: float = DEFAULT_MAX_RATIO


def check_member_name(name: str, archive: str, field: str) -> None:
    """Refuse names that are absolute or could climb out of the archive's root."""
    if not name or _CONTROL.search(name):
        raise DataError(field, f"{archive}: member {name!r} has an empty name or control characters")
    if "\\" in name:
        raise DataError(field, f"{archive}: member {name!r} uses backslashes; member names must be POSIX "
                               "paths")  # fmt: skip
    if name.startswith("/") or _DRIVE.match(name):
        raise DataError(field, f"{archive}: member {name!r} has an absolute path; member names must be "
                               "relative")  # fmt: skip
    if ".." in name.split("/"):
        raise DataError(field, f"{archive}: member {name!r} climbs out of the archive with '..'")


def check_member_count(count: int, archive: str, field: str, limits: ArchiveLimits) -> None:
    if count > limits.max_members:
        raise DataTooLarge(field, f"{archive}: more than {limits.max_members} members (the limit on archive "
                                  "members)")  # fmt: skip


def check_ratio(inflated: int, compressed: int, what: str, field: str, limits: ArchiveLimits) -> None:
    if inflated > RATIO_FLOOR_BYTES and inflated > limits.max_ratio * max(compressed, 1):
        raise DataTooLarge(field, f"{what}: inflates {inflated / max(compressed, 1):.0f}x (over the limit of "
                                  f"{limits.max_ratio:g}x on the compression ratio): a decompression bomb?")


def check_zip_members(infos: list[Any], archive: str, field: str, limits: ArchiveLimits) -> None:
    """Names, types and count of every member of a zip's central directory (nothing is inflated)."""
    check_member_count(len(infos), archive, field, limits)
    seen: set[str] = set()
    for info in infos:
        check_member_name(info.filename, archive, field)
        if info.filename in seen:
            raise DataError(field, f"{archive}: member {info.filename!r} appears twice")
        seen.add(info.filename)
        if info.flag_bits & 0x1:
            raise DataError(field, f"{archive}: member {info.filename!r} is encrypted")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError(field, f"{archive}: member {info.filename!r} is a symbolic link; archives may "
                                   "hold only regular files and folders")  # fmt: skip


def check_zip_sizes(infos: list[Any], archive: str, field: str, limits: ArchiveLimits) -> None:
    """The declared sizes of the members that will be read: their sum and each one's ratio."""
    total = 0
    for info in infos:
        total += info.file_size
        if total > limits.max_bytes:
            raise DataTooLarge(field, f"{archive}: the members' declared uncompressed size exceeds the limit "
                                      f"of {limits.max_bytes} bytes")  # fmt: skip
        check_ratio(info.file_size, info.compress_size, f"{archive}:{info.filename}", field, limits)


def check_tar_member(info: Any, archive: str, field: str, budget: int) -> bool:
    """True for a regular file to read, False for a folder to skip; refuses every other member type."""
    check_member_name(info.name, archive, field)
    if info.isdir():
        return False
    kinds = ((info.issym(), "a symbolic link"), (info.islnk(), "a hard link"),
             (info.ischr() or info.isblk(), "a device file"), (info.isfifo(), "a FIFO"),
             (info.issparse(), "a sparse file"))  # fmt: skip
    for is_kind, what in kinds:
        if is_kind:
            raise DataError(field, f"{archive}: member {info.name!r} is {what}; archives may hold only "
                                   "regular files and folders")  # fmt: skip
    if not info.isreg():
        raise DataError(field, f"{archive}: member {info.name!r} is not a regular file")
    if info.size > budget:
        raise DataTooLarge(field, f"{archive}: member {info.name!r} declares {info.size} bytes, over the "
                                  "limit on uncompressed size")  # fmt: skip
    return True
