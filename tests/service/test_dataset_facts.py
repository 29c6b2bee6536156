"""POST /jobs checks uploaded datasets from their `datasets` row (facts recorded at upload), never by
reading the stored file; built-in facts are computed once. In-process API on a migrated SQLite
database with the embedded broker and no worker (queued jobs are never run)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from app.services.dataset_facts import _SCANNED, DatasetFacts, _builtin_facts, dataset_facts
from models.builtin_datasets import load_builtin
from models.imageset import image_set_from_array
from tests.service.harness import environment
from tests.service.jobdata import digits_subset, npy_bytes, npz_bytes, tiny_job

GARBAGE = b"\x93NUMPY this file was overwritten after the upload"


@pytest.fixture(scope="module")
def app_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path, str]]:
    from app.api.main import create_app
    from app.migrate import upgrade_to_head

    tmp: Path = tmp_path_factory.mktemp("facts")
    database = f"sqlite:///{tmp / 'memaudit.db'}"
    env = {
        "MEMAUDIT_DATA_DIR": str(tmp / "data"),
        "MEMAUDIT_DATABASE_URL": database,
        "MEMAUDIT_BROKER_URL": f"sqla+sqlite:///{tmp / 'broker.db'}",
        "MEMAUDIT_API_KEYS": "",
        "MEMAUDIT_JOB_RATE_LIMIT": "0",
    }
    with environment(env):
        upgrade_to_head(database)
        with TestClient(create_app()) as client:
            yield client, tmp / "data" / "uploads", database


def _upload_then_garble(client: TestClient, uploads: Path, name: str, content: bytes) -> str:
    response = client.post("/datasets", files={"file": (name, content)})
    assert response.status_code == 201, response.text
    stored = [path for path in uploads.iterdir() if path.name.startswith(response.json()["sha256"])]
    assert len(stored) == 1
    stored[0].write_bytes(GARBAGE)  # any read of the file from now on is a 422
    dataset_id: str = response.json()["id"]
    return dataset_id


def _refusal(response: Any) -> tuple[list[str], str]:
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    return detail["loc"], detail["msg"]


def _gaussian(job: dict[str, Any]) -> dict[str, Any]:
    return {**job, "model": {**job["model"], "likelihood": "gaussian_diag"}}


def test_post_jobs_on_an_upload_never_reads_its_file(app_env: tuple[TestClient, Path, str]) -> None:
    client, uploads, _ = app_env
    train = _upload_then_garble(client, uploads, "train.npz", npz_bytes(digits_subset(12)))
    accepted = client.post("/jobs", json=_gaussian(tiny_job({"id": train}, batch_size=8)))
    assert accepted.status_code == 202, accepted.text
    job = client.get(accepted.headers["Location"]).json()
    assert job["n_samples"] == 12 and job["image_shape"] == [1, 8, 8]

    too_many_folds = client.post("/jobs", json=tiny_job({"id": train}, batch_size=8, folds=13))
    assert _refusal(too_many_folds) == (["audit", "folds"], "K=13 exceeds the 12 samples of the dataset")


def test_likelihood_and_heldout_refusals_come_from_the_facts(app_env: tuple[TestClient, Path, str]) -> None:
    client, uploads, _ = app_env
    not_8bit = (digits_subset(10, offset=40) / 255.0 + 1e-2).clip(0, 1).astype(np.float32)
    float_id = _upload_then_garble(client, uploads, "float.npy", npy_bytes(not_8bit))
    loc, message = _refusal(client.post("/jobs", json=_gaussian(tiny_job({"id": float_id}, batch_size=8))))
    assert loc == ["dataset"] and "float pixels are not multiples of 1/255" in message
    bernoulli = client.post("/jobs", json=tiny_job({"id": float_id}, batch_size=8))
    assert bernoulli.status_code == 202  # bernoulli takes it

    rgb = _upload_then_garble(client, uploads, "rgb.npy", npy_bytes(np.zeros((6, 8, 8, 3), np.uint8)))
    mismatched = client.post("/jobs", json={**tiny_job({"id": float_id}, batch_size=8),
                                            "heldout": {"id": rgb}})  # fmt: skip
    assert _refusal(mismatched) == (["heldout"], "images are [3, 8, 8], the training set's are [1, 8, 8]")


def test_gan_jobs_check_uploads_from_the_facts(app_env: tuple[TestClient, Path, str]) -> None:
    client, uploads, _ = app_env
    train, heldout, generated = (
        _upload_then_garble(client, uploads, f"gan{offset}.npy", npy_bytes(digits_subset(8, offset)))
        for offset in (300, 310, 320)
    )
    body = {"kind": "copy_test", "dataset": {"id": train}, "heldout": {"id": heldout},
            "generated": {"id": generated}, "copy_test": {"cells": 2}}  # fmt: skip
    accepted = client.post("/jobs", json=body)
    assert accepted.status_code == 202, accepted.text
    rgb = _upload_then_garble(client, uploads, "gan_rgb.npy", npy_bytes(np.ones((8, 8, 8, 3), np.uint8)))
    mismatched = client.post("/jobs", json={**body, "generated": {"id": rgb}})
    assert _refusal(mismatched) == (["generated"], "images are [3, 8, 8], the training set's are [1, 8, 8]")


def test_rows_from_before_0002_are_scanned_once(app_env: tuple[TestClient, Path, str]) -> None:
    client, _, database = app_env
    as_floats = (digits_subset(9, offset=80) / np.float32(255.0)).astype(np.float32)  # exactly k/255
    upload = client.post("/datasets", files={"file": ("legacy.npy", npy_bytes(as_floats))}).json()
    engine = create_engine(database)
    with engine.begin() as connection:  # what revision 0002 leaves for a float upload it cannot scan
        connection.execute(text("UPDATE datasets SET is_8bit = NULL WHERE id = :id"), {"id": upload["id"]})
    accepted = client.post("/jobs", json=_gaussian(tiny_job({"id": upload["id"]}, batch_size=8)))
    assert accepted.status_code == 202
    with engine.connect() as connection:
        flag = connection.execute(text("SELECT is_8bit FROM datasets WHERE id = :id"), {"id": upload["id"]})
        assert flag.scalar_one() in (True, 1)
    engine.dispose()


@pytest.mark.parametrize("array", [np.zeros((5, 6, 7), np.uint8), np.full((4, 6, 7, 3), 0.5, np.float32)])
def test_row_facts_equal_the_facts_of_the_loaded_file(
    app_env: tuple[TestClient, Path, str], array: np.ndarray
) -> None:
    from app.db import get_sessionmaker
    from app.settings import LOCAL_OWNER, get_settings

    client, _, _ = app_env
    dataset_id = client.post("/datasets", files={"file": ("a.npy", npy_bytes(array))}).json()["id"]
    with get_sessionmaker()() as session:
        from_row = dataset_facts({"id": dataset_id}, session, get_settings(), LOCAL_OWNER, "dataset")
    loaded = DatasetFacts.of_images(image_set_from_array(array, name="a.npy"))
    assert from_row == loaded


def test_builtin_facts_are_computed_once_and_match_the_images() -> None:
    _SCANNED.pop("digits:test", None)
    first = _builtin_facts("digits:test")
    assert _builtin_facts("digits:test") is first
    assert first == DatasetFacts.of_images(load_builtin("digits:test"))


def test_builtin_facts_read_from_its_pixel_file_equal_the_scanned_ones(tmp_path: Path) -> None:
    """A restarted API reads a built-in's facts from its pixel file: they are the same facts."""
    from models.formats.records import builtin_image_chunks, write_pixel_file

    pixels = tmp_path / "pixels" / "digits.npy"
    write_pixel_file(pixels, *builtin_image_chunks("digits", field="builtin"))
    _SCANNED.pop("digits", None)
    assert _builtin_facts("digits", pixels) == DatasetFacts.of_images(load_builtin("digits"))
