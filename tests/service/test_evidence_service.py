"""Neighbour evidence through the service (SQLite, a real worker): computed by the finishing step, read by
GET /jobs/{id}/samples/{sid}/neighbours and the image routes it links to."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.service.harness import Stack
from tests.service.jobdata import digits_subset, npz_bytes, tiny_job

pytestmark = [pytest.mark.service, pytest.mark.timeout(400)]
PAIR_A, PAIR_B, UNIQUE, HELDOUT_TWIN = 10, 40, 55, 3


def _submit(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    response = stack.client.post("/jobs", json=body)
    assert response.status_code == 202, response.text
    job = stack.wait_for_state(response.headers["Location"])
    assert job["state"] == "succeeded", job
    return job


def _png(stack: Stack, url: str) -> np.ndarray:
    response = stack.client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png", url
    return np.asarray(Image.open(io.BytesIO(response.content)))


@pytest.fixture(scope="module")
def vae_job(sqlite_stack: Stack) -> dict[str, Any]:
    """62 digits with keys: 40 is 10 with one pixel one level brighter, 55 is a blank white image (unique);
    held-out image 3 is 55 one level darker everywhere. At most 100 samples: every one is flagged."""
    train = digits_subset(62)
    train[PAIR_B] = train[PAIR_A]
    train[PAIR_B, 4, 4] = min(int(train[PAIR_A, 4, 4]) + 1, 255) if train[PAIR_A, 4, 4] < 255 else 254
    train[UNIQUE] = 255
    heldout = digits_subset(30, offset=100)
    heldout[HELDOUT_TWIN] = 254
    keys = np.array([f"img-{i:03d}" for i in range(62)])
    planted = npz_bytes(train, keys=keys)
    upload = sqlite_stack.client.post("/datasets", files={"file": ("planted.npz", planted)})
    assert upload.status_code == 201, upload.text
    np.save(sqlite_stack.data_root / "evidence_heldout.npy", heldout, allow_pickle=False)
    body = tiny_job({"id": upload.json()["id"]}, batch_size=16)
    return _submit(sqlite_stack, {**body, "heldout": {"path": "evidence_heldout.npy"}})


def test_planted_pair_and_unique_image_get_their_neighbours(
    sqlite_stack: Stack, vae_job: dict[str, Any]
) -> None:
    job_id = vae_job["id"]
    a = sqlite_stack.client.get(f"/jobs/{job_id}/samples/{PAIR_A}/neighbours")
    assert a.status_code == 200, a.text
    a_body = a.json()
    assert a_body["space"] == "pixels" and a_body["metric"] == "euclidean" and a_body["key"] == "img-010"
    assert a_body["train"][0]["index"] == PAIR_B and len(a_body["train"]) == 3
    nearest = a_body["train"][0]
    assert nearest["key"] == "img-040" and nearest["role"] == "train"
    assert nearest["distance"] == pytest.approx(1 / 255, rel=1e-4)  # one pixel, one level of 255
    assert nearest["image_url"] == f"/jobs/{job_id}/samples/{PAIR_B}/image.png"
    distances = [n["distance"] for n in a_body["train"]]
    assert distances == sorted(distances) and distances[1] > 100 * distances[0]
    b = sqlite_stack.client.get(f"/jobs/{job_id}/samples/{PAIR_B}/neighbours").json()
    assert b["train"][0]["index"] == PAIR_A and b["train"][0]["distance"] == pytest.approx(1 / 255, rel=1e-4)

    unique = sqlite_stack.client.get(f"/jobs/{job_id}/samples/{UNIQUE}/neighbours").json()
    assert PAIR_A not in [n["index"] for n in unique["train"]] and unique["train"][0]["distance"] > 2.0
    assert unique["heldout"]["index"] == HELDOUT_TWIN and unique["heldout"]["role"] == "heldout"
    assert unique["heldout"]["distance"] == pytest.approx(8 / 255, rel=1e-4)  # 64 pixels, one level each
    held = _png(sqlite_stack, unique["heldout"]["image_url"])
    assert held.shape == (8, 8) and (held == 254).all()
    assert (_png(sqlite_stack, unique["image_url"]) == 255).all()
    generated = unique["generated"]  # the fold models' pooled samples
    assert generated is not None and generated["image_url"].startswith(f"/jobs/{job_id}/generated/")
    assert _png(sqlite_stack, generated["image_url"]).shape == (8, 8)
    assert unique["copies"] == [] and unique["copy_threshold"] is None


def test_404s_name_the_problem(sqlite_stack: Stack, vae_job: dict[str, Any]) -> None:
    job_id = vae_job["id"]
    outside = sqlite_stack.client.get(f"/jobs/{job_id}/samples/62/neighbours")
    assert outside.status_code == 404 and "samples 0..61" in outside.text
    unknown = sqlite_stack.client.get("/jobs/no-such-job/samples/0/neighbours")
    assert unknown.status_code == 404
    missing = sqlite_stack.client.get(f"/jobs/{job_id}/heldout/30/image.png")
    assert missing.status_code == 404 and "held-out images 0..29" in missing.text
    too_far = sqlite_stack.client.get(f"/jobs/{job_id}/generated/100000/image.png")
    assert too_far.status_code == 404 and "generated samples 0.." in too_far.text
    queued = sqlite_stack.client.post("/jobs", json=tiny_job({"builtin": "digits"}, epochs=3))
    assert queued.status_code == 202
    early = sqlite_stack.client.get(f"{queued.headers['Location']}/samples/0/neighbours")
    assert early.status_code == 404 and "neighbours are computed when it succeeds" in early.text
    sqlite_stack.client.post(f"{queued.headers['Location']}/cancel")


def test_copy_test_shows_the_generated_samples_that_copy_each_image(sqlite_stack: Stack) -> None:
    root = sqlite_stack.data_root
    train, test = digits_subset(300), digits_subset(200, offset=300)
    copies = np.concatenate([np.repeat(train[:30], 3, axis=0), digits_subset(110, offset=500)])  # (200, 8, 8)
    for name, images in (("ev_train.npy", train), ("ev_test.npy", test), ("ev_copies.npy", copies)):
        np.save(root / name, images, allow_pickle=False)
    job = _submit(sqlite_stack, {
        "kind": "copy_test", "dataset": {"path": "ev_train.npy"}, "heldout": {"path": "ev_test.npy"},
        "generated": {"path": "ev_copies.npy"}, "copy_test": {"cells": 2},
    })  # fmt: skip
    seven = sqlite_stack.client.get(f"/jobs/{job['id']}/samples/7/neighbours").json()
    assert [c["index"] for c in seven["copies"]] == [21, 22, 23]  # np.repeat: sample i -> 3i, 3i+1, 3i+2
    assert all(c["distance"] == 0.0 and c["role"] == "generated" for c in seven["copies"])
    assert seven["copies_space"] == "pixels, euclidean" and seven["copy_threshold"] > 0
    assert (_png(sqlite_stack, seven["copies"][0]["image_url"]) == train[7]).all()
    assert seven["heldout"] is not None and seven["generated"] is None
    lowest = sqlite_stack.client.get(f"/jobs/{job['id']}/scores", params={"sort": "score_asc", "limit": 1})
    sample_id = lowest.json()["items"][0]["sample_id"]
    unflagged = sqlite_stack.client.get(f"/jobs/{job['id']}/samples/{sample_id}/neighbours")
    assert unflagged.status_code == 404 and "not among the 100 flagged samples" in unflagged.text
