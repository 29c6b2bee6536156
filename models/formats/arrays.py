"""Arrays as a source: the optional ``keys`` / ``labels`` of an .npz, and array data (an .npz, an .npy, a
built-in) run through the user's conversion (resize / mode), image by image, like every other format."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from models.data_files import text_values
from models.formats.base import Decoded, Naming, RawLabel, check_keys, index_labels
from models.formats.decode import Conversion, convert_array
from models.imageset import DataError, ImageSet


def npz_keys_and_labels(
    keys: np.ndarray | None, labels: np.ndarray | None, count: int, field: str
) -> tuple[np.ndarray | None, np.ndarray | None, tuple[str, ...] | None]:
    """(keys as an object array, label indices, class names) from an .npz's optional arrays."""
    checked_keys = None
    if keys is not None:
        values = (text_values(keys, f"{field}.keys") if keys.dtype.kind in "US"
                  else [str(v) for v in keys.tolist()])  # fmt: skip
        if len(values) != count:
            raise DataError(f"{field}.keys", f"expected {count} keys, got {len(values)}")
        check_keys(values, field)
        checked_keys = np.array(values, dtype=object)
    if labels is None or labels.dtype.kind not in "US":
        return checked_keys, labels, None
    names = text_values(labels, f"{field}.labels")
    if len(names) != count:
        raise DataError(f"{field}.labels", f"expected {count} labels shaped ({count},), got {len(names)}")
    indices, label_names = index_labels(list(names), None, field)
    return checked_keys, indices, label_names


class ImageSetSource:
    """An 8-bit ImageSet as a stream of images, so that a conversion applies to arrays too."""

    format = "array"
    sort_by_key = False

    def __init__(self, images: ImageSet, field: str) -> None:
        if not images.is_8bit:
            raise DataError(field, "resize and mode apply to 8-bit images; these float pixels are not "
                                   "multiples of 1/255")  # fmt: skip
        self.images, self.field, self.name = images, field, images.name
        self.label_names = images.label_names

    def items(self, conversion: Conversion, budget: Callable[[], int]) -> Iterator[Decoded]:
        pixels = self.images.as_uint8()  # (N, C, H, W)
        keys = self.images.key_texts()
        labels = self.images.labels
        for index in range(self.images.count):
            image = pixels[index, 0] if pixels.shape[1] == 1 else pixels[index].transpose(1, 2, 0)
            key = keys[index] or str(index)
            label: RawLabel = None if labels is None else int(labels[index])
            yield Decoded(name=key, label=label, pixels=convert_array(np.ascontiguousarray(image), key,
                                                                      conversion))  # fmt: skip

    def naming(self, names: list[str], labels: list[RawLabel]) -> Naming:
        return Naming(keys=names, labels=labels)
