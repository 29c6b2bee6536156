"""MR-GAN tau units share one feature space per job: the embedder is trained once (by the plan step),
stored as the job's artifact and restored by every unit, with results identical to a unit that builds
its own. The worker's steps are called in-process on SQLite (nothing consumes the broker)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import models.embeddings
from app.lifecycle import JobState
from tests.service.harness import environment
from tests.service.jobdata import digits_subset

BODY: dict[str, Any] = {
    "kind": "mrgan", "dataset": {"path": "train.npy"}, "heldout": {"path": "test.npy"},
    "mrgan": {"taus": [0.0], "tau_quantiles": [0.5], "steps": 10, "width": 16, "n_generated": 60, "cells": 2,
              "embedding": {"kind": "autoencoder", "latent_dim": 8, "epochs": 2}},
}  # fmt: skip


@pytest.fixture()
def inline(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    from app.api.main import create_app
    from app.migrate import upgrade_to_head

    database, root = f"sqlite:///{tmp_path / 'memaudit.db'}", tmp_path / "root"
    root.mkdir()
    np.save(root / "train.npy", digits_subset(200), allow_pickle=False)
    np.save(root / "test.npy", digits_subset(80, offset=200), allow_pickle=False)
    env = {
        "MEMAUDIT_DATA_DIR": str(tmp_path / "data"),
        "MEMAUDIT_DATA_ROOT": str(root),
        "MEMAUDIT_DATABASE_URL": database,
        "MEMAUDIT_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "MEMAUDIT_API_KEYS": "",
        "MEMAUDIT_WORKER_DEVICE": "cpu",
    }
    with environment(env):
        upgrade_to_head(database)
        with TestClient(create_app()) as client:
            yield client, tmp_path / "data" / "artifacts"


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files if key != "summary_json"}


def test_tau_units_share_one_embedding_trained_once(
    inline: tuple[TestClient, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers import gan_runner, runner

    client, artifacts = inline
    trained: list[int] = []
    train_autoencoder = models.embeddings.train_autoencoder

    def counting(images: torch.Tensor, cfg: models.embeddings.EmbeddingConfig) -> torch.nn.Module:
        trained.append(int(images.shape[0]))
        return train_autoencoder(images, cfg)

    monkeypatch.setattr(models.embeddings, "train_autoencoder", counting)
    response = client.post("/jobs", json=BODY)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    runner.plan_job(job_id)
    assert trained == [200] and (artifacts / job_id / gan_runner.EMBEDDING_FILE).is_file()
    for index in (0, 1):
        runner.run_unit(job_id, index)
    runner.finish_job(job_id)
    job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == JobState.SUCCEEDED, job
    assert trained == [200], "a tau unit retrained the embedding instead of restoring the job's"

    # A unit that builds its own feature space computes exactly what the shared one gave.
    from app.db import session_scope

    with session_scope() as session:
        from app.db import Job

        stored = session.get(Job, job_id)
        assert stored is not None
        inputs = runner._gan_inputs(session, stored)
    alone = artifacts / "alone"
    result = gan_runner.compute_unit("mrgan", stored.spec, 1, inputs, torch.device("cpu"), lambda _: None,
                                     lambda: False, alone)  # fmt: skip
    assert trained == [200, 200] and (alone / gan_runner.EMBEDDING_FILE).is_file()
    shared = _arrays(artifacts / job_id / "unit-0001.npz")
    assert shared.keys() == result.arrays.keys()
    for key, values in result.arrays.items():
        np.testing.assert_array_equal(shared[key], values, err_msg=key)
