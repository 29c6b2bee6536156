"""Hugging Face datasets parquet: one file or several shards, read row group by row group.

The image column is ``image`` (else the first column of that type): a struct ``{bytes, path}`` as the
``datasets`` library writes an ``Image`` feature, or raw ``binary``. An optional ``label`` column holds
integers (class names come from the file's ``huggingface`` metadata when it declares a ``ClassLabel``) or
strings. The key is the ``id`` column when there is one, else the row index over all shards.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from models.formats.base import Decoded, Naming, RawLabel
from models.formats.decode import Conversion, decode_image
from models.formats.safety import ArchiveLimits, check_member_count
from models.imageset import DataError, DataTooLarge

BATCH_ROWS = 256
IMAGE_COLUMN, LABEL_COLUMN, KEY_COLUMN = "image", "label", "id"


class ParquetSource:
    format = "parquet"
    sort_by_key = False

    def __init__(self, paths: list[Path], field: str, limits: ArchiveLimits, name: str) -> None:
        self.paths, self.field, self.limits, self.name = paths, field, limits, name
        self.label_names: tuple[str, ...] | None = None
        self._ids: list[str] = []

    def _open(self, path: Path) -> Any:
        import pyarrow.parquet as pq  # pyarrow only where parquet is read

        try:
            return pq.ParquetFile(path)
        except (OSError, ValueError) as error:  # pyarrow.ArrowInvalid is a ValueError
            raise DataError(self.field, f"{path.name}: not a readable parquet file ({error})") from error

    def _columns(self, schema: Any, path: Path) -> tuple[str, str | None, str | None]:
        import pyarrow as pa

        def is_image(kind: Any) -> bool:
            if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
                return True
            return pa.types.is_struct(kind) and "bytes" in {kind.field(i).name
                                                             for i in range(kind.num_fields)}  # fmt: skip

        names = schema.names
        image = IMAGE_COLUMN if IMAGE_COLUMN in names and is_image(schema.field(IMAGE_COLUMN).type) else next(
            (n for n in names if is_image(schema.field(n).type)), None)  # fmt: skip
        if image is None:
            raise DataError(self.field, f"{path.name}: no image column (a struct {{bytes, path}} or binary "
                                        f"column; found {', '.join(names)})")  # fmt: skip
        return (image, LABEL_COLUMN if LABEL_COLUMN in names else None,
                KEY_COLUMN if KEY_COLUMN in names else None)

    def _class_names(self, metadata: dict[bytes, bytes] | None, label: str | None) -> tuple[str, ...] | None:
        try:
            info = json.loads((metadata or {}).get(b"huggingface", b"{}"))
            feature = info.get("info", {}).get("features", {}).get(label or "", {})
            names = feature.get("names") if feature.get("_type") == "ClassLabel" else None
        except (ValueError, AttributeError):
            return None
        return tuple(str(n) for n in names) if isinstance(names, list) and names else None

    def items(self, conversion: Conversion, budget: Callable[[], int]) -> Iterator[Decoded]:
        files = [(path, self._open(path)) for path in self.paths]
        total_rows = sum(f.metadata.num_rows for _, f in files)
        check_member_count(total_rows, self.name, self.field, self.limits)
        row = 0
        for number, (path, parquet) in enumerate(files):
            image, label, key = self._columns(parquet.schema_arrow, path)
            if number == 0:
                self.label_names = self._class_names(parquet.schema_arrow.metadata, label)
            columns = [c for c in (image, label, key) if c is not None]
            try:
                for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                    values = batch.to_pydict()
                    for i, cell in enumerate(values[image]):
                        where = f"{path.name}:row {row}"
                        data = cell.get("bytes") if isinstance(cell, dict) else cell
                        if not isinstance(data, bytes | bytearray):
                            raise DataError(self.field, f"{where}: the image bytes are missing (a row "
                                                        "that only names a file by path cannot be read; "
                                                        "embed the images)")  # fmt: skip
                        if len(data) > budget():
                            raise DataTooLarge(self.field, f"{where}: over the limit on uncompressed size")
                        raw_label = values[label][i] if label is not None else None
                        if raw_label is not None and not isinstance(raw_label, int | str):
                            raise DataError(f"{self.field}.labels", f"{where}: labels must be integers or "
                                                                    "strings")  # fmt: skip
                        sample_id = values[key][i] if key is not None else row
                        if sample_id is None:
                            raise DataError(f"{self.field}.keys", f"{where}: the id column is null")
                        self._ids.append(str(sample_id))
                        pixels = decode_image(bytes(data), where, budget=budget(), field=self.field,
                                              conversion=conversion)  # fmt: skip
                        row += 1
                        yield Decoded(name=where, label=raw_label, pixels=pixels)
            except (OSError, ValueError) as error:
                if isinstance(error, DataError):
                    raise
                raise DataError(self.field, f"{path.name}: the parquet file is corrupt ({error})") from error

    def naming(self, names: list[str], labels: list[RawLabel]) -> Naming:
        return Naming(keys=list(self._ids), labels=labels)
