"""Datasets: loading (files, PNG folders, built-ins) and the checks every audit input must pass (SPEC §6).

The one entry point for callers is :func:`load_dataset`, then :func:`validate_audit_inputs` once the
likelihood and fold count are known. Both raise :class:`DataError` (a ``ValueError`` with ``field``).
"""

from __future__ import annotations

from pathlib import Path

from models.builtin_datasets import FASHION_MNIST_DIR, is_builtin, load_builtin
from models.data_files import ensure_inside, read_npy, read_npz, read_png_folder
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
) -> ImageSet:
    """A built-in name (``digits``, ``fashion-mnist[:test][:pad32]``) or a path to .npz/.npy/PNG folder.

    Built-in names win over same-named files (write ``./digits`` for a file). With ``data_root`` set, a
    relative path is taken inside it and any path, symlinks resolved, must stay inside it.
    ``max_bytes`` bounds the uncompressed array bytes read from a file, checked before reading them.
    """
    if isinstance(spec, str) and is_builtin(spec):
        return load_builtin(spec, field=field, fashion_root=fashion_root)
    path = _resolve_path(Path(spec), data_root, field)
    if path.is_dir():
        pixels = read_png_folder(path, max_bytes=max_bytes, field=field, confine_to=data_root)
        return image_set_from_array(pixels, name=path.name, field=field)
    if not path.is_file():
        builtins = "digits, fashion-mnist"
        raise DataError(field, f"no such file, folder or built-in dataset: {spec} (built-ins: {builtins})")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        images, labels = read_npz(path, max_bytes=max_bytes, field=field)
        return image_set_from_array(images, name=path.name, field=field, labels=labels)
    if suffix == ".npy":
        return image_set_from_array(
            read_npy(path, max_bytes=max_bytes, field=field), name=path.name, field=field
        )
    raise DataError(field, f"{path.name}: unsupported file type (use .npz, .npy or a folder of .png images)")


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
