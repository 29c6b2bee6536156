"""schemathesis hooks (SCHEMATHESIS_HOOKS=tests.reliability.schemathesis_hooks): what an upload holds.

POST /datasets declares its file part as ``application/x-npy``, ``application/zip`` (an .npz),
``application/x-tar`` (a tar of images, ImageFolder layout) or ``application/vnd.apache.parquet``. JSON
Schema cannot say what makes such bytes a dataset, so these strategies generate files that follow the
rules docs/api.md states: an (N, H, W) or (N, H, W, C) array with C in {1, 3}, uint8 0..255 or float
0..1 (finite); an .npz holds it as ``images`` with optional integer ``labels`` (N,). Without them
schemathesis sends arbitrary bytes (a PNG, a PDF) as "valid" files, which the server rightly refuses.
Refused files (garbage, bombs, NaN pixels...) are the hostile-input corpus's job.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import schemathesis
from hypothesis import strategies as st

_SHAPES = st.tuples(
    st.integers(1, 12),  # N
    st.integers(1, 12),  # H
    st.integers(1, 12),  # W
    st.sampled_from([None, 1, 3]),  # C (None: no channel axis)
)


@st.composite
def image_arrays(draw: st.DrawFn) -> np.ndarray:
    count, height, width, channels = draw(_SHAPES)
    shape = (count, height, width) if channels is None else (count, height, width, channels)
    seed = draw(st.integers(0, 2**32 - 1))
    generator = np.random.default_rng(seed)
    if draw(st.booleans()):
        return generator.integers(0, 256, size=shape, dtype=np.uint8)
    return generator.random(shape, dtype=np.float32)  # in [0, 1)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@st.composite
def npy_files(draw: st.DrawFn) -> bytes:
    return _npy(draw(image_arrays()))


@st.composite
def npz_files(draw: st.DrawFn) -> bytes:
    images = draw(image_arrays())
    members = {"images.npy": _npy(images)}
    if draw(st.booleans()):
        members["labels.npy"] = _npy(np.arange(images.shape[0], dtype=np.int64) % 10)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@st.composite
def encoded_images(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """(relative path, PNG bytes) of 1..6 same-sized uint8 images in class folders."""
    count, height, width, channels = draw(_SHAPES)
    generator = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (height, width) if channels in (None, 1) else (height, width, 3)
    return [(f"class{i % 2}/{i:03d}.png", _png(generator.integers(0, 256, size=shape, dtype=np.uint8)))
            for i in range(min(count, 6))]  # fmt: skip


@st.composite
def image_tars(draw: st.DrawFn) -> bytes:
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in draw(encoded_images()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@st.composite
def parquet_files(draw: st.DrawFn) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = draw(encoded_images())
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cells = [{"bytes": data, "path": None} for _, data in images]
    labels = [i % 2 for i in range(len(images))]
    table = pa.table({"image": pa.array(cells, type=image_type), "label": labels})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


schemathesis.openapi.media_type("application/x-npy", npy_files())
schemathesis.openapi.media_type("application/zip", npz_files())
schemathesis.openapi.media_type("application/x-tar", image_tars())
schemathesis.openapi.media_type("application/vnd.apache.parquet", parquet_files())
