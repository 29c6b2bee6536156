"""Built-in datasets that work offline: sklearn's `digits` and Debian's `dataset-fashion-mnist`.

Spec strings: ``NAME[:SPLIT][:pad32]``.
- ``digits`` (all 1797 images), ``digits:train`` (1498) and ``digits:test`` (299): the test split is every
  sixth image (index % 6 == 5), a fixed rule that needs no seed. Pixels 0..16 become round(v * 255 / 16)
  as uint8, so the set is exactly 8-bit and every likelihood accepts it.
- ``fashion-mnist`` (= ``fashion-mnist:train``, 60000) and ``fashion-mnist:test`` (10000), read from the idx
  files the Debian package installs under /usr/share/datasets/fashion-mnist/; ``:pad32`` pads 28x28 to
  32x32 with two black pixels per side, as the paper does.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from models.imageset import DataError, ImageSet, image_set_from_array

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL_HINT = "apt-get install dataset-fashion-mnist"
# File names as shipped by the Debian package (gzip); unpacked copies without .gz are accepted too.
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
BUILTIN_NAMES = ("digits", "fashion-mnist")
DIGITS_TEST_EVERY = 6
IDX_UBYTE = 0x08


def is_builtin(spec: str) -> bool:
    return spec.split(":", 1)[0] in BUILTIN_NAMES


def load_builtin(spec: str, *, field: str = "dataset", fashion_root: Path = FASHION_MNIST_DIR) -> ImageSet:
    name, *options = spec.split(":")
    split = _split_option(options, spec, field)
    pad32 = "pad32" in options
    if name == "digits":
        if pad32:
            raise DataError(field, "digits: the pad32 option only applies to fashion-mnist")
        return load_digits(split or "all", field=field)
    if name == "fashion-mnist":
        return load_fashion_mnist(split or "train", pad32=pad32, root=fashion_root, field=field)
    raise DataError(field, f"unknown built-in dataset {name!r} (built-ins: {', '.join(BUILTIN_NAMES)})")


def load_digits(split: str = "all", *, field: str = "dataset") -> ImageSet:
    from sklearn.datasets import load_digits as sklearn_digits  # sklearn only where digits are loaded

    bunch = sklearn_digits()
    pixels = np.rint(np.asarray(bunch.images) * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    is_test = np.arange(len(pixels)) % DIGITS_TEST_EVERY == DIGITS_TEST_EVERY - 1
    if split == "train":
        pixels, labels = pixels[~is_test], labels[~is_test]
    elif split == "test":
        pixels, labels = pixels[is_test], labels[is_test]
    elif split != "all":
        raise DataError(field, f"digits has splits all, train and test, not {split!r}")
    suffix = "" if split == "all" else f":{split}"
    return image_set_from_array(pixels, name=f"digits{suffix}", field=field, labels=labels)


def load_fashion_mnist(
    split: str = "train", *, pad32: bool = False, root: Path = FASHION_MNIST_DIR, field: str = "dataset"
) -> ImageSet:
    if split not in FASHION_MNIST_FILES:
        raise DataError(field, f"fashion-mnist has splits train and test, not {split!r}")
    images_name, labels_name = FASHION_MNIST_FILES[split]
    pixels = read_idx(_find_idx(root, images_name, field), dims=3, field=field)  # (N, 28, 28)
    labels = read_idx(_find_idx(root, labels_name, field), dims=1, field=field)  # (N,)
    if pad32:
        pixels = np.pad(pixels, ((0, 0), (2, 2), (2, 2)))  # (N, 32, 32), black border
    name = f"fashion-mnist:{split}" + (":pad32" if pad32 else "")
    return image_set_from_array(pixels, name=name, field=field, labels=labels.astype(np.int64))


def read_idx(path: Path, *, dims: int, field: str) -> np.ndarray:
    """An unsigned-byte idx array (the MNIST file format), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError) as error:
        raise DataError(field, f"{path}: cannot read the idx file ({error})") from error
    header_bytes = 4 + 4 * dims
    if len(raw) < header_bytes or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE or raw[3] != dims:
        raise DataError(field, f"{path}: not an unsigned-byte idx file with {dims} dimensions")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    expected = int(np.prod(shape))
    if len(raw) - header_bytes != expected:
        raise DataError(field, f"{path}: holds {len(raw) - header_bytes} data bytes, header says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(shape)


def _find_idx(root: Path, stem: str, field: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        field,
        f"fashion-mnist is not installed ({root / stem}.gz is missing); "
        f"install it with `{FASHION_MNIST_INSTALL_HINT}`",
    )


def _split_option(options: list[str], spec: str, field: str) -> str | None:
    known = {"train", "test", "all", "pad32"}
    unknown = [option for option in options if option not in known]
    if unknown:
        raise DataError(field, f"{spec}: unknown option {unknown[0]!r} (options: train, test, all, pad32)")
    splits = [option for option in options if option != "pad32"]
    if len(splits) > 1:
        raise DataError(field, f"{spec}: give at most one split")
    return splits[0] if splits else None
