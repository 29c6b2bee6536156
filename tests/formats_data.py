"""Fashion-MNIST (the Debian package's files, read with models.builtin_datasets) written into every input
format the service reads: ImageFolder folders, zips and tars (PNG and JPEG), Hugging Face parquet,
WebDataset shards, .npz with keys, CIFAR-10 batches. Every writer puts the samples in the same order (sorted
key order), so the lossless formats must give identical image sets.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.builtin_datasets import load_fashion_mnist

CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle_boot")  # fmt: skip


@dataclass(frozen=True)
class Subset:
    images: np.ndarray  # (n, 28, 28) uint8
    labels: np.ndarray  # (n,) int64 class indices
    stems: list[str]  # "Trouser/t00017": sorted, the key without an extension

    @property
    def names(self) -> list[str]:
        return [CLASSES[label] for label in self.labels.tolist()]


def fashion_subset(count: int, offset: int = 0) -> Subset:
    """``count`` test images of Fashion-MNIST, ordered by their key (class folder, then index)."""
    test = load_fashion_mnist("test")
    pixels = test.as_uint8()[offset:offset + count, 0]
    assert test.labels is not None
    labels = test.labels[offset:offset + count]
    stems = [f"{CLASSES[label]}/t{offset + i:05d}" for i, label in enumerate(labels.tolist())]
    order = np.argsort(np.array(stems))
    return Subset(pixels[order], labels[order], [stems[i] for i in order])


def encode(pixels: np.ndarray, kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format={"png": "PNG", "jpg": "JPEG", "bmp": "BMP",
                                                           "webp": "WEBP"}[kind], **(
        {"quality": 95} if kind == "jpg" else {"lossless": True} if kind == "webp" else {}))
    return buffer.getvalue()


def extensions(count: int, kinds: tuple[str, ...]) -> list[str]:
    return [kinds[i % len(kinds)] for i in range(count)]


def write_folder(root: Path, subset: Subset, kinds: tuple[str, ...] = ("png",)) -> Path:
    for stem, pixels, kind in zip(subset.stems, subset.images, extensions(len(subset.stems), kinds),
                                  strict=True):  # fmt: skip
        path = root / f"{stem}.{kind}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(pixels, kind))
    return root


def write_zip(path: Path, subset: Subset, kinds: tuple[str, ...] = ("png",), wrap: str = "") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for stem, pixels, kind in zip(subset.stems, subset.images, extensions(len(subset.stems), kinds),
                                      strict=True):  # fmt: skip
            archive.writestr(f"{wrap}{stem}.{kind}", encode(pixels, kind))
    return path


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_tar(path: Path, subset: Subset, gz: bool = False, reverse: bool = False) -> Path:
    """An ImageFolder tar; ``reverse`` writes the members in reverse order (readers must sort)."""
    items = list(zip(subset.stems, subset.images, strict=True))
    with tarfile.open(path, "w:gz" if gz else "w") as archive:
        for stem, pixels in reversed(items) if reverse else items:
            _add(archive, f"{stem}.png", encode(pixels, "png"))
    return path


def write_webdataset(folder: Path, subset: Subset, shards: int = 3) -> list[Path]:
    """Shards ``train-000.tar`` ...: per sample ``{key}.png`` and ``{key}.cls`` (the class index)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, indices in enumerate(np.array_split(np.arange(len(subset.stems)), shards)):
        path = folder / f"train-{shard:03d}.tar"
        with tarfile.open(path, "w") as archive:
            for i in indices.tolist():
                _add(archive, f"{subset.stems[i]}.png", encode(subset.images[i], "png"))
                _add(archive, f"{subset.stems[i]}.cls", str(int(subset.labels[i])).encode())
                _add(archive, f"{subset.stems[i]}.json", json.dumps({"i": i}).encode())
        paths.append(path)
    return paths


def hf_metadata(names: tuple[str, ...] = CLASSES) -> dict[bytes, bytes]:
    """The schema metadata the `datasets` library writes for features {image: Image, label: ClassLabel}."""
    features = {"id": {"dtype": "string", "_type": "Value"}, "image": {"_type": "Image"},
                "label": {"names": list(names), "_type": "ClassLabel"}}  # fmt: skip
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def write_parquet(folder: Path, subset: Subset, shards: int = 2, with_id: bool = True) -> list[Path]:
    """Hugging Face layout written with pyarrow: image struct {bytes, path}, label int64 (ClassLabel)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    paths = []
    for shard, indices in enumerate(np.array_split(np.arange(len(subset.stems)), shards)):
        columns = {
            "image": pa.array([{"bytes": encode(subset.images[i], "png"), "path": None}
                               for i in indices.tolist()], type=image_type),
            "label": pa.array(subset.labels[indices].tolist(), type=pa.int64()),
        }  # fmt: skip
        if with_id:
            columns = {"id": pa.array([subset.stems[i] for i in indices.tolist()]), **columns}
        table = pa.table(columns).replace_schema_metadata(hf_metadata())
        path = folder / f"train-{shard:05d}-of-{shards:05d}.parquet"
        pq.write_table(table, path, row_group_size=16)
        paths.append(path)
    return paths


def write_npz(path: Path, subset: Subset) -> Path:
    np.savez_compressed(path, images=subset.images, labels=np.array(subset.names),
                        keys=np.array(subset.stems))  # fmt: skip
    return path


def write_cifar(folder: Path, subset: Subset, batches: int = 2) -> list[Path]:
    """CIFAR-10 binary batches of the images padded to 32x32 and repeated in 3 channels."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.repeat(np.pad(subset.images, ((0, 0), (2, 2), (2, 2)))[:, None], 3, axis=1)  # (n, 3, 32, 32)
    paths = []
    for batch, indices in enumerate(np.array_split(np.arange(len(subset.stems)), batches), start=1):
        records = np.concatenate([subset.labels[indices, None].astype(np.uint8),
                                  rgb[indices].reshape(len(indices), -1)], axis=1)  # fmt: skip
        path = folder / f"data_batch_{batch}.bin"
        path.write_bytes(records.astype(np.uint8).tobytes())
        paths.append(path)
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n")
    return paths
