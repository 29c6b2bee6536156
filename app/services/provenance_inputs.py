"""The inputs part of a job's provenance (app.provenance): every dataset and model file the job read,
fingerprinted when its units are planned, i.e. from the content the units train on.

A job's datasets are a spec each (``{"id"}``, ``{"builtin"}`` or ``{"path"}``); model files are the
paths of a GAN job's embedding network and generator, under the data root.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.provenance import input_record, paths_sha256
from app.services.data_identity import builtin_source_files
from app.services.datasets import data_root_paths, get_dataset
from app.settings import Settings

DATASET_FIELDS = ("dataset", "heldout", "generated")
INPUTS_FILE = "provenance-inputs.json"
# Where a GAN job names a model file (relative to the data root), and the input's name.
MODEL_FILE_FIELDS = {
    ("mrgan", "embedding", "path"): "mrgan.embedding",
    ("copy_test", "embedding", "path"): "copy_test.embedding",
    ("copy_test", "generator_path"): "copy_test.generator",
}


def source_text(spec: dict[str, Any]) -> str:
    if "id" in spec:
        return f"upload:{spec['id']}"
    if "builtin" in spec:
        return f"builtin:{spec['builtin']}"
    return f"path:{spec['path']}"


def dataset_file_sha256(spec: dict[str, Any], session: Session, settings: Settings, owner: str,
                        field: str) -> str:  # fmt: skip
    if "id" in spec:  # the upload's own digest, taken while it streamed to disk
        return get_dataset(session, owner, spec["id"], field=f"{field}.id").sha256
    if "builtin" in spec:
        return paths_sha256(builtin_source_files(spec["builtin"]))
    return paths_sha256(data_root_paths(spec["path"], settings, f"{field}.path"))


def _nested(spec: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = spec
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def model_file_inputs(spec: dict[str, Any], settings: Settings) -> dict[str, dict[str, Any]]:
    inputs = {}
    for path, name in MODEL_FILE_FIELDS.items():
        relative = _nested(spec, path)
        if isinstance(relative, str) and relative:
            files = data_root_paths(relative, settings, ".".join(path))
            inputs[name] = input_record(f"path:{relative}", file_sha256=paths_sha256(files))
    return inputs


def job_inputs(spec: dict[str, Any], session: Session, settings: Settings, owner: str,
               images_of: Callable[[str], Any]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every input of a job; ``images_of(field)`` loads one of its datasets (an ImageSet)."""
    inputs: dict[str, dict[str, Any]] = {}
    for field in DATASET_FIELDS:
        dataset = spec.get(field)
        if isinstance(dataset, dict):
            digest = dataset_file_sha256(dataset, session, settings, owner, field)
            inputs[field] = input_record(source_text(dataset), file_sha256=digest, images=images_of(field))
    return {**inputs, **model_file_inputs(spec, settings)}


def write_inputs(job_dir: Path, inputs: dict[str, dict[str, Any]]) -> None:
    """Atomic (a twin plan writes the same content; readers never see half a file)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    temp = job_dir / f".{INPUTS_FILE}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"
    try:
        temp.write_text(json.dumps(inputs, indent=1, sort_keys=True))
        os.replace(temp, job_dir / INPUTS_FILE)
    finally:
        temp.unlink(missing_ok=True)


def read_inputs(job_dir: Path) -> dict[str, dict[str, Any]] | None:
    try:
        inputs: dict[str, dict[str, Any]] = json.loads((job_dir / INPUTS_FILE).read_text())
    except FileNotFoundError:
        return None  # planned by a version that did not record them
    return inputs
