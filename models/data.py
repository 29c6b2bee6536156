"""Datasets: loading (arrays, image folders and archives, parquet, WebDataset, CIFAR-10, built-ins) and
the checks every audit input must pass (SPEC §6).

The one entry point for callers is :func:`load_dataset`, then :func:`validate_audit_inputs` once the
likelihood and fold count are known. Both raise :class:`DataError` (a ``ValueError`` with ``field``).
"""

from __future__ import annotations

from pathlib import Path

from models.builtin_datasets import FASHION_MNIST_DIR, is_builtin, load_builtin
from models.data_files import ensure_inside, read_npy, read_npz
from models.formats import ArchiveLimits, Conversion, FormatName, expand_braces, open_source, read_images
from models.formats.arrays import ImageSetSource, npz_keys_and_labels
from models.imageset import (
    EIGHT_BIT_LIKELIHOODS,
    LIKELIHOODS,
    DataError,
    DataTooLarge,
    ImageSet,
    check_likelihood_range,
    image_set_from_array,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "EIGHT_BIT_LIKELIHOODS",
    "LIKELIHOODS",
    "DataError",
    "DataTooLarge",
    "ImageSet",
    "check_likelihood_range",
    "image_set_from_array",
    "load_dataset",
    "validate_audit_inputs",
]

DEFAULT_MAX_BYTES = 2 * 1024 * 1024 * 1024


def load_dataset(
    spec: str | Path,
    *,
    data_root: Path | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    field: str = "dataset",
    fashion_root: Path = FASHION_MNIST_DIR,
    conversion: Conversion | None = None,
    format: FormatName = "auto",
    limits: ArchiveLimits | None = None,
) -> ImageSet:
    """A built-in name (``digits``, ``fashion-mnist[:test][:pad32]``) or a path: .npz/.npy, a folder /
    .zip / .tar(.gz) of images, parquet, WebDataset shards (a brace pattern names several), CIFAR-10.

    Built-in names win over same-named files (write ``./digits`` for a file). With ``data_root`` set, a
    relative path is taken inside it and any path, symlinks resolved, must stay inside it.
    ``max_bytes`` bounds the uncompressed bytes read (checked before reading them); ``limits`` the
    archives (members, compression ratio). ``conversion`` resizes / converts every image.
    """
    conversion = conversion or Conversion()
    limits = limits or ArchiveLimits(max_bytes=max_bytes)
    if isinstance(spec, str) and is_builtin(spec):
        return convert(load_builtin(spec, field=field, fashion_root=fashion_root), conversion, limits, field)
    paths = resolve_paths(str(spec), data_root, field)
    if len(paths) == 1 and not paths[0].exists():
        builtins = "digits, fashion-mnist"
        raise DataError(field, f"no such file, folder or built-in dataset: {spec} (built-ins: {builtins})")
    source = open_source(paths, field=field, limits=limits, format=format, confine_to=data_root,
                         name=Path(str(spec)).name)  # fmt: skip
    if source is not None:
        return read_images(source, conversion=conversion, limits=limits, field=field)
    return convert(read_array_dataset(paths[0], max_bytes=max_bytes, field=field), conversion, limits, field)


def read_array_dataset(path: Path, *, max_bytes: int, field: str) -> ImageSet:
    """An .npz (``images``, optional ``labels`` and ``keys``) or .npy file."""
    if path.suffix.lower() == ".npy":
        return image_set_from_array(read_npy(path, max_bytes=max_bytes, field=field), name=path.name,
                                    field=field)  # fmt: skip
    images, labels, keys = read_npz(path, max_bytes=max_bytes, field=field)
    count = images.shape[0] if images.ndim else 0
    checked_keys, indices, names = npz_keys_and_labels(keys, labels, count, field)
    return image_set_from_array(images, name=path.name, field=field, labels=indices, keys=checked_keys,
                                label_names=names)  # fmt: skip


def convert(images: ImageSet, conversion: Conversion, limits: ArchiveLimits, field: str) -> ImageSet:
    """``images`` resized / converted as asked (unchanged when nothing is asked)."""
    if not conversion.active:
        return images
    return read_images(ImageSetSource(images, field), conversion=conversion, limits=limits, field=field)


def resolve_paths(spec: str, data_root: Path | None, field: str) -> list[Path]:
    """The file(s) a path names: one, or the shards of a brace pattern; each confined to ``data_root``."""
    try:
        names = expand_braces(spec) if "{" in spec else [spec]
    except ValueError as error:
        raise DataError(field, str(error)) from None
    return [_resolve_path(Path(name), data_root, field) for name in names]


def validate_audit_inputs(
    train: ImageSet,
    heldout: ImageSet | None,
    likelihood: str,
    folds: int,
    *,
    repeats: int = 1,
) -> None:
    """Everything about the data that must hold before an audit starts (SPEC §1, §6)."""
    if folds < 2:
        raise DataError("folds", f"need at least 2 folds, got {folds}")
    if folds > train.count:
        raise DataError("folds", f"{folds} folds is more than the {train.count} training images")
    if repeats < 1:
        raise DataError("repeats", f"need at least 1 repetition, got {repeats}")
    check_likelihood_range(train, likelihood, field="dataset")
    if heldout is not None and heldout.image_shape != train.image_shape:
        raise DataError(
            "heldout",
            f"held-out images are shaped {heldout.image_shape} (C, H, W) but training images are "
            f"{train.image_shape}",
        )


def _resolve_path(path: Path, data_root: Path | None, field: str) -> Path:
    if data_root is None:
        return path
    candidate = path if path.is_absolute() else data_root / path
    return ensure_inside(candidate, data_root, field)
