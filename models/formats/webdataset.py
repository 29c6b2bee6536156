"""WebDataset tar shards: one .tar, several, or a brace pattern (``train-{000..009}.tar``).

A sample is the run of consecutive members sharing a ``__key__`` (the member path up to the first dot of
its file name, WebDataset's rule): one image (``.png``, ``.jpg``, ``.jpeg``, ``.webp`` or ``.bmp``) and
optionally ``.cls`` (the label: an integer, or a class name). Other members (``.json``, ``.txt``) are
ignored. Samples are taken in shard order, then archive order; the key is ``__key__``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from models.formats.base import Decoded, Naming, RawLabel
from models.formats.decode import IMAGE_SUFFIXES, Conversion, decode_image
from models.formats.images import tar_members
from models.formats.safety import ArchiveLimits
from models.imageset import DataError

IMAGE_EXTENSIONS = frozenset(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
LABEL_EXTENSION = "cls"
MAX_LABEL_BYTES = 256


def split_key(member: str) -> tuple[str, str]:
    """``dir/sample.001.png`` -> (``dir/sample``, ``001.png``): the key ends at the first dot of the name."""
    folder, _, base = member.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (extension.lower() if dot else "")


class WebDatasetSource:
    format = "webdataset"
    sort_by_key = False
    label_names: tuple[str, ...] | None = None

    def __init__(self, shards: list[Path], field: str, limits: ArchiveLimits, name: str) -> None:
        self.shards, self.field, self.limits, self.name = shards, field, limits, name

    def _samples(self, shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
        key: str | None = None
        members: dict[str, bytes] = {}
        for name, stream in tar_members(shard, self.field, self.limits):
            if stream is None:
                continue
            sample, extension = split_key(name)
            if sample.rsplit("/", 1)[-1].startswith("."):
                continue  # hidden files
            if sample != key:
                if key is not None:
                    yield key, members
                key, members = sample, {}
            if extension in IMAGE_EXTENSIONS or extension == LABEL_EXTENSION:
                members[extension] = _read(stream, extension, f"{shard.name}:{name}", self.field)
        if key is not None:
            yield key, members

    def items(self, conversion: Conversion, budget: Callable[[], int]) -> Iterator[Decoded]:
        for shard in self.shards:
            for key, members in self._samples(shard):
                images = [ext for ext in members if ext in IMAGE_EXTENSIONS]
                if not images:
                    continue  # a sample without an image (metadata only) is not a training sample
                if len(images) > 1:
                    raise DataError(self.field, f"{shard.name}: sample {key!r} has several images "
                                                f"({', '.join(images)}); keep one")  # fmt: skip
                pixels = decode_image(members[images[0]], key, budget=budget(), field=self.field,
                                      conversion=conversion)  # fmt: skip
                yield Decoded(name=key, label=_label(members.get(LABEL_EXTENSION), key, self.field),
                              pixels=pixels)  # fmt: skip

    def naming(self, names: list[str], labels: list[RawLabel]) -> Naming:
        return Naming(keys=names, labels=labels)


def _read(stream: IO[bytes], extension: str, where: str, field: str) -> bytes:
    if extension == LABEL_EXTENSION:
        data = stream.read(MAX_LABEL_BYTES + 1)
        if len(data) > MAX_LABEL_BYTES:
            raise DataError(f"{field}.labels", f"{where}: a .cls label is longer than {MAX_LABEL_BYTES} "
                                               "bytes")  # fmt: skip
        return data
    return stream.read()


def _label(data: bytes | None, key: str, field: str) -> RawLabel:
    if data is None:
        return None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise DataError(f"{field}.labels", f"{key}: the .cls label is not UTF-8 text") from error
    if not text:
        raise DataError(f"{field}.labels", f"{key}: the .cls label is empty")
    try:
        return int(text)
    except ValueError:
        return text


def looks_like_webdataset(path: Path, field: str, limits: ArchiveLimits, peek: int = 64) -> bool:
    """A tar is a WebDataset shard when, among its first members, one is a .cls label or two
    consecutive files share a key (an image tar's files each have their own name)."""
    previous: str | None = None
    for count, (name, stream) in enumerate(tar_members(path, field, limits)):
        if count >= peek:
            break
        if stream is None:
            continue
        key, extension = split_key(name)
        if extension == LABEL_EXTENSION or key == previous:
            return True
        previous = key
    return False
