"""One provenance block per audit: what went in, what ran it, and how long each phase took.

The same block (``PROVENANCE_SCHEMA``) is written into every job summary (service and local CLIs),
the Parquet exports' metadata and the MLflow run, so two audits can be compared field by field
(`memaudit diff`). Inputs are fingerprinted twice: ``file_sha256`` is the sha256 of the bytes the
user handed over (what `sha256sum` prints for one file; for a folder, several shards or a built-in
made of several files, the sha256 of a manifest of ``<sha256>  <relative path>`` lines, sorted by
path), and ``content_sha256`` is the sha256 of the decoded images exactly as the models saw them, so
the same samples stored in two formats have the same content digest.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

PROVENANCE_SCHEMA = 1
_READ_BYTES = 1 << 20
REVISION_ENV = "MEMAUDIT_SOURCE_REVISION"  # set by the Docker build, where there is no .git


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_READ_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_under(paths: Sequence[Path]) -> list[tuple[str, Path]]:
    """(name in the manifest, file) for every file, folders walked recursively."""
    found: list[tuple[str, Path]] = []
    for path in paths:
        if path.is_dir():
            found.extend((f"{path.name}/{file.relative_to(path).as_posix()}", file)
                         for file in sorted(path.rglob("*")) if file.is_file())  # fmt: skip
        else:
            found.append((path.name, path))
    return sorted(found, key=lambda item: item[0])


def paths_sha256(paths: Sequence[Path]) -> str:
    """One file: its sha256. Several files or a folder: the sha256 of the sorted manifest."""
    files = _files_under(paths)
    if len(files) == 1 and not paths[0].is_dir():
        return file_sha256(files[0][1])
    manifest = "".join(f"{file_sha256(file)}  {name}\n" for name, file in files)
    return hashlib.sha256(manifest.encode(errors="surrogateescape")).hexdigest()


def content_sha256(images: np.ndarray) -> str:
    """sha256 over dtype, shape and the C-order bytes of the decoded images (N, C, H, W)."""
    array = np.ascontiguousarray(images)
    digest = hashlib.sha256(f"{array.dtype.str}:{','.join(map(str, array.shape))}\n".encode())
    flat = array.reshape(-1).view(np.uint8)
    step = 64 * _READ_BYTES
    for start in range(0, flat.size, step):  # memory-mapped stores are read block by block
        digest.update(flat[start:start + step].data)
    return digest.hexdigest()


def input_record(source: str, *, file_sha256: str | None, images: Any | None = None) -> dict[str, Any]:
    """One input's entry; ``images`` is a models.imageset.ImageSet (its uint8 pixels when it has them)."""
    record: dict[str, Any] = {"source": source, "file_sha256": file_sha256}
    if images is not None:
        pixels = images.pixels if getattr(images, "pixels", None) is not None else images.images
        record.update(content_sha256=content_sha256(pixels), count=int(images.count),
                      image_shape=[int(side) for side in images.image_shape])  # fmt: skip
    return record


@functools.cache
def source_revision() -> str | None:
    """The git commit this code runs from: $MEMAUDIT_SOURCE_REVISION, else the checkout's HEAD
    (with ``+dirty`` when tracked files differ from it), else None (an installed wheel)."""
    if os.environ.get(REVISION_ENV):
        return os.environ[REVISION_ENV]
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()  # fmt: skip
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if status.strip() else head


def software() -> dict[str, Any]:
    import torch

    try:
        version = metadata.version("memaudit")
    except metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    return {
        "memaudit": version,
        "revision": source_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def seeds_of(config: Mapping[str, Any], prefix: str = "") -> dict[str, int]:
    """Every ``seed`` in a nested configuration, keyed by its dotted path (``audit.seed``)."""
    seeds: dict[str, int] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            seeds.update(seeds_of(value, f"{prefix}{key}."))
        elif "seed" in str(key) and isinstance(value, int) and not isinstance(value, bool):
            seeds[f"{prefix}{key}"] = value
    return seeds


def unit_records(units: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per unit: its models, device, precision policy and seconds (models.results.unit_environment)."""
    return [dict(unit) for unit in units]


def build(
    *,
    inputs: Mapping[str, Mapping[str, Any]],
    config: Mapping[str, Any],
    units: Iterable[Mapping[str, Any]],
    phases: Mapping[str, float | None],
) -> dict[str, Any]:
    return {
        "schema": PROVENANCE_SCHEMA,
        "software": software(),
        "inputs": {name: dict(record) for name, record in inputs.items()},
        "config": dict(config),
        "seeds": seeds_of(config),
        "units": unit_records(units),
        "phases": {name: (None if value is None else float(value)) for name, value in phases.items()},
    }


def local_input(spec: str, images: Any, field: str = "dataset") -> dict[str, Any]:
    """An input of the local CLIs: a built-in name or a path (file, folder, shard pattern)."""
    from app.services.data_identity import builtin_source_files
    from models.builtin_datasets import is_builtin
    from models.data import resolve_paths

    builtin = is_builtin(spec)
    paths = builtin_source_files(spec) if builtin else resolve_paths(spec, None, field)
    return input_record(f"{'builtin' if builtin else 'path'}:{spec}", file_sha256=paths_sha256(paths),
                        images=images)  # fmt: skip


def local_model_file(path: str) -> dict[str, Any]:
    return input_record(f"path:{path}", file_sha256=file_sha256(Path(path)))
