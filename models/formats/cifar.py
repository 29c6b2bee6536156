"""CIFAR-10 binary batches (the "binary version", never the pickled "python version").

Each record is 1 label byte and 3072 pixel bytes: 1024 red, 1024 green, 1024 blue, rows of 32 from the
top. A path names one batch file (``test_batch.bin``) or the folder ``cifar-10-batches-bin`` (its
``data_batch_*.bin``, i.e. the 50,000 training images, in file-name order). ``batches.meta.txt`` beside
the batches gives the class names (without it: CIFAR-10's ten,
airplane .. truck). The key is ``<batch file>:<record>`` (``data_batch_1.bin:0``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from models.formats.base import Decoded, Naming, RawLabel
from models.formats.decode import Conversion, convert_array
from models.imageset import DataError

SIDE = 32
RECORD = 1 + 3 * SIDE * SIDE
RECORDS_PER_READ = 1024
META_FILE = "batches.meta.txt"
# The classes of CIFAR-10 in label order, for a batch without its batches.meta.txt (an uploaded batch).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar_batches(folder: Path) -> list[Path]:
    return sorted(folder.glob("data_batch_*.bin"))


def is_cifar_batch(path: Path) -> bool:
    return path.suffix == ".bin" and (path.name.startswith("data_batch_") or path.name == "test_batch.bin")


class CifarSource:
    format = "cifar10-bin"
    sort_by_key = False

    def __init__(self, batches: list[Path], field: str, name: str) -> None:
        self.batches, self.field, self.name = batches, field, name
        names = _class_names(batches[0].parent / META_FILE)
        self.label_names: tuple[str, ...] | None = names or CIFAR10_CLASSES
        for batch in batches:
            size = batch.stat().st_size
            if size == 0 or size % RECORD:
                raise DataError(field, f"{batch.name}: {size} bytes is not a whole number of CIFAR-10 "
                                       f"records ({RECORD} bytes each)")  # fmt: skip

    def items(self, conversion: Conversion, budget: Callable[[], int]) -> Iterator[Decoded]:
        for batch in self.batches:
            with batch.open("rb") as stream:
                index = 0
                while chunk := stream.read(RECORD * RECORDS_PER_READ):
                    records = np.frombuffer(chunk, dtype=np.uint8).reshape(-1, RECORD)  # (r, 3073)
                    planes = records[:, 1:].reshape(-1, 3, SIDE, SIDE)  # (r, 3, 32, 32)
                    pixels = planes.transpose(0, 2, 3, 1)  # (r, 32, 32, 3)
                    for label, image in zip(records[:, 0].tolist(), pixels, strict=True):
                        key = f"{batch.name}:{index}"
                        if self.label_names is not None and label >= len(self.label_names):
                            raise DataError(f"{self.field}.labels", f"{key}: label {label} has no class name")
                        index += 1
                        yield Decoded(name=key, label=int(label),
                                      pixels=convert_array(np.ascontiguousarray(image), key, conversion))

    def naming(self, names: list[str], labels: list[RawLabel]) -> Naming:
        return Naming(keys=names, labels=labels)


def _class_names(path: Path) -> tuple[str, ...] | None:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return None
    return tuple(names) if names else None
