"""POST /jobs `preset` (issue 11): the paper's settings fill in what the body leaves out, explicit fields
win, the stored spec holds the result, and the finished job's summary records model_parameters.

In-process API on a migrated SQLite database; the unit pipeline is called inline (no worker process).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.migrate import upgrade_to_head
from models.config import PRESETS, ModelConfig, configs_from_preset
from models.networks import count_parameters
from tests.service.harness import environment
from workers import runner


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    database = f"sqlite:///{tmp_path / 'memaudit.db'}"
    env = {"MEMAUDIT_DATA_DIR": str(tmp_path), "MEMAUDIT_DATABASE_URL": database,
           "MEMAUDIT_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}", "MEMAUDIT_API_KEYS": "",
           "MEMAUDIT_WORKER_DEVICE": "cpu", "MEMAUDIT_JOB_RATE_LIMIT": "0"}  # fmt: skip
    with environment(env):
        upgrade_to_head(database)
        with TestClient(create_app()) as test_client:
            yield test_client


def _refusal(response: Any) -> tuple[list[Any], str]:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    return detail["loc"], detail["msg"]


def test_a_preset_fills_in_the_papers_settings_and_explicit_fields_win(client: TestClient) -> None:
    body = {
        "dataset": {"builtin": "digits:test"},
        "preset": "mnist",
        "model": {"hidden": [16]},  # explicit: overrides the preset's 512-256
        "training": {"epochs": 1, "batch_size": 32},
        "audit": {"folds": 3, "repeats": 1, "is_samples": 4, "models_per_unit": 3},
    }
    response = client.post("/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    runner.plan_job(job_id)
    runner.run_unit(job_id, 0)
    runner.finish_job(job_id)
    job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == "succeeded", job
    model_cfg, _, _ = configs_from_preset("mnist", {"hidden": (16,)})
    assert model_cfg.pad_to == 32 and model_cfg.likelihood == "bernoulli" and model_cfg.latent == 16
    # digits are 8x8; the mnist preset pads them to 32x32 like the paper's MNIST, so the MLP reads 1024
    assert job["summary"]["model_parameters"] == count_parameters(model_cfg, (1, 8, 8))
    assert job["summary"]["model_parameters"] == count_parameters(model_cfg, (1, 32, 32))


def test_preset_values_land_in_the_stored_spec(client: TestClient) -> None:
    body = {"dataset": {"builtin": "digits"}, "preset": "celeba", "model": {"latent": 8}}
    response = client.post("/jobs", json=body)
    assert response.status_code == 202, response.text
    spec = client.get(f"/jobs/{response.json()['id']}").json()["spec"]
    assert spec["preset"] == "celeba"
    expected = {**PRESETS["celeba"]["model"], "latent": 8}
    assert {key: spec["model"][key] for key in expected} == expected
    assert spec["training"]["epochs"] == 50 and spec["audit"]["is_samples"] == 128
    assert ModelConfig.from_dict(spec["model"]).likelihood == "gaussian_const"
    # without a preset nothing changes: the defaults are the configs' own
    plain = client.post("/jobs", json={"dataset": {"builtin": "digits"}}).json()
    assert client.get(f"/jobs/{plain['id']}").json()["spec"]["model"] == ModelConfig().to_dict()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"preset": "svhn"}, "preset"),
        ({"preset": "mnist", "kind": "mrgan", "heldout": {"builtin": "digits:test"}}, "preset"),
    ],
)
def test_bad_presets_are_422(client: TestClient, body: dict[str, Any], field: str) -> None:
    loc, message = _refusal(client.post("/jobs", json={"dataset": {"builtin": "digits"}, **body}))
    assert field in " ".join(map(str, loc)) + " " + message
