"""Images as inline base64 PNG data URIs (the report is one self-contained file)."""

from __future__ import annotations

import base64
import io

import numpy as np

from app.reports.model import Image

# Thumbnails are upscaled with nearest neighbour so 8x8 or 28x28 pixels stay crisp and visible.
THUMBNAIL_PX = 96


def to_uint8(image: Image) -> np.ndarray:
    """(H, W) or (H, W, C) -> uint8 with C in {1, 3, 4} squeezed to (H, W) for grayscale."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first (C, H, W) as stored by torch pipelines
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise ValueError(f"an image must be (H, W) or (H, W, C), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    values = np.nan_to_num(array.astype(np.float64), nan=0.0)
    if values.max(initial=0.0) > 1.0:  # 0..255 stored as float
        values = values / 255.0
    return np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)


def png_data_uri(image: Image, size_px: int = THUMBNAIL_PX) -> str:
    from PIL import Image as PILImage  # lazy: only report rendering needs Pillow

    pixels = to_uint8(image)
    picture = PILImage.fromarray(pixels)
    scale = max(1, size_px // max(pixels.shape[0], pixels.shape[1]))
    if scale > 1:
        size = (pixels.shape[1] * scale, pixels.shape[0] * scale)
        picture = picture.resize(size, PILImage.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
