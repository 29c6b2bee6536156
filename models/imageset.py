"""The in-memory form of every dataset, and the checks that turn raw arrays into it.

An :class:`ImageSet` holds images shaped (N, C, H, W), whatever the file held (uint8 0..255 or float
0..1, channels last): ``pixels`` is the data as compact as it came (uint8 levels for integer sources,
float32 intensities otherwise) and ``images`` the float32 intensities in [0, 1] that the science reads
(k / 255 for uint8 sources), computed on first use and kept. Training takes ``pixels`` directly, so
a worker holds a 60k x 28 x 28 uint8 set as its 47 MB original, not as 188 MB of floats.
Sample ids are the row indices as given; the user's own ids (``keys``) and class labels travel with
them when the format has them.
Every problem with the data is a :class:`DataError` that names the offending field, so the service can
answer 4xx and the CLI can print one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

SourceKind = Literal["uint8", "float"]

# 8-bit likelihoods need pixels that are exactly k/255: their dequantization (u + 255 x) / 256 assumes it.
EIGHT_BIT_LIKELIHOODS = frozenset({"gaussian_diag", "gaussian_const", "logistic"})
LIKELIHOODS = frozenset({"bernoulli"}) | EIGHT_BIT_LIKELIHOODS
# Float pixels count as 8-bit when x * 255 is within this of an integer (float32 round trip is ~1e-5).
EIGHT_BIT_TOLERANCE = 1e-3


class DataError(ValueError):
    """Bad input data; ``field`` names the request field or CLI argument at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class DataTooLarge(DataError):
    """The data exceeds a configured size limit (the service answers 413 rather than 422)."""


@dataclass(frozen=True, eq=False)
class ImageSet:
    pixels: np.ndarray  # (N, C, H, W) uint8 0..255 (source_kind "uint8") or float32 in [0, 1] ("float")
    source_kind: SourceKind
    name: str
    original_shape: tuple[int, ...]
    labels: np.ndarray | None = None  # (N,) int64; indices into label_names when those are known (-1: none)
    keys: np.ndarray | None = None  # (N,) object array of str: the user's sample ids
    label_names: tuple[str, ...] | None = None  # class names (ImageFolder folders, ClassLabel names)

    @cached_property
    def images(self) -> np.ndarray:
        """(N, C, H, W) float32 intensities in [0, 1]: k / 255 for uint8 sources (made once, then kept)."""
        if self.pixels.dtype == np.uint8:
            return self.pixels.astype(np.float32) / np.float32(255.0)
        return self.pixels

    @property
    def count(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.pixels.shape[1:]
        return int(channels), int(height), int(width)

    @property
    def is_8bit(self) -> bool:
        """Whether every pixel is exactly representable as k/255 (always true for uint8 sources)."""
        return self.source_kind == "uint8" or _is_8bit_quantised(self.pixels)

    @property
    def min_intensity(self) -> float:
        return _intensity(self.pixels, self.pixels.min())

    @property
    def max_intensity(self) -> float:
        return _intensity(self.pixels, self.pixels.max())

    def as_uint8(self) -> np.ndarray:
        """The images as (N, C, H, W) uint8 0..255 (exact for 8-bit data, rounded otherwise); for uint8
        sources a read-only view of the original, no copy."""
        if self.pixels.dtype == np.uint8:
            view = self.pixels.view()
            view.flags.writeable = False
            return view
        return np.rint(self.pixels * 255.0).astype(np.uint8)

    def subset(self, indices: np.ndarray, name: str | None = None) -> ImageSet:
        """Rows ``indices`` as a new set; their sample ids become 0..len-1."""
        labels = None if self.labels is None else self.labels[indices]
        return ImageSet(
            pixels=np.ascontiguousarray(self.pixels[indices]),
            source_kind=self.source_kind,
            name=name or self.name,
            original_shape=(len(indices), *self.original_shape[1:]),
            labels=labels,
            keys=None if self.keys is None else self.keys[indices],
            label_names=self.label_names,
        )

    def label_texts(self) -> list[str | None]:
        """Every sample's label as text (its class name when known), None where it has none."""
        if self.labels is None:
            return [None] * self.count
        if self.label_names is None:
            return [str(label) for label in self.labels.tolist()]
        return [None if label < 0 else self.label_names[label] for label in self.labels.tolist()]

    def key_texts(self) -> list[str | None]:
        return [None] * self.count if self.keys is None else [str(key) for key in self.keys.tolist()]

    def describe(self) -> dict[str, Any]:
        """JSON-safe facts about the set (what `GET /datasets/{id}` shows)."""
        return {
            "name": self.name,
            "count": self.count,
            "image_shape": list(self.image_shape),
            "original_shape": list(self.original_shape),
            "source_kind": self.source_kind,
            "min": self.min_intensity,
            "max": self.max_intensity,
            "is_8bit": self.is_8bit,
            "has_labels": self.labels is not None,
            "has_keys": self.keys is not None,
            "label_names": None if self.label_names is None else list(self.label_names),
        }


def image_set_from_array(
    array: np.ndarray,
    *,
    name: str,
    field: str = "dataset",
    labels: np.ndarray | None = None,
    keys: np.ndarray | None = None,
    label_names: tuple[str, ...] | None = None,
) -> ImageSet:
    """Check a raw array (N, H, W) or (N, H, W, C) with C in {1, 3} and convert it to an ImageSet.

    ``keys`` (one string per image) must already be checked (models.formats.base.check_keys)."""
    original_shape = tuple(int(s) for s in array.shape)
    _check_dtype(array, field)
    _check_shape(array, field)
    source_kind, pixels = _to_compact(array, field)
    # (N, H, W) -> (N, 1, H, W); (N, H, W, C) -> (N, C, H, W)
    pixels = pixels[:, None, :, :] if pixels.ndim == 3 else np.transpose(pixels, (0, 3, 1, 2))
    checked_labels = None if labels is None else _check_labels(labels, original_shape[0], field, label_names)
    if keys is not None and keys.shape != (original_shape[0],):
        raise DataError(f"{field}.keys", f"expected {original_shape[0]} keys, got {keys.shape[0]}")
    return ImageSet(
        pixels=np.ascontiguousarray(pixels),
        source_kind=source_kind,
        name=name,
        original_shape=original_shape,
        labels=checked_labels,
        keys=keys,
        label_names=label_names,
    )


def check_likelihood_range(images: ImageSet, likelihood: str, field: str = "dataset") -> None:
    """Refuse data whose pixel values the likelihood cannot score."""
    check_likelihood_facts(likelihood, is_8bit=lambda: images.is_8bit, field=field)


def check_likelihood_facts(
    likelihood: str, *, is_8bit: bool | Callable[[], bool], field: str = "dataset"
) -> None:
    """The rule behind :func:`check_likelihood_range`, from recorded facts rather than pixels.

    ``is_8bit`` may be a callable so that the pixel scan runs only when the likelihood needs it.
    """
    if likelihood not in LIKELIHOODS:
        known = ", ".join(sorted(LIKELIHOODS))
        raise DataError("likelihood", f"unknown likelihood {likelihood!r} (choose one of {known})")
    # ImageSet already guarantees [0, 1], which is all Bernoulli (dynamic binarization) needs.
    if likelihood in EIGHT_BIT_LIKELIHOODS and not (is_8bit() if callable(is_8bit) else is_8bit):
        raise DataError(
            field,
            f"the {likelihood} likelihood scores 8-bit images, but these float pixels are not multiples of "
            "1/255; supply uint8 data (or floats k/255), or use the bernoulli likelihood",
        )


def _check_dtype(array: np.ndarray, field: str) -> None:
    if array.dtype.hasobject or array.dtype.kind not in "biuf":
        raise DataError(field, f"unsupported element type {array.dtype}; use uint8 0..255 or float 0..1")


def check_array_layout(array: np.ndarray, field: str) -> None:
    """The element type and shape rules of image_set_from_array (for scanners that never load the data)."""
    _check_dtype(array, field)
    _check_shape(array, field)


def _check_shape(array: np.ndarray, field: str) -> None:
    if array.ndim not in (3, 4):
        raise DataError(
            field,
            f"expected images shaped (N, H, W) or (N, H, W, C), got an array of shape {array.shape}",
        )
    if array.shape[0] == 0:
        raise DataError(field, "the dataset is empty (0 images)")
    if array.shape[1] == 0 or array.shape[2] == 0:
        raise DataError(field, f"images have an empty side: shape {array.shape}")
    if array.ndim == 4 and array.shape[3] not in (1, 3):
        hint = " (channels first? transpose to (N, H, W, C))" if array.shape[1] in (1, 3) else ""
        raise DataError(field, f"images must have 1 or 3 channels last, got shape {array.shape}{hint}")


def _to_compact(array: np.ndarray, field: str) -> tuple[SourceKind, np.ndarray]:
    """uint8 levels for integer sources (no copy when already uint8), float32 intensities otherwise."""
    if array.dtype.kind in "iu":
        int_low, int_high = int(array.min()), int(array.max())
        if int_low < 0 or int_high > 255:
            raise DataError(field, f"integer pixels must lie in 0..255, found {int_low}..{int_high}")
        return "uint8", array.astype(np.uint8, copy=False)
    if array.dtype.kind == "b":
        return "float", array.astype(np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        raise DataError(field, f"{int((~finite).sum())} pixel values are NaN or infinite")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise DataError(
            field,
            f"float pixels must lie in [0, 1], found [{low:.6g}, {high:.6g}] (uint8 data: keep it uint8)",
        )
    return "float", array.astype(np.float32, copy=False)


def _intensity(pixels: np.ndarray, value: np.generic) -> float:
    """A stored pixel value as the float32 intensity the science reads, as a Python float."""
    if pixels.dtype == np.uint8:
        return float(np.float32(value) / np.float32(255.0))
    return float(value)


def _check_labels(
    labels: np.ndarray, count: int, field: str, names: tuple[str, ...] | None = None
) -> np.ndarray:
    if labels.dtype.hasobject or labels.dtype.kind not in "iu":
        raise DataError(f"{field}.labels", f"labels must be integers, got element type {labels.dtype}")
    if labels.shape != (count,):
        raise DataError(f"{field}.labels", f"expected {count} labels shaped ({count},), got {labels.shape}")
    if names is not None and count and (int(labels.min()) < -1 or int(labels.max()) >= len(names)):
        raise DataError(f"{field}.labels", f"labels must index the {len(names)} class names")
    return labels.astype(np.int64)


def _is_8bit_quantised(images: np.ndarray) -> bool:
    scaled = images.astype(np.float64) * 255.0
    return bool(np.abs(scaled - np.rint(scaled)).max() <= EIGHT_BIT_TOLERANCE)
