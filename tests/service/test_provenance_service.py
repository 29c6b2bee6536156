"""Provenance of GAN jobs through the real service (embedded SQLite, Celery worker): every dataset and
model file a job read is fingerprinted, as it was when the job's units were planned."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from app.lifecycle import JobState
from app.provenance import content_sha256
from models.data import load_dataset
from tests.service.harness import Stack
from tests.service.jobdata import digits_subset

pytestmark = pytest.mark.service


class _Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 64)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(z)).view(z.shape[0], 1, 8, 8)


def test_copy_test_job_records_its_datasets_and_generator_file(sqlite_stack: Stack) -> None:
    root = sqlite_stack.data_root
    np.save(root / "prov_train.npy", digits_subset(300), allow_pickle=False)
    np.save(root / "prov_test.npy", digits_subset(200, offset=300), allow_pickle=False)
    torch.jit.script(_Generator()).save(str(root / "prov_generator.pt"))
    response = sqlite_stack.client.post("/jobs", json={
        "kind": "copy_test", "dataset": {"path": "prov_train.npy"}, "heldout": {"path": "prov_test.npy"},
        "copy_test": {"generator_path": "prov_generator.pt", "latent_dim": 4, "n_generated": 200, "cells": 2},
    })  # fmt: skip
    assert response.status_code == 202, response.text
    job = sqlite_stack.wait_for_state(response.headers["Location"])
    assert job["state"] == JobState.SUCCEEDED, job
    block = job["summary"]["provenance"]
    assert set(block["inputs"]) == {"dataset", "heldout", "copy_test.generator"}
    for name, file in (("dataset", "prov_train.npy"), ("heldout", "prov_test.npy")):
        record = block["inputs"][name]
        assert record["source"] == f"path:{file}"
        assert record["file_sha256"] == hashlib.sha256((root / file).read_bytes()).hexdigest()
        assert record["content_sha256"] == content_sha256(load_dataset(root / file).pixels)
    generator = block["inputs"]["copy_test.generator"]
    assert generator["file_sha256"] == hashlib.sha256((root / "prov_generator.pt").read_bytes()).hexdigest()
    assert block["config"]["copy_test"]["cells"] == 2 and "copy_test.seed" in block["seeds"]
    assert len(block["units"]) == 1 and block["units"][0]["device"] == "cpu"
    served = sqlite_stack.client.get(f"/jobs/{job['id']}/provenance")
    assert served.status_code == 200 and served.json() == block
