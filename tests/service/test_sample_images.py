"""GET /jobs/{id}/samples/{sid}/image.png reads one record, never the whole dataset (issue 9).

The API runs in-process on the embedded SQLite default (nothing consumes the broker: the jobs stay queued,
which is all the image route needs). For every dataset kind (a built-in, .npy and compressed .npz uploads,
a data-root .npy, an upload converted into a canonical store) the test checks the pixels, that no ImageSet
(what every whole-dataset loader returns) is built while images are served, and that the traced allocations
of a request stay far below the dataset's own size.
"""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models.builtin_datasets import load_fashion_mnist
from models.imageset import ImageSet
from tests.formats_data import fashion_subset, write_zip
from tests.service.harness import environment
from tests.service.jobdata import npy_bytes, npz_bytes, tiny_job

COUNT = 20_000  # images per uploaded set: 15.7 MB as uint8, 62.7 MB as float32
MIB = 1 << 20


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    from app.api.main import create_app
    from app.migrate import upgrade_to_head

    database, root = f"sqlite:///{tmp_path / 'memaudit.db'}", tmp_path / "root"
    root.mkdir()
    env = {
        "MEMAUDIT_DATA_DIR": str(tmp_path / "data"),
        "MEMAUDIT_DATA_ROOT": str(root),
        "MEMAUDIT_DATABASE_URL": database,
        "MEMAUDIT_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "MEMAUDIT_API_KEYS": "",
    }
    with environment(env):
        upgrade_to_head(database)
        with TestClient(create_app()) as client:
            yield client, root


def _pixels(count: int) -> np.ndarray:
    """(count, 28, 28) uint8 Fashion-MNIST training images (repeated past 60,000)."""
    train = load_fashion_mnist("train").as_uint8()[:, 0]
    return np.resize(train, (count, 28, 28))


def _job(client: TestClient, dataset: dict[str, str]) -> str:
    response = client.post("/jobs", json=tiny_job(dataset))
    assert response.status_code in (200, 201, 202), response.text
    return str(response.json()["id"])


def _upload(client: TestClient, name: str, content: bytes) -> str:
    response = client.post("/datasets", files={"file": (name, content)})
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


def _image(client: TestClient, job_id: str, sample_id: int) -> tuple[np.ndarray, int]:
    """(decoded pixels, peak traced bytes of the request)."""
    tracemalloc.start()
    try:
        response = client.get(f"/jobs/{job_id}/samples/{sample_id}/image.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content))), peak


@pytest.fixture()
def no_whole_sets(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[str]]:
    """Record every ImageSet built from now on (each whole-dataset loader returns one)."""
    built: list[str] = []
    original = ImageSet.__init__

    def counting(self: ImageSet, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        built.append(self.name)

    monkeypatch.setattr(ImageSet, "__init__", counting)
    return lambda: built


def test_every_dataset_kind_serves_one_record_without_loading_the_set(
    api: tuple[TestClient, Path], no_whole_sets: Callable[[], list[str]]
) -> None:
    client, root = api
    pixels = _pixels(COUNT)  # (COUNT, 28, 28) uint8
    floats = pixels.astype(np.float32) / np.float32(255.0)  # exactly k/255
    np.save(root / "floats.npy", floats, allow_pickle=False)
    subset = fashion_subset(300)
    zip_path = root / "subset.zip"
    write_zip(zip_path, subset)
    jobs = {
        "builtin": (_job(client, {"builtin": "fashion-mnist"}), _pixels(60_000)),
        "npy upload": (_job(client, {"id": _upload(client, "u.npy", npy_bytes(pixels))}), pixels),
        "npz upload (float, compressed)": (
            _job(client, {"id": _upload(client, "f.npz", npz_bytes(floats))}), pixels),
        "data-root npy (float)": (_job(client, {"path": "floats.npy"}), pixels),
        "zip upload (store)": (_job(client, {"id": _upload(client, "s.zip", zip_path.read_bytes())}),
                               subset.images),
    }  # fmt: skip
    before = len(no_whole_sets())  # POST /jobs reads a built-in's facts once; from here on, images only
    rng = np.random.default_rng(0)
    for kind, (job_id, expected) in jobs.items():
        dataset_bytes = expected.nbytes
        peaks = []
        for sample_id in [0, len(expected) - 1, *rng.integers(0, len(expected), 5).tolist()]:
            shown, peak = _image(client, job_id, int(sample_id))
            np.testing.assert_array_equal(shown, expected[sample_id], err_msg=f"{kind} sample {sample_id}")
            peaks.append(peak)
        # The first request may write the pixel file, one chunk at a time; every later one maps one row.
        assert peaks[0] < 16 * MIB, f"{kind}: the first request traced {peaks[0] / MIB:.1f} MiB"
        assert max(peaks[1:]) < 2 * MIB, f"{kind}: a request traced {max(peaks[1:]) / MIB:.1f} MiB"
        assert max(peaks[1:]) < dataset_bytes / 8 or dataset_bytes < 16 * MIB
    assert no_whole_sets()[before:] == [], "serving images built a whole ImageSet"


def test_a_replaced_data_root_file_is_refused_not_mixed_up(api: tuple[TestClient, Path]) -> None:
    client, root = api
    path = root / "replaced.npy"
    np.save(path, _pixels(100), allow_pickle=False)
    job_id = _job(client, {"path": "replaced.npy"})
    assert client.get(f"/jobs/{job_id}/samples/3/image.png").status_code == 200
    np.save(path, _pixels(200)[100:], allow_pickle=False)  # same shape, other pixels
    refused = client.get(f"/jobs/{job_id}/samples/3/image.png")
    assert refused.status_code == 404 and "no longer available" in refused.text
    assert client.get(f"/jobs/{job_id}/samples/100/image.png").status_code == 404  # out of range


def test_a_converted_folder_is_served_from_the_jobs_snapshot_after_the_folder_changes(
    api: tuple[TestClient, Path],
) -> None:
    client, root = api
    pixels = _pixels(40)
    for index, image in enumerate(pixels):
        folder = root / "folder" / f"class{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    job_id = _job(client, {"path": "folder"})
    first = client.get(f"/jobs/{job_id}/samples/0/image.png")
    assert first.status_code == 200
    # Replace every image and add one: the folder is other content now; the job's images are still its own.
    for path in sorted((root / "folder").rglob("*.png")):
        Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    Image.fromarray(pixels[0]).save(root / "folder" / "class0" / "999.png")
    again = client.get(f"/jobs/{job_id}/samples/0/image.png")
    assert again.status_code == 200 and again.content == first.content


def _recorded_identity(job_id: str) -> str:
    """The training-set content identity the job recorded."""
    from app.db import Job, get_sessionmaker

    with get_sessionmaker()() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return str(job.spec["facts"]["train"]["identity"])


def _recorded_pixel_file(job_id: str) -> Path:
    from app.services.pixel_files import pixel_file
    from app.settings import get_settings

    return pixel_file(get_settings(), _recorded_identity(job_id))


def _pad32_test_split() -> np.ndarray:
    return np.pad(load_fashion_mnist("test").as_uint8()[:, 0], ((0, 0), (2, 2), (2, 2)))


def test_pixel_files_exist_before_a_job_can_be_named_so_no_request_writes_one(
    api: tuple[TestClient, Path],
) -> None:
    """Issue 9's cold first request: the pixel file of a built-in or a compressed .npz is written by
    POST /datasets and POST /jobs (no worker runs here), so the first image request maps it too."""
    client, root = api
    pixels = _pixels(5_000)
    floats = pixels.astype(np.float32) / np.float32(255.0)
    (root / "set.npz").write_bytes(npz_bytes(pixels))
    upload = _upload(client, "f.npz", npz_bytes(floats))
    stored = list((root.parent / "data" / "stores" / "pixels").glob("*.npy"))
    assert len(stored) == 1, "POST /datasets wrote no pixel file for the .npz upload"
    jobs = {
        "built-in": (_job(client, {"builtin": "fashion-mnist:test:pad32"}), _pad32_test_split()),
        "npz upload (float, compressed)": (_job(client, {"id": upload}), pixels),
        "data-root npz": (_job(client, {"path": "set.npz"}), pixels),
    }
    for kind, (job_id, expected) in jobs.items():
        target = _recorded_pixel_file(job_id)
        assert target.is_file(), f"{kind}: no pixel file once POST /jobs answered"
        written = target.stat()
        shown, peak = _image(client, job_id, len(expected) - 1)
        np.testing.assert_array_equal(shown, expected[-1], err_msg=kind)
        assert (target.stat().st_ino, target.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
        assert peak < 2 * MIB, f"{kind}: the first request traced {peak / MIB:.1f} MiB"


def test_a_built_in_is_decompressed_only_for_a_missing_pixel_file_and_only_for_an_accepted_job(
    api: tuple[TestClient, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused POST /jobs writes no pixel file; an accepted one writes a missing one (one pass over the
    built-in once its facts are known); once the file exists nothing decompresses the set again, not even
    a new process whose facts cache is empty (the facts are read back from the pixel file)."""
    import app.services.dataset_facts as dataset_facts
    import app.services.pixel_files as pixel_files
    from models.formats.records import builtin_image_chunks

    passes: list[str] = []

    def counted(spec: str, *, field: str) -> tuple[tuple[int, ...], Iterator[np.ndarray]]:
        passes.append(spec)
        return builtin_image_chunks(spec, field=field)

    monkeypatch.setattr(dataset_facts, "builtin_image_chunks", counted)
    monkeypatch.setattr(pixel_files, "builtin_image_chunks", counted)
    (client, root), name = api, "fashion-mnist:test:pad32"
    dataset_facts._SCANNED.pop(name, None)
    body = {**tiny_job({"builtin": name}), "webhook_url": "http://127.0.0.1:9/hook"}  # refused last
    refused = client.post("/jobs", json=body)
    assert refused.status_code == 422 and "webhook_url" in refused.text, refused.text
    folder = root.parent / "data" / "stores" / "pixels"
    assert not folder.exists() or list(folder.iterdir()) == [], "a refused job left a pixel file"
    assert passes == [name]  # its facts were scanned, nothing else
    target = _recorded_pixel_file(_job(client, {"builtin": name}))
    assert passes == [name, name] and target.is_file()
    target.unlink()
    passes.clear()
    _job(client, {"builtin": name})  # facts cached, no pixel file (as in another data dir)
    assert passes == [name] and target.is_file()
    passes.clear()
    _job(client, {"builtin": name})  # both there
    dataset_facts._SCANNED.pop(name, None)
    _job(client, {"builtin": name})  # a new process
    assert passes == [], "a job whose built-in has a pixel file decompressed the set"


def test_a_pixel_file_that_cannot_be_written_fails_neither_the_upload_nor_the_job(
    api: tuple[TestClient, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while POST /datasets or POST /jobs writes a pixel file: both answer as usual, nothing
    is left half-written, and the first image request writes the file instead."""
    import errno

    import app.services.pixel_files as pixel_files
    from models.formats.records import write_pixel_file

    def disk_full_after_one_chunk(path: Path, shape: tuple[int, ...], chunks: Iterator[np.ndarray]) -> None:
        def failing() -> Iterator[np.ndarray]:
            yield next(iter(chunks))
            raise OSError(errno.ENOSPC, "No space left on device")

        write_pixel_file(path, shape, failing())

    monkeypatch.setattr(pixel_files, "write_pixel_file", disk_full_after_one_chunk)
    client, root = api
    pixels = _pixels(5_000)
    jobs = {
        "built-in": (_job(client, {"builtin": "fashion-mnist:test:pad32"}), _pad32_test_split()),
        "npz upload": (_job(client, {"id": _upload(client, "u.npz", npz_bytes(pixels))}), pixels),
    }
    folder = root.parent / "data" / "stores" / "pixels"
    assert not folder.exists() or list(folder.iterdir()) == [], "a partial pixel file was left behind"
    for job_id, _ in jobs.values():
        job = client.get(f"/jobs/{job_id}")
        assert job.status_code == 200 and job.json()["state"] == "queued"
    monkeypatch.undo()
    for kind, (job_id, expected) in jobs.items():
        shown, _ = _image(client, job_id, 7)
        np.testing.assert_array_equal(shown, expected[7], err_msg=kind)
        assert _recorded_pixel_file(job_id).is_file(), kind


def test_the_finishing_steps_copy_is_the_image_routes_pixel_file(api: tuple[TestClient, Path]) -> None:
    """One display copy per content: what the finishing step keeps from the loaded set (keep_pixel_file)
    is byte for byte the pixel file POST /jobs wrote chunk by chunk (float RGB: rounded the same way), so
    it is the same file; a copy an earlier version kept under stores/records/ is still served."""
    import os

    from app.db import get_sessionmaker
    from app.services.datasets import load_dataset_spec
    from app.services.pixel_files import keep_pixel_file, legacy_copy, pixel_file
    from app.settings import LOCAL_OWNER, get_settings

    client, root = api
    floats = np.random.default_rng(3).random((300, 28, 28, 3), dtype=np.float32)
    (root / "rgb.npz").write_bytes(npz_bytes(floats))
    job_id = _job(client, {"path": "rgb.npz"})
    target = _recorded_pixel_file(job_id)
    written = target.stat()
    settings = get_settings()
    with get_sessionmaker()() as session:
        images = load_dataset_spec({"path": "rgb.npz"}, session, settings, LOCAL_OWNER, "dataset")
    assert keep_pixel_file(settings, "path:elsewhere", images).read_bytes() == target.read_bytes()
    identity = _recorded_identity(job_id)
    assert keep_pixel_file(settings, identity, images) == target == pixel_file(settings, identity)
    assert target.stat().st_mtime_ns == written.st_mtime_ns, "the finishing step rewrote the pixel file"
    shown, _ = _image(client, job_id, 5)
    legacy = legacy_copy(settings, identity)
    legacy.parent.mkdir(parents=True)
    os.replace(target, legacy)  # a deployment whose finishing step kept it under stores/records/
    (root / "rgb.npz").write_bytes(npz_bytes(floats[::-1].copy()))  # the source changes afterwards
    again, _ = _image(client, job_id, 5)
    np.testing.assert_array_equal(again, shown)
