"""A corpus of hostile requests: each gets a 4xx whose message names the problem, and nothing is
half-written (row counts of datasets/jobs and the uploads directory are unchanged afterwards).

Runs against the service harness on PostgreSQL (API in-process, real worker alive but never fed).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.service.conftest import ALICE, bearer
from tests.service.harness import Stack, environment
from tests.service.jobdata import digits_subset, npy_bytes, npz_bytes, tiny_job

pytestmark = [pytest.mark.service, pytest.mark.timeout(180)]
AS_ALICE = bearer(ALICE)
SMALL_LIMIT = 200_000  # uploads, JSON bodies and uncompressed arrays in the limited app
MAX_MEMBERS = 50  # archive members in the limited app


def _npy_header_only(shape: tuple[int, ...], dtype: str = "<u1") -> bytes:
    """A valid .npy header declaring ``shape`` followed by almost no data (a lie about its size)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + b"\x00" * 16


def _npz_with(members: dict[str, bytes], compress: bool = True) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _bomb() -> bytes:
    """An .npz whose 'images' inflate to 4 MB (50x the limited app's limit) from a few kB."""
    return _npz_with({"images.npy": npy_bytes(np.zeros((62_500, 8, 8), dtype=np.uint8))})


def _object_array() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([np.zeros((8, 8)), "payload"], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def _float_images(value: float) -> bytes:
    images = np.full((10, 8, 8), 0.5, dtype=np.float32)
    images[3, 2, 2] = value
    return npy_bytes(images)


VALID = npz_bytes(digits_subset(20, offset=100))

# (name, file bytes, expected status, words the message must contain)
UPLOAD_CORPUS: list[tuple[str, bytes, int, tuple[str, ...]]] = [
    ("garbage", b"this is not an array at all" * 10, 422, ("neither an .npy nor an .npz",)),
    ("empty", b"", 422, ("empty",)),
    ("truncated-npy", npy_bytes(digits_subset(20))[:300], 422, ("truncated-npy.npy", "file is smaller")),
    ("truncated-npz", VALID[: len(VALID) // 2], 422, ("not a readable .npz",)),
    (
        "npz-without-images",
        _npz_with({"pixels.npy": npy_bytes(digits_subset(5))}),
        422,
        ("no array named 'images'",),
    ),
    ("npz-corrupt-member", _npz_with({"images.npy": b"\x93NUMPY garbage"}), 422, ("images.npy",)),
    ("object-array", _object_array(), 422, ("not allowed", "object")),
    ("absurd-shape", _npy_header_only((10**9, 10**6, 8)), 413, ("over the limit",)),
    ("header-lies-about-size", _npy_header_only((1000, 8, 8)), 422, ("file is smaller",)),
    ("nan-pixels", _float_images(float("nan")), 422, ("NaN or infinite",)),
    ("inf-pixels", _float_images(float("inf")), 422, ("NaN or infinite",)),
    ("complex-dtype", npy_bytes(np.zeros((10, 8, 8), dtype=np.complex64)), 422, ("complex64",)),
    ("string-dtype", npy_bytes(np.array([["ab"] * 8] * 8)), 422, ("<U2",)),
    ("one-dimensional", npy_bytes(np.zeros(64, dtype=np.uint8)), 422, ("shape",)),
    ("pixels-out-of-range", npy_bytes(np.full((10, 8, 8), 300, dtype=np.int32)), 422, ("0..255",)),
]


def _counts(stack: Stack) -> dict[str, Any]:
    from app.db import Dataset, Job, session_scope

    with session_scope() as session:
        datasets = session.scalar(select(func.count()).select_from(Dataset))
        jobs = session.scalar(select(func.count()).select_from(Job))
    stores = stack.data_dir / "stores"
    return {"datasets": datasets, "jobs": jobs, "uploads": sorted(os.listdir(stack.data_dir / "uploads")),
            "stores": sorted(os.listdir(stores)) if stores.is_dir() else []}


@pytest.fixture
def unchanged(keyed_stack: Stack) -> Iterator[None]:
    """Asserts that the test left the database and the uploads directory exactly as it found them."""
    before = _counts(keyed_stack)
    yield
    assert _counts(keyed_stack) == before, "a refused request left something behind"


@pytest.fixture(scope="module")
def limited_client(keyed_stack: Stack) -> Iterator[TestClient]:
    """The same service, built with small limits (the body-limit middleware reads them at start)."""
    from app.api.main import create_app

    limits = {
        "MEMAUDIT_MAX_UPLOAD_BYTES": str(SMALL_LIMIT),
        "MEMAUDIT_MAX_JSON_BYTES": str(SMALL_LIMIT),
        "MEMAUDIT_MAX_UNCOMPRESSED_BYTES": str(SMALL_LIMIT),
        "MEMAUDIT_MAX_ARCHIVE_MEMBERS": str(MAX_MEMBERS),
    }
    with environment(limits), TestClient(create_app()) as client:
        yield client


def _assert_refused(response: Any, status: int, words: tuple[str, ...]) -> None:
    assert response.status_code == status, response.text
    message = " ".join(item["msg"] for item in response.json()["detail"])
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize(
    ("name", "payload", "status", "words"), UPLOAD_CORPUS, ids=[c[0] for c in UPLOAD_CORPUS]
)
def test_hostile_uploads_are_refused_and_leave_nothing(
    limited_client: TestClient,
    unchanged: None,
    name: str,
    payload: bytes,
    status: int,
    words: tuple[str, ...],
) -> None:
    response = limited_client.post("/datasets", files={"file": (f"{name}.npy", payload)}, headers=AS_ALICE)
    _assert_refused(response, status, words)


def test_decompression_bomb_is_refused_before_inflating(limited_client: TestClient, unchanged: None) -> None:
    bomb = _bomb()
    assert len(bomb) < SMALL_LIMIT // 10
    response = limited_client.post("/datasets", files={"file": ("bomb.npz", bomb)}, headers=AS_ALICE)
    _assert_refused(response, 413, ("uncompressed size", "exceeds the limit"))


@pytest.mark.parametrize(
    ("extra_bytes", "words"),
    [
        (1_000, ("upload exceeds the limit",)),  # within the multipart allowance: the upload's streamed cap
        (200_000, ("limited to",)),  # far over: refused by its Content-Length before any byte is read
    ],
)
def test_oversized_uploads_are_413(
    limited_client: TestClient, unchanged: None, extra_bytes: int, words: tuple[str, ...]
) -> None:
    big = npy_bytes(np.zeros(((SMALL_LIMIT + extra_bytes) // 64, 8, 8), dtype=np.uint8))
    response = limited_client.post("/datasets", files={"file": ("big.npy", big)}, headers=AS_ALICE)
    _assert_refused(response, 413, words)


def _chunks(total: int, size: int = 65536) -> Callable[[], Iterator[bytes]]:
    def generate() -> Iterator[bytes]:
        for start in range(0, total, size):
            yield b" " * min(size, total - start)

    return generate


def test_oversized_chunked_bodies_are_413_while_streaming(
    limited_client: TestClient, unchanged: None
) -> None:
    # No Content-Length (a generator body is sent chunked): the limit is enforced while counting.
    headers = {**AS_ALICE, "Content-Type": "application/json"}
    response = limited_client.post("/jobs", content=_chunks(SMALL_LIMIT * 3)(), headers=headers)
    _assert_refused(response, 413, ("limited to",))
    boundary = "xyz"
    multipart = {**AS_ALICE, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = limited_client.post("/datasets", content=_chunks(SMALL_LIMIT * 3)(), headers=multipart)
    _assert_refused(response, 413, ("limited to",))


def test_oversized_json_body_is_413(limited_client: TestClient, unchanged: None) -> None:
    body = tiny_job({"builtin": "digits"})
    body["padding"] = "x" * (SMALL_LIMIT + 1)
    response = limited_client.post(
        "/jobs", content=json.dumps(body), headers={**AS_ALICE, "Content-Type": "application/json"}
    )
    _assert_refused(response, 413, ("limited to",))


@pytest.mark.parametrize(
    ("section", "field"),
    [("", "surprise"), ("model", "depth"), ("training", "momentum"), ("audit", "foldz"), ("dataset", "url")],
)
def test_unknown_fields_are_422_naming_them(
    keyed_stack: Stack, unchanged: None, section: str, field: str
) -> None:
    body: dict[str, Any] = tiny_job({"builtin": "digits"})
    (body[section] if section else body)[field] = 1
    response = keyed_stack.client.post("/jobs", json=body, headers=AS_ALICE)
    assert response.status_code == 422, response.text
    locations = [item["loc"] for item in response.json()["detail"]]
    assert any(field in loc for loc in locations), locations


@pytest.fixture(scope="module")
def escaping_paths(keyed_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Files and links under the data root that lead outside it, and a valid file outside it."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.npy").write_bytes(npy_bytes(digits_subset(20)))
    root = keyed_stack.data_root
    (root / "link.npy").symlink_to(outside / "secret.npy")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    return {
        "outside_abs": str(outside / "secret.npy"),
        "secret_rel": os.path.relpath(outside / "secret.npy", root),
    }


@pytest.mark.parametrize(
    ("path_key", "status", "words"),
    [
        ("../../../../etc/passwd", 422, ("outside the data root",)),
        ("outside_abs", 422, ("outside the data root",)),
        ("secret_rel", 422, ("outside the data root",)),
        ("link.npy", 422, ("outside the data root",)),
        ("linkdir/secret.npy", 422, ("outside the data root",)),
        ("garbage.npz", 422, ("not a readable .npz",)),
        # a path that names no file is a reference to nothing, like an unknown dataset id (issue 10)
        ("missing.npy", 404, ("no file",)),
    ],
)
def test_paths_escaping_the_data_root_or_bad_files_are_refused(
    keyed_stack: Stack, escaping_paths: dict[str, str], unchanged: None, path_key: str, status: int,
    words: tuple[str, ...],
) -> None:
    path = escaping_paths.get(path_key, path_key)
    response = keyed_stack.client.post("/jobs", json=tiny_job({"path": path}), headers=AS_ALICE)
    _assert_refused(response, status, words)
    assert response.json()["detail"][0]["loc"][:2] == ["dataset", "path"]


class _Payload:
    """Unpickling this creates the canary file: proof that something unpickled an attacker's file."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.canary,))


@pytest.fixture(scope="module")
def fake_torchscripts(keyed_stack: Stack) -> dict[str, Path]:
    """Files under the data root that are not TorchScript, one of them a malicious pickle."""
    import pickle

    import torch

    canary = keyed_stack.data_root.parent / "unpickled-canary"
    files = {
        "garbage.pt": b"not a zip, not anything",
        "pickle.pt": pickle.dumps(_Payload(canary)),
        "zip-with-pickle.pt": _npz_with({"archive/data.pkl": pickle.dumps(_Payload(canary))}),
    }
    for name, data in files.items():
        (keyed_stack.data_root / name).write_bytes(data)
    torch.save({"weight": torch.zeros(3)}, keyed_stack.data_root / "state-dict.pt")  # torch.save, not jit
    return {"canary": canary}


@pytest.mark.parametrize("name", ["garbage.pt", "pickle.pt", "zip-with-pickle.pt", "state-dict.pt"])
@pytest.mark.parametrize("where", ["generator", "embedding"])
def test_torchscript_files_that_are_not_torchscript_are_422_and_never_unpickled(
    keyed_stack: Stack, fake_torchscripts: dict[str, Path], unchanged: None, name: str, where: str
) -> None:
    section: dict[str, Any] = {"latent_dim": 4}
    if where == "generator":
        section["generator_path"] = name
        body = {
            "kind": "copy_test",
            "dataset": {"builtin": "digits:train"},
            "heldout": {"builtin": "digits:test"},
            "copy_test": section,
        }
        location = ["copy_test", "generator_path"]
    else:
        body = {
            "kind": "copy_test",
            "dataset": {"builtin": "digits:train"},
            "heldout": {"builtin": "digits:test"},
            "generated": {"builtin": "digits:test"},
            "copy_test": {"embedding": {"kind": "torchscript", "path": name}},
        }
        location = ["copy_test", "embedding", "path"]
    response = keyed_stack.client.post("/jobs", json=body, headers=AS_ALICE)
    _assert_refused(response, 422, (name, "is not a TorchScript file"))
    assert response.json()["detail"][0]["loc"] == location
    assert not fake_torchscripts["canary"].exists(), "a pickle payload was executed"


@pytest.fixture(scope="module")
def hostile_onnx(keyed_stack: Stack) -> Path:
    """ONNX files under the data root that must not run, and models named for the other format."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import torch

    from tests import onnx_models as build

    root = keyed_stack.data_root
    valid = build.export_onnx(
        build.ConvFeatures(), torch.zeros(2, 1, 8, 8), root / "features.onnx"
    ).read_bytes()
    (root / "truncated.onnx").write_bytes(valid[: len(valid) // 2])
    build.not_a_model(root / "tensor.onnx")
    build.custom_op_model(root / "custom-op.onnx")
    (root.parent / "secret.bin").write_bytes(b"\x00" * 64 * 6 * 4)
    build.external_data_model(root / "external.onnx", "../secret.bin")
    build.export_onnx(build.SpatialFeatures(), torch.zeros(2, 1, 8, 8), root / "spatial.onnx")
    build.export_onnx(build.SpatialFeatures(), torch.zeros(2, 1, 8, 8), root / "onnx-named.pt")
    build.save_torchscript(build.SpatialFeatures(), root / "torchscript-named.onnx")
    build.export_onnx(build.LinearGenerator(side=28), torch.zeros(2, 4), root / "generator28.onnx")
    return root


NOT_LOADABLE = "is not a TorchScript file or a loadable ONNX model"


@pytest.mark.parametrize(
    ("name", "where", "words"),
    [
        ("truncated.onnx", "embedding", (NOT_LOADABLE,)),
        ("truncated.onnx", "generator", (NOT_LOADABLE,)),
        ("tensor.onnx", "embedding", (NOT_LOADABLE,)),
        ("custom-op.onnx", "embedding", (NOT_LOADABLE, "com.example.evil")),
        ("custom-op.onnx", "generator", (NOT_LOADABLE, "com.example.evil")),
        ("external.onnx", "embedding", (NOT_LOADABLE, "External data")),
        ("spatial.onnx", "embedding", ("output (?, 4, 8, 8) has rank 4; it must have rank 2",)),
        ("spatial.onnx", "generator", ("input has rank 4; it must have rank 2",)),
        ("spatial.onnx", "mrgan", ("output (?, 4, 8, 8) has rank 4; it must have rank 2",)),
        ("generator28.onnx", "generator", ("expected images of shape (2, 1, 8, 8)", "(2, 1, 28, 28)")),
        # By content, not by name: each runs in its own runtime and reports its own shape problem.
        ("onnx-named.pt", "embedding", ("is an ONNX model whose output",)),
        ("torchscript-named.onnx", "embedding", ("expected features of shape (batch, F)",)),
    ],
)
def test_onnx_files_that_cannot_run_are_422_before_the_job_exists(
    keyed_stack: Stack, hostile_onnx: Path, unchanged: None, name: str, where: str, words: tuple[str, ...]
) -> None:
    digits = {
        "kind": "copy_test",
        "dataset": {"builtin": "digits:train"},
        "heldout": {"builtin": "digits:test"},
    }
    if where == "generator":
        body = {**digits, "copy_test": {"generator_path": name, "latent_dim": 4}}
        location = ["copy_test", "generator_path"]
    elif where == "mrgan":
        body = {
            **digits,
            "kind": "mrgan",
            "mrgan": {"steps": 10, "embedding": {"kind": "onnx", "path": name}},
        }
        location = ["mrgan", "embedding", "path"]
    else:
        body = {**digits, "generated": {"builtin": "digits:test"},
                "copy_test": {"embedding": {"kind": "onnx", "path": name}}}  # fmt: skip
        location = ["copy_test", "embedding", "path"]
    response = keyed_stack.client.post("/jobs", json=body, headers=AS_ALICE)
    _assert_refused(response, 422, (name, *words))
    assert response.json()["detail"][0]["loc"] == location
    assert str(hostile_onnx) not in response.text, "a server path leaked into the message"


# ---- what one request may cost (OWASP API4): every refusal is a 422 naming the field and the limit ----

DIGITS_TRAIN, DIGITS_TEST = {"builtin": "digits:train"}, {"builtin": "digits:test"}


def _vae(**sections: dict[str, Any]) -> dict[str, Any]:
    body = tiny_job({"builtin": "digits"})
    for name, values in sections.items():
        body[name] = {**body[name], **values}
    return body


def _mrgan(**fields: Any) -> dict[str, Any]:
    return {"kind": "mrgan", "dataset": DIGITS_TRAIN, "heldout": DIGITS_TEST, "mrgan": fields}


# (name, body, location, words the message must contain)
COST_CORPUS: list[tuple[str, dict[str, Any], list[str], tuple[str, ...]]] = [
    ("is_samples-1e9", _vae(audit={"is_samples": 10**9}), ["audit", "is_samples"],
     ("MEMAUDIT_MAX_IS_SAMPLES",)),
    ("hidden-1e8", _vae(model={"hidden": [10**8]}), ["model", "hidden", "0"], ("MEMAUDIT_MAX_MODEL_PARAMS",)),
    ("params-of-two-wide-layers", _vae(model={"hidden": [10_000, 10_000]}), ["model", "hidden"],
     ("parameters", "MEMAUDIT_MAX_MODEL_PARAMS")),
    ("hidden-100-layers", _vae(model={"hidden": [8] * 100}), ["model", "hidden"], ("at most 32 layers",)),
    ("epochs-1e9", _vae(training={"epochs": 10**9}), ["training", "epochs"], ("MEMAUDIT_MAX_EPOCHS",)),
    ("batch_size-1e8", _vae(training={"batch_size": 10**8}), ["training", "batch_size"],
     ("MEMAUDIT_MAX_BATCH_SIZE",)),
    ("batch_size-over-n", _vae(training={"batch_size": 2000}), ["training", "batch_size"],
     ("larger than the 1797 samples",)),
    ("folds-1000-x-repeats-1000", _vae(audit={"folds": 1000, "repeats": 1000}), ["audit", "repeats"],
     ("MEMAUDIT_MAX_FOLDS_X_REPEATS",)),
    ("folds-100-x-repeats-100", _vae(audit={"folds": 100, "repeats": 100}), ["audit", "repeats"],
     ("100 x 100 = 10000 models", "MEMAUDIT_MAX_FOLDS_X_REPEATS")),
    ("n_generated-1e9", _vae(audit={"n_generated": 10**9}), ["audit", "n_generated"],
     ("MEMAUDIT_MAX_GENERATED_SAMPLES",)),
    ("is_chunk_bytes-2^50", _vae(audit={"is_chunk_bytes": 2**50}), ["audit", "is_chunk_bytes"], ("at most",)),
    ("work-every-epoch-importance-sampled", _vae(
        model={"hidden": [1024, 1024]}, training={"epochs": 10_000},
        audit={"folds": 10, "repeats": 10, "is_samples": 4096, "eval_every": 1}), ["audit"],
     ("FLOPs", "importance sampling", "MEMAUDIT_MAX_JOB_WORK")),
    ("mrgan-steps-1e9", _mrgan(steps=10**9), ["mrgan", "steps"], ("MEMAUDIT_MAX_GAN_STEPS",)),
    ("mrgan-batch-1e8", _mrgan(batch_size=10**8), ["mrgan", "batch_size"], ("MEMAUDIT_MAX_BATCH_SIZE",)),
    ("mrgan-batch-over-n", _mrgan(batch_size=1500), ["mrgan", "batch_size"],
     ("larger than the 1498 samples",)),
    ("mrgan-n_generated-1e9", _mrgan(n_generated=10**9), ["mrgan", "n_generated"],
     ("MEMAUDIT_MAX_GENERATED_SAMPLES",)),
    ("mrgan-width-8192", _mrgan(width=8192), ["mrgan", "width"], ("parameters", "MEMAUDIT_MAX_MODEL_PARAMS")),
    ("mrgan-work", _mrgan(steps=200_000, batch_size=1024, max_redraws=1000, taus=[0.1] * 64), ["mrgan"],
     ("FLOPs", "gan training", "MEMAUDIT_MAX_JOB_WORK")),
    ("copy-test-n_generated-1e9", {"kind": "copy_test", "dataset": DIGITS_TRAIN, "heldout": DIGITS_TEST,
                                   "generated": DIGITS_TEST, "copy_test": {"n_generated": 10**9}},
     ["copy_test", "n_generated"], ("MEMAUDIT_MAX_GENERATED_SAMPLES",)),
]


@pytest.mark.parametrize(
    ("name", "body", "location", "words"), COST_CORPUS, ids=[c[0] for c in COST_CORPUS]
)
def test_requests_over_a_resource_limit_are_422_naming_field_and_limit(
    keyed_stack: Stack, unchanged: None, name: str, body: dict[str, Any], location: list[str],
    words: tuple[str, ...],
) -> None:
    response = keyed_stack.client.post("/jobs", json=body, headers=AS_ALICE)
    _assert_refused(response, 422, words)
    assert response.json()["detail"][0]["loc"] == location


# ---- webhooks cannot be aimed inside (OWASP API7, SSRF) ----

SSRF_CORPUS = [
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://127.0.0.1:8000/hook", "loopback"),
    ("http://localhost/hook", "loopback"),  # a name resolving to loopback
    ("http://10.1.2.3/hook", "private"),
    ("http://172.16.0.1/hook", "private"),
    ("http://192.168.1.1/hook", "private"),
    ("http://100.64.0.1/hook", "shared"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://224.0.0.1/hook", "multicast"),
    ("http://240.0.0.1/hook", "reserved"),
    ("http://[::1]/hook", "loopback"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://[fc00::1]/hook", "private"),
    ("http://[ff02::1]/hook", "multicast"),
    ("http://[::]/hook", "unspecified"),
    ("http://[::ffff:169.254.169.254]/hook", "link-local"),  # IPv4-mapped IPv6
    ("http://[64:ff9b::a00:1]/hook", "private"),  # NAT64 of 10.0.0.1
]


@pytest.mark.parametrize(("url", "kind"), SSRF_CORPUS, ids=[url for url, _ in SSRF_CORPUS])
def test_webhooks_aimed_inside_are_refused_at_submit(
    keyed_stack: Stack, unchanged: None, url: str, kind: str
) -> None:
    body = {**tiny_job({"builtin": "digits"}), "webhook_url": url}
    response = keyed_stack.client.post("/jobs", json=body, headers=AS_ALICE)
    _assert_refused(response, 422, (kind, "MEMAUDIT_WEBHOOK_ALLOW_PRIVATE"))
    assert response.json()["detail"][0]["loc"] == ["webhook_url"]


# ---- hostile archives (image zips and tars, parquet, shards): refused before anything is inflated ----


def _png(side: int = 4, value: int = 0) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _tar(members: list[tuple[str, bytes | None, bytes]], gz: bool = False) -> bytes:
    """(name, tar type or None for a regular file, data or link target) as a .tar / .tar.gz."""
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as archive:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind is None:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
                continue
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = data.decode()
            else:
                info.devmajor, info.devminor = 1, 3
            archive.addfile(info)
    return buffer.getvalue()


def _parquet_paths_only() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    buffer = io.BytesIO()
    pq.write_table(pa.table({"image": pa.array([{"bytes": None, "path": "/etc/passwd"}], type=image_type)}),
                   buffer)  # fmt: skip
    return buffer.getvalue()


def _archive_corpus() -> list[tuple[str, str, bytes, int, tuple[str, ...]]]:
    import tarfile

    zeros = bytes(1_000_000)  # inflates to 5x the limited app's limit
    return [
        ("zip-bomb-declared-size", "bomb.zip", _npz_with({"a.png": zeros}), 413,
         ("declared uncompressed size", "exceeds the limit")),
        ("zip-too-many-members", "many.zip",
         _npz_with({f"c/{i}.png": _png() for i in range(MAX_MEMBERS + 5)}),
         413, (f"more than {MAX_MEMBERS} members",)),
        ("zip-traversal", "t.zip", _npz_with({"cat/../../evil.png": _png()}), 422, ("climbs out", "'..'")),
        ("zip-absolute-path", "a.zip", _npz_with({"/etc/evil.png": _png()}), 422, ("absolute path",)),
        ("zip-mixed-sizes", "m.zip", _npz_with({"a/1.png": _png(4), "a/2.png": _png(6)}), 422,
         ("a/2.png: image sized 6x6 L differs from a/1.png (4x4 L)", "dataset.path and dataset.resize")),
        ("tar-symlink", "s.tar", _tar([("cat/a.png", tarfile.SYMTYPE, b"/etc/passwd")]), 422,
         ("symbolic link",)),
        ("tar-hardlink", "h.tar", _tar([("cat/a.png", tarfile.LNKTYPE, b"/etc/shadow")]), 422,
         ("hard link",)),
        ("tar-device", "d.tar", _tar([("cat/a.png", tarfile.CHRTYPE, b"")]), 422, ("device file",)),
        ("tar-traversal", "t.tar", _tar([("../../evil.png", None, _png())]), 422, ("climbs out",)),
        ("tar-absolute-path", "a.tar", _tar([("/abs/evil.png", None, _png())]), 422, ("absolute path",)),
        ("tar-gz-bomb", "bomb.tar.gz", _tar([("a.png", None, zeros)], gz=True), 413,
         ("declares 1000000 bytes",)),
        ("tar-gz-garbage", "g.tar.gz", b"\x1f\x8b" + b"garbage" * 40, 422, ("not a readable tar",)),
        ("parquet-rows-naming-files", "p.parquet", _parquet_paths_only(), 422, ("image bytes are missing",)),
        ("npz-duplicate-keys", "k.npz", npz_bytes(digits_subset(4), keys=np.array(["a", "b", "a", "b"])), 422,
         ("keys must be unique", "'a', 'b'")),
    ]  # fmt: skip


ARCHIVE_CORPUS = _archive_corpus()


@pytest.mark.parametrize(
    ("name", "filename", "payload", "status", "words"), ARCHIVE_CORPUS, ids=[c[0] for c in ARCHIVE_CORPUS]
)
def test_hostile_archives_are_refused_and_leave_nothing(
    limited_client: TestClient, unchanged: None, name: str, filename: str, payload: bytes, status: int,
    words: tuple[str, ...],
) -> None:
    assert len(payload) < SMALL_LIMIT
    response = limited_client.post("/datasets", files={"file": (filename, payload)}, headers=AS_ALICE)
    _assert_refused(response, status, words)


@pytest.mark.parametrize("gz", [False, True], ids=["zip-bomb-by-ratio", "tar-gz-bomb-by-ratio"])
def test_bombs_within_the_size_limit_are_refused_by_their_compression_ratio(
    keyed_stack: Stack, unchanged: None, gz: bool
) -> None:
    zeros = bytes(8 << 20)  # 8 MiB of zeros: far under 2 GiB, but ~1000x smaller compressed
    payload = _tar([("a.png", None, zeros)], gz=True) if gz else _npz_with({"a.png": zeros})
    assert len(payload) < 100_000
    name = "r.tar.gz" if gz else "r.zip"
    with environment({"MEMAUDIT_MAX_UNCOMPRESSED_BYTES": str(1 << 30)}):  # not the size limit: the ratio
        response = keyed_stack.client.post("/datasets", headers=AS_ALICE, files={"file": (name, payload)})
    _assert_refused(response, 413, ("compression ratio", "decompression bomb"))


def test_a_hostile_tar_under_the_data_root_is_refused_when_a_job_names_it(
    keyed_stack: Stack, unchanged: None
) -> None:
    import tarfile

    (keyed_stack.data_root / "links.tar").write_bytes(_tar([("cat/a.png", tarfile.SYMTYPE, b"/etc/passwd")]))
    response = keyed_stack.client.post("/jobs", json=tiny_job({"path": "links.tar"}), headers=AS_ALICE)
    _assert_refused(response, 422, ("symbolic link",))
    assert response.json()["detail"][0]["loc"] == ["dataset", "path"]
