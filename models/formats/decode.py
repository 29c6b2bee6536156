"""One Pillow decode-and-convert function for every encoded image (folders, archives, parquet, shards),
and the conformer that makes a stream of images one array shape (or refuses, naming the first misfit).

Only PNG, JPEG, BMP and WebP are decoded (Pillow is told to try no other plugin). An image's size is read
from its header and checked against the remaining byte budget before its pixels are decoded; Pillow's own
decompression-bomb guard applies too. Images come out as uint8 (H, W) for grayscale or (H, W, 3) for colour.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from models.imageset import DataError, DataTooLarge

ImageMode = Literal["L", "RGB"]
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_GRAY_MODES = frozenset({"L", "1"})
_COLOUR_MODES = frozenset({"RGB", "P", "CMYK", "YCbCr"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


@dataclass(frozen=True)
class Conversion:
    """What the user asked for: every image resized to (height, width) and/or converted to ``mode``."""

    resize: tuple[int, int] | None = None
    mode: ImageMode | None = None

    @property
    def active(self) -> bool:
        return self.resize is not None or self.mode is not None

    def describe(self) -> dict[str, Any] | None:
        if not self.active:
            return None
        return {"resize": None if self.resize is None else list(self.resize), "mode": self.mode,
                "filter": "bilinear, antialiased (Pillow)"}  # fmt: skip


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def decode_image(data: bytes, key: str, *, budget: int, field: str, conversion: Conversion) -> np.ndarray:
    """Encoded bytes -> uint8 (H, W) or (H, W, 3). Raises DataError naming ``key``."""
    from PIL import Image, UnidentifiedImageError  # Pillow only where encoded images are read

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            out_h, out_w = conversion.resize or (height, width)
            channels = 1 if (conversion.mode or _native_mode(image, key, field, conversion)) == "L" else 3
            if max(width * height, out_h * out_w) * channels > budget:
                raise DataTooLarge(field, f"{key}: the decoded images exceed the limit on uncompressed size")
            return _pixels(image, key, field, conversion)
    except DataError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError,
            EOFError) as error:  # fmt: skip
        raise DataError(field, f"{key}: cannot decode the image ({error})") from error


def _native_mode(image: Any, key: str, field: str, conversion: Conversion) -> ImageMode:
    mode = image.mode
    if mode in _GRAY_MODES:
        return "L"
    if mode == "P" and "transparency" in image.info and conversion.mode is None:
        raise DataError(field, f"{key}: the image has an alpha channel (transparency); give dataset.mode "
                               "L or RGB to drop it")  # fmt: skip
    if mode in _COLOUR_MODES:
        return "RGB"
    if mode in _ALPHA_MODES:
        if conversion.mode is None:
            raise DataError(field, f"{key}: colour mode {mode} has an alpha channel; give dataset.mode "
                                   "L or RGB to drop it, or use 8-bit grayscale or RGB images")  # fmt: skip
        return "RGB"
    raise DataError(field, f"{key}: colour mode {mode} is not supported (use 8-bit grayscale or RGB; "
                           "16-bit and float images are refused)")  # fmt: skip


def _pixels(image: Any, key: str, field: str, conversion: Conversion) -> np.ndarray:
    from PIL import Image

    mode = conversion.mode or _native_mode(image, key, field, conversion)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise DataError(field, f"{key}: colour mode {image.mode} is not supported (16-bit and float images "
                               "are refused; convert them to 8-bit)")  # fmt: skip
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA").convert("RGB")  # alpha dropped: only when a mode was asked for
    converted = image.convert(mode)
    if conversion.resize is not None and converted.size != (conversion.resize[1], conversion.resize[0]):
        size = (conversion.resize[1], conversion.resize[0])  # Pillow takes (width, height)
        converted = converted.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(converted, dtype=np.uint8)


def convert_array(pixels: np.ndarray, key: str, conversion: Conversion) -> np.ndarray:
    """A decoded uint8 (H, W) / (H, W, 3) image (array formats, CIFAR) through the same conversion."""
    if not conversion.active:
        return pixels
    from PIL import Image

    image = Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB")
    return _pixels(image, key, "dataset", conversion)


@dataclass
class Conformer:
    """Checks that every image has the first one's shape (size and channels), else names the misfit."""

    field: str
    first_key: str | None = None
    shape: tuple[int, ...] | None = None
    hint: str = ("give dataset.resize [H, W] (and dataset.mode L or RGB) to convert them (CLI: --resize H,W, "
                 "--image-mode)")
    seen: int = 0

    def check(self, pixels: np.ndarray, key: str) -> None:
        self.seen += 1
        if self.shape is None:
            self.first_key, self.shape = key, tuple(pixels.shape)
            return
        if tuple(pixels.shape) != self.shape:
            raise DataError(
                self.field,
                f"{key}: image sized {describe_shape(pixels.shape)} differs from {self.first_key} "
                f"({describe_shape(self.shape)}); all images must have the same size and colour mode; "
                + self.hint,
            )


def describe_shape(shape: tuple[int, ...]) -> str:
    height, width = shape[0], shape[1]
    mode = "L" if len(shape) == 2 else "RGB"
    return f"{width}x{height} {mode}"
