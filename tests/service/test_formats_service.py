"""Real data in, real names out, through the service on PostgreSQL with a real worker: Fashion-MNIST as an
uploaded ImageFolder zip and as WebDataset shards under the data root (a brace pattern). Both jobs give
the same scores by key (lossless formats, same order), and keys and labels reach every output: GET
/scores, job score pages, sample detail, lookup by key, CSV and Parquet exports, the report (with the
per-class view) and the job summary."""

from __future__ import annotations

import csv
import io
from typing import Any

import pyarrow.parquet as pq
import pytest
from memaudit_client import MemauditClient

from tests.formats_data import fashion_subset, write_webdataset, write_zip
from tests.service.conftest import ALICE
from tests.service.harness import Stack
from tests.service.jobdata import tiny_job

pytestmark = [pytest.mark.service, pytest.mark.timeout(300)]
COUNT = 60


def _wait(stack: Stack, response: Any) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    job = stack.wait_for_state(response.headers["Location"])
    assert job["state"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def jobs(pg_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    pg_stack.client.headers["Authorization"] = f"Bearer {ALICE}"  # this module's stack: alice calls
    subset = fashion_subset(COUNT, offset=2000)
    folder = tmp_path_factory.mktemp("fashion")
    archive = write_zip(folder / "fashion.zip", subset).read_bytes()
    upload = pg_stack.client.post("/datasets", files={"file": ("fashion.zip", archive)})
    assert upload.status_code == 201, upload.text
    uploaded = upload.json()
    assert uploaded["format"] == "image-zip" and uploaded["has_keys"] and uploaded["has_labels"]
    assert upload.json()["shape"] == [COUNT, 28, 28] and upload.json()["dtype"] == "uint8"
    write_webdataset(pg_stack.data_root / "wds", subset, shards=3)
    body = {"model": {"hidden": [16], "latent": 2}, "training": {"epochs": 2, "batch_size": 16},
            "audit": {"folds": 2, "repeats": 1, "is_samples": 4, "seed": 5,
                      "models_per_unit": 2}}  # fmt: skip
    zipped = _wait(pg_stack, pg_stack.client.post("/jobs", json={
        **tiny_job({"id": upload.json()["id"]}), **body}))  # fmt: skip
    shards = _wait(pg_stack, pg_stack.client.post("/jobs", json={
        **tiny_job({"path": "wds/train-{000..002}.tar"}), **body}))  # fmt: skip
    return {"zip": zipped, "webdataset": shards, "subset": {"value": subset}}


def _all_scores(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    page = stack.client.get(f"/jobs/{job_id}/scores", params={"limit": 1000, "sort": "sample_id"}).json()
    assert page["next_cursor"] is None
    items: list[dict[str, Any]] = page["items"]
    return items


def test_the_same_samples_get_the_same_scores_by_key_in_both_formats(
    pg_stack: Stack, jobs: dict[str, dict[str, Any]]
) -> None:
    subset = jobs["subset"]["value"]
    zipped = {item["key"].removesuffix(".png"): item for item in _all_scores(pg_stack, jobs["zip"]["id"])}
    shards = {item["key"]: item for item in _all_scores(pg_stack, jobs["webdataset"]["id"])}
    assert sorted(zipped) == sorted(shards) == sorted(subset.stems)
    for key, item in zipped.items():
        assert item["score"] == shards[key]["score"], key
    assert {item["label"] for item in zipped.values()} == set(subset.names)  # the ImageFolder folder
    assert {item["label"] for item in shards.values()} == {str(v) for v in subset.labels.tolist()}  # .cls


def test_keys_and_labels_in_every_output(pg_stack: Stack, jobs: dict[str, dict[str, Any]]) -> None:
    job = jobs["zip"]
    client = pg_stack.client
    top = client.get("/scores", params={"job_id": job["id"], "top": 5}).json()["items"]
    assert all(item["key"].endswith(".png") and item["label"] for item in top)
    first = top[0]
    detail = client.get(first["url"]).json()
    assert (detail["key"], detail["label"]) == (first["key"], first["label"])
    found = client.get(f"/jobs/{job['id']}/samples", params={"key": first["key"]})
    assert found.status_code == 200 and found.json()["sample_id"] == first["sample_id"]
    with MemauditClient("http://testserver", api_key=ALICE, transport=client._transport) as remote:
        assert remote.sample_by_key(job["id"], first["key"])["score"] == first["score"]
    missing = client.get(f"/jobs/{job['id']}/samples", params={"key": "no/such.png"})
    assert missing.status_code == 404 and "no sample with key" in missing.text
    rows = list(csv.DictReader(io.StringIO(client.get(f"/jobs/{job['id']}/scores.csv").text)))
    assert list(rows[0])[:3] == ["sample_id", "key", "label"]
    by_id = {int(row["sample_id"]): row for row in rows}
    assert by_id[first["sample_id"]]["key"] == first["key"]
    table = pq.read_table(io.BytesIO(client.get(f"/jobs/{job['id']}/scores.parquet").content))
    assert table.column("key").to_pylist()[first["sample_id"]] == first["key"]
    assert table.column("label").null_count == 0
    html = client.get(f"/jobs/{job['id']}/report").text
    assert "Memorization per class" in html and first["key"] in html
    per_class = job["summary"]["per_class"]
    assert sum(row["count"] for row in per_class) == COUNT
    assert {row["label"] for row in per_class} == set(jobs["subset"]["value"].names)
    assert sum(row["n_above_threshold"] for row in per_class) == job["summary"]["n_highly_memorized"]
    image = client.get(first["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"


def test_mixed_sizes_under_the_data_root_are_a_422_naming_the_key_unless_resized(pg_stack: Stack) -> None:
    import numpy as np
    from PIL import Image

    folder = pg_stack.data_root / "mixed" / "cat"
    folder.mkdir(parents=True)
    for name, size in (("a.png", (8, 8)), ("b.png", (8, 8)), ("c.png", (10, 6))):
        Image.fromarray(np.full(size, 100, dtype=np.uint8)).save(folder / name)
    for name in ("d.png", "e.png", "f.png"):
        Image.fromarray(np.full((8, 8), 50, dtype=np.uint8)).save(folder / name)
    refused = pg_stack.client.post("/jobs", json=tiny_job({"path": "mixed"}, batch_size=4))
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"][0]
    assert detail["loc"] == ["dataset", "path"] and "cat/c.png: image sized 6x10 L" in detail["msg"]
    accepted = pg_stack.client.post("/jobs", json=tiny_job({"path": "mixed", "resize": [8, 8]}, batch_size=4))
    assert accepted.status_code == 202, accepted.text
    job = pg_stack.wait_for_state(accepted.headers["Location"])
    assert job["state"] == "succeeded", job
    assert job["summary"]["conversion"]["resize"] == [8, 8]
    assert job["spec"]["dataset"]["resize"] == [8, 8]


def test_a_conversion_of_a_builtin_is_checked_and_recorded_before_the_job_exists(pg_stack: Stack) -> None:
    body = tiny_job({"builtin": "digits:test", "resize": [4, 4], "mode": "RGB"})
    created = pg_stack.client.post("/jobs", json=body)
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["image_shape"] == [3, 4, 4] and job["n_samples"] == 299
    pg_stack.client.post(f"{job['url']}/cancel")
    huge = pg_stack.client.post("/jobs", json=tiny_job({"builtin": "digits", "resize": [4096, 4096]}))
    assert huge.status_code == 413, huge.text
    assert huge.json()["detail"][0]["loc"] == ["dataset", "resize"]
    assert "MEMAUDIT_MAX_UNCOMPRESSED_BYTES" in huge.json()["detail"][0]["msg"]
