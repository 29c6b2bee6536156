"""The embedded default: SQLite database, kombu's SQLite broker, a Celery worker, no API keys."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from app.lifecycle import JobState
from tests.service.harness import Stack
from tests.service.jobdata import digits_subset, npy_bytes, tiny_job

pytestmark = pytest.mark.service


def test_single_user_mode_needs_no_key(sqlite_stack: Stack) -> None:
    assert sqlite_stack.client.get("/jobs").status_code == 200
    health = sqlite_stack.client.get("/health").json()
    assert health == {**health, "status": "ok", "database": True, "broker": True}


def test_builtin_and_path_datasets_run_to_success(sqlite_stack: Stack) -> None:
    np.save(sqlite_stack.data_root / "sixty.npy", digits_subset(60, offset=200), allow_pickle=False)
    with_heldout = {**tiny_job({"path": "sixty.npy"}), "heldout": {"builtin": "digits:test"}}
    jobs = [
        sqlite_stack.client.post("/jobs", json=with_heldout),
        sqlite_stack.client.post("/jobs", json=tiny_job({"builtin": "digits:test"}, epochs=1)),
    ]
    for response in jobs:
        assert response.status_code == 202, response.text
    finished = [sqlite_stack.wait_for_state(r.headers["Location"]) for r in jobs]
    assert [job["state"] for job in finished] == [JobState.SUCCEEDED, JobState.SUCCEEDED], finished
    assert [job["n_samples"] for job in finished] == [60, 299]
    # With a held-out set the fold models also generate images for the nearest-neighbour comparison:
    # exactly |S| = |H| = 299 of them (SPEC §3), although 299 is not a multiple of the 6 models.
    generated = np.load(sqlite_stack.data_dir / "artifacts" / finished[0]["id"] / "generated.npy")
    assert generated.shape == (299, 1, 8, 8)
    report = sqlite_stack.client.get(f"/jobs/{finished[0]['id']}/report")
    assert report.status_code == 200, report.text
    assert "Spearman" in report.text  # the M-vs-rho panel needs |S| = |H|
    # jobs finished before that rule kept every pooled sample (300 here): their reports still render
    np.save(sqlite_stack.data_dir / "artifacts" / finished[0]["id"] / "generated.npy",
            np.concatenate([generated, generated[:1]]), allow_pickle=False)  # fmt: skip
    assert sqlite_stack.client.get(f"/jobs/{finished[0]['id']}/report").status_code == 200
    top: dict[str, Any] = sqlite_stack.client.get("/scores", params={"top": 5}).json()
    assert top["job_id"] == finished[1]["id"] and len(top["items"]) == 5
    scores = [item["score"] for item in top["items"]]
    assert scores == sorted(scores, reverse=True)
    image = sqlite_stack.client.get(top["items"][0]["image_url"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


def _upload(stack: Stack, name: str, content: bytes) -> Any:
    return stack.client.post("/datasets", files={"file": (name, content)})


def _uploads_dir_entries(stack: Stack) -> list[str]:
    return sorted(os.listdir(stack.data_dir / "uploads"))


@pytest.mark.parametrize(
    ("name", "content", "status"),
    [
        ("garbage.npz", b"PK\x03\x04 this is no zip at all", 422),
        ("garbage.npy", b"\x93NUMPY\x01\x00garbage", 422),
        ("text.txt", b"hello", 422),
        ("empty.npy", b"", 422),
        ("nan.npy", npy_bytes(np.full((4, 8, 8), np.nan, dtype=np.float32)), 422),
        ("flat.npy", npy_bytes(np.zeros((10,), dtype=np.uint8)), 422),
        ("range.npy", npy_bytes(np.full((4, 8, 8), 300, dtype=np.int32)), 422),
        ("truncated.npy", npy_bytes(np.zeros((50, 8, 8), dtype=np.uint8))[:200], 422),
        ("nokey.npz", None, 422),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(
    sqlite_stack: Stack, name: str, content: bytes | None, status: int
) -> None:
    if content is None:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, wrong=np.zeros((4, 8, 8), dtype=np.uint8))
        content = buffer.getvalue()
    before_files = _uploads_dir_entries(sqlite_stack)
    before_rows = len(sqlite_stack.client.get("/datasets").json()["items"])
    response = _upload(sqlite_stack, name, content)
    assert response.status_code == status, response.text
    assert response.json()["detail"][0]["loc"][0] == "file"
    assert _uploads_dir_entries(sqlite_stack) == before_files
    assert len(sqlite_stack.client.get("/datasets").json()["items"]) == before_rows


def test_object_arrays_are_refused_without_unpickling(sqlite_stack: Stack) -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    response = _upload(sqlite_stack, "objects.npy", buffer.getvalue())
    assert response.status_code == 422 and "object" in response.json()["detail"][0]["msg"]


def _bomb() -> bytes:
    """An .npz whose images.npy declares 3000x1000x1000 bytes (3 GB, over the 2 GiB default limit)."""
    import io
    import zipfile

    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (3000, 1000, 1000)})
    member.write(bytes(1 << 20))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("images.npy", member.getvalue())
    return archive.getvalue()


def test_decompression_bomb_is_refused_before_inflating(sqlite_stack: Stack) -> None:
    bomb = _bomb()
    response = _upload(sqlite_stack, "bomb.npz", bomb)
    assert response.status_code in (413, 422), response.text
    assert response.json()["detail"][0]["loc"][0] == "file"


def test_oversized_json_body_is_413(sqlite_stack: Stack) -> None:
    padding = "x" * (2 * 1024 * 1024)
    response = sqlite_stack.client.post("/jobs", content=f'{{"dataset": {{"builtin": "{padding}"}}}}',
                                        headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_openapi_operation_ids_are_clean(sqlite_stack: Stack) -> None:
    schema = sqlite_stack.client.get("/openapi.json").json()
    ids = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert {"get_health", "upload_dataset", "list_datasets", "get_dataset", "create_job", "list_jobs",
            "get_job", "cancel_job", "top_scores", "list_job_scores", "get_sample", "get_sample_image"} <= ids
    assert all(op_id.replace("_", "").isalnum() and op_id.islower() for op_id in ids), ids


def test_heldout_of_another_shape_is_refused(sqlite_stack: Stack) -> None:
    np.save(sqlite_stack.data_root / "small.npy", np.zeros((10, 4, 4), dtype=np.uint8), allow_pickle=False)
    body = {**tiny_job({"builtin": "digits:test"}), "heldout": {"path": "small.npy"}}
    response = sqlite_stack.client.post("/jobs", json=body)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["heldout"]
