"""GAN job kinds through the real service (embedded SQLite, Celery worker): mrgan sweeps and copy tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from app.lifecycle import JobState
from tests.service.harness import Stack
from tests.service.jobdata import digits_subset

pytestmark = pytest.mark.service


def _submit(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    response = stack.client.post("/jobs", json=body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = stack.wait_for_state(response.headers["Location"])
    assert job["state"] == JobState.SUCCEEDED, job
    return job


def test_copy_test_job_ranks_the_copied_training_images_first(sqlite_stack: Stack) -> None:
    root = sqlite_stack.data_root
    train, test = digits_subset(300), digits_subset(200, offset=300)
    copies = np.concatenate([np.repeat(train[:30], 3, axis=0), digits_subset(110, offset=500)])  # (200, 8, 8)
    for name, images in (("gan_train.npy", train), ("gan_test.npy", test), ("gan_copies.npy", copies)):
        np.save(root / name, images, allow_pickle=False)
    job = _submit(sqlite_stack, {
        "kind": "copy_test", "dataset": {"path": "gan_train.npy"}, "heldout": {"path": "gan_test.npy"},
        "generated": {"path": "gan_copies.npy"}, "copy_test": {"cells": 2},
    })  # fmt: skip
    assert job["progress"]["units_total"] == 1 and job["summary"]["kind"] == "copy_test"
    assert job["summary"]["c_t"] < 0
    top = sqlite_stack.client.get("/scores", params={"job_id": job["id"], "top": 30}).json()
    assert {item["sample_id"] for item in top["items"]} == set(range(30))
    # Exact copies have d_S = 0, so rho = inf, stored as null like every non-finite value. The SPEC §5
    # radius count (at the copy threshold) ranks; the nearest-credit count is the second field.
    assert all(item["within_tau_count"] >= 3 and item["nearest_copy_count"] == 3 and item["rho"] is None
               for item in top["items"])  # fmt: skip
    other = sqlite_stack.client.get(f"/jobs/{job['id']}/samples/250").json()
    assert other["nearest_copy_count"] == 0 and other["rho"] > 0
    assert other["within_tau_count"] == sum(row["within_tau_count"] for row in other["tau_counts"])
    copied = sqlite_stack.client.get(f"/jobs/{job['id']}/samples/0").json()
    assert copied["tau_counts"] == [{"tau_index": 0, "tau": job["summary"]["copy_threshold"],
                                     "within_tau_count": copied["within_tau_count"],
                                     "nearest_copy_count": None}]  # fmt: skip
    assert job["summary"]["score_rule"].startswith("within_tau_count")
    scores = [item["score"] for item in top["items"]]
    assert scores == sorted(scores, reverse=True)


class _TinyGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 64)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(z)).view(z.shape[0], 1, 8, 8)


def test_copy_test_job_samples_a_torchscript_generator(sqlite_stack: Stack) -> None:
    torch.jit.script(_TinyGenerator()).save(str(sqlite_stack.data_root / "tiny_generator.pt"))
    job = _submit(sqlite_stack, {
        "kind": "copy_test", "dataset": {"builtin": "digits:train"}, "heldout": {"builtin": "digits:test"},
        "copy_test": {"generator_path": "tiny_generator.pt", "latent_dim": 4, "n_generated": 250, "cells": 2},
    })  # fmt: skip
    assert job["summary"]["n_generated"] == 250 and job["summary"]["c_t"] > 0  # noise-like samples underfit
    missing = sqlite_stack.client.post("/jobs", json={
        "kind": "copy_test", "dataset": {"builtin": "digits:train"}, "heldout": {"builtin": "digits:test"},
        "copy_test": {"generator_path": "tiny_generator.pt"},
    })  # fmt: skip
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["copy_test", "latent_dim"]


def test_copy_test_jobs_run_an_onnx_generator_and_an_onnx_embedding(sqlite_stack: Stack) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from tests.onnx_models import ConvFeatures, LinearGenerator, export_onnx, save_torchscript

    root = sqlite_stack.data_root
    export_onnx(LinearGenerator(), torch.zeros(2, 4), root / "generator.onnx")
    export_onnx(ConvFeatures(), torch.zeros(2, 1, 8, 8), root / "features.onnx")
    digits = {"dataset": {"builtin": "digits:train"}, "heldout": {"builtin": "digits:test"}}
    sampled = _submit(sqlite_stack, {"kind": "copy_test", **digits, "copy_test": {
        "generator_path": "generator.onnx", "latent_dim": 4, "n_generated": 250, "cells": 2}})  # fmt: skip
    assert sampled["summary"]["n_generated"] == 250 and sampled["summary"]["c_t"] > 0  # noise underfits
    save_torchscript(ConvFeatures(), root / "features.pt")
    copies = {"kind": "copy_test", **digits, "generated": {"builtin": "digits:train"}}
    summaries = [
        _submit(
            sqlite_stack, {**copies, "copy_test": {"embedding": {"kind": kind, "path": path}, "cells": 2}}
        )
        for kind, path in (("onnx", "features.onnx"), ("torchscript", "features.pt"))
    ]
    summaries = [job["summary"] for job in summaries]
    # The training set offered as its own samples: all copies, in ONNX as in TorchScript.
    assert summaries[0]["c_t"] < 0 and summaries[0]["generated_copy_share"] > 0.9
    assert summaries[0]["c_t"] == pytest.approx(summaries[1]["c_t"], abs=0.02)
    assert summaries[0]["n_generated"] == summaries[1]["n_generated"] == summaries[0]["n_train"]


def test_mrgan_job_runs_one_unit_per_tau(sqlite_stack: Stack) -> None:
    job = _submit(sqlite_stack, {
        "kind": "mrgan", "dataset": {"builtin": "digits:train"}, "heldout": {"builtin": "digits:test"},
        "mrgan": {"taus": [0.0], "tau_quantiles": [0.5], "steps": 20, "width": 32, "n_generated": 100,
                  "cells": 2},
    })  # fmt: skip
    assert job["progress"]["units_total"] == 2 and job["n_samples"] == 1498
    units = job["summary"]["units"]
    assert [unit["tau"] > 0 for unit in units] == [False, True]
    assert units[0]["rejection_rate"] == 0.0 and units[1]["fakes_scored"] > 0
    assert all(np.isfinite(unit["frechet_distance"]) for unit in units)
    top = sqlite_stack.client.get("/scores", params={"job_id": job["id"], "top": 5}).json()
    assert len(top["items"]) == 5
    assert all(item["within_tau_count"] is not None and item["nearest_copy_count"] is not None
               for item in top["items"])  # fmt: skip
    # the sweep's counts per tau: the scores are those of the smallest tau (unit 0)
    first = top["items"][0]
    detail = sqlite_stack.client.get(first["url"]).json()
    by_tau = {row["tau_index"]: row for row in detail["tau_counts"]}
    assert set(by_tau) <= {0, 1} and by_tau.get(0, {}).get("within_tau_count", 0) == first["within_tau_count"]
    assert [row["tau"] for row in detail["tau_counts"]] == [units[i]["tau"] for i in sorted(by_tau)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "mrgan", "dataset": {"builtin": "digits:train"}}, "heldout"),
        ({"kind": "copy_test", "dataset": {"builtin": "digits:train"}, "heldout": {"builtin": "digits:test"}},
         "generated"),
        ({"kind": "mrgan", "dataset": {"builtin": "digits:train"}, "heldout": {"builtin": "digits:test"},
          "mrgan": {"taus": [], "tau_quantiles": []}}, "mrgan"),
        ({"kind": "mrgan", "dataset": {"builtin": "digits:train"}, "heldout": {"builtin": "digits:test"},
          "mrgan": {"arch": "dcgan"}}, "mrgan"),
        ({"dataset": {"builtin": "digits:train"}, "mrgan": {}}, "mrgan"),
    ],
)
def test_bad_gan_specs_get_422_naming_the_field(
    sqlite_stack: Stack, body: dict[str, Any], field: str
) -> None:
    response = sqlite_stack.client.post("/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == field
