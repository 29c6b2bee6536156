"""The provenance block of `memaudit audit` / `copytest` (app.provenance) and `memaudit diff`."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from app import provenance
from app.cli import main
from models.data import load_dataset

TINY = ["--folds", "2", "--repeats", "1", "--epochs", "1", "--is-samples", "4", "--hidden", "16",
        "--latent", "2", "--device", "cpu", "--seed", "5"]  # fmt: skip


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return load_dataset("digits").as_uint8()[:60, 0]  # (60, 8, 8) uint8


@pytest.fixture(scope="module")
def audits(pixels: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 60 digits audited from an .npz and from a zip of PNGs, and once with another epoch count."""
    folder = tmp_path_factory.mktemp("provenance")
    np.savez(folder / "train.npz", images=pixels)
    with zipfile.ZipFile(folder / "train.zip", "w") as archive:
        for index, image in enumerate(pixels):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            archive.writestr(f"{index:03d}.png", buffer.getvalue())
    runs = {"npz": ["train.npz", *TINY], "zip": ["train.zip", *TINY],
            "epochs": ["train.npz", *TINY[:5], "2", *TINY[6:]]}  # fmt: skip
    outputs = {}
    for name, (dataset, *options) in runs.items():
        out = folder / name
        assert main(["audit", str(folder / dataset), "--out", str(out), *options]) == 0
        outputs[name] = out / "summary.json"
    outputs["folder"] = folder
    return outputs


def _block(summary: Path) -> dict[str, Any]:
    block: dict[str, Any] = json.loads(summary.read_text())["provenance"]
    return block


def test_file_digests_are_what_sha256sum_prints_and_folders_hash_their_manifest(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.bin").write_bytes(b"x" * 3_000_000)
    (tmp_path / "b" / "y.bin").write_bytes(b"y")
    assert provenance.file_sha256(tmp_path / "b" / "x.bin") == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    manifest = (f"{hashlib.sha256(b'x' * 3_000_000).hexdigest()}  b/x.bin\n"
                f"{hashlib.sha256(b'y').hexdigest()}  b/y.bin\n")  # fmt: skip
    assert provenance.paths_sha256([tmp_path / "b"]) == hashlib.sha256(manifest.encode()).hexdigest()
    (tmp_path / "b" / "y.bin").write_bytes(b"z")
    assert provenance.paths_sha256([tmp_path / "b"]) != hashlib.sha256(manifest.encode()).hexdigest()


def test_content_digest_depends_on_pixels_shape_and_dtype(pixels: np.ndarray) -> None:
    digest = provenance.content_sha256(pixels[:, None])
    assert digest == provenance.content_sha256(pixels[:, None].copy())
    changed = pixels.copy()
    changed[7, 3, 3] ^= 1
    assert provenance.content_sha256(changed[:, None]) != digest
    assert provenance.content_sha256(pixels[:, None, :, :4]) != digest
    assert provenance.content_sha256(pixels[:, None].astype(np.int16)) != digest


def test_summary_json_carries_a_complete_provenance_block(audits: dict[str, Path],
                                                          pixels: np.ndarray) -> None:  # fmt: skip
    block = _block(audits["npz"])
    assert block["schema"] == provenance.PROVENANCE_SCHEMA
    assert set(block) == {"schema", "software", "inputs", "config", "seeds", "units", "phases"}
    assert block["software"]["torch"] == torch.__version__ and block["software"]["numpy"] == np.__version__
    assert {"memaudit", "revision", "python", "platform"} <= set(block["software"])
    dataset = block["inputs"]["dataset"]
    npz = audits["folder"] / "train.npz"
    assert dataset["source"] == f"path:{npz}"
    assert dataset["file_sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    assert dataset["content_sha256"] == provenance.content_sha256(pixels[:, None])
    assert dataset["count"] == 60 and dataset["image_shape"] == [1, 8, 8]
    assert block["config"]["training"]["epochs"] == 1 and block["config"]["audit"]["folds"] == 2
    assert block["seeds"] == {"audit.seed": 5}
    unit = block["units"][0]
    assert unit["device"] == "cpu" and unit["precision"] and unit["train_seconds"] > 0
    assert sorted(m for u in block["units"] for m in u["model_ids"]) == [0, 1]
    assert block["phases"]["total_seconds"] >= block["phases"]["train_seconds"] > 0


def test_same_images_in_two_formats_share_the_content_digest_only(audits: dict[str, Path]) -> None:
    npz, zipped = _block(audits["npz"])["inputs"]["dataset"], _block(audits["zip"])["inputs"]["dataset"]
    assert npz["content_sha256"] == zipped["content_sha256"]
    assert npz["file_sha256"] != zipped["file_sha256"]


def test_diff_prints_what_differs_scores_and_timings_aside(
    audits: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["diff", str(audits["npz"]), str(audits["epochs"])]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "config.training.epochs: 1 -> 2" in lines
    assert all("seconds" not in line and "quantile" not in line for line in lines), lines
    assert main(["diff", str(audits["npz"]), str(audits["npz"])]) == 0
    assert capsys.readouterr().out.startswith("no differences")
    assert main(["diff", str(audits["npz"]), str(audits["zip"])]) == 1
    changed = {line.split(":")[0] for line in capsys.readouterr().out.splitlines()}
    assert changed == {"inputs.dataset.file_sha256", "inputs.dataset.source"}
    assert main(["diff", "--timings", str(audits["npz"]), str(audits["npz"])]) == 0


def test_diff_reads_a_job_document_and_refuses_files_without_provenance(
    audits: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"id": "x", "summary": json.loads(audits["epochs"].read_text())}))
    assert main(["diff", str(audits["epochs"]), str(job)]) == 0
    capsys.readouterr()
    bare = tmp_path / "old.json"
    bare.write_text(json.dumps({"quantiles": {}}))
    assert main(["diff", str(bare), str(job)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memaudit diff: error:") and "no provenance block" in err
    assert main(["diff", str(tmp_path / "missing.json"), str(job)]) == 2


def test_copytest_summary_records_every_input(tmp_path: Path) -> None:
    digits = load_dataset("digits").as_uint8()[:, 0]
    for name, part in (("train", digits[:300]), ("test", digits[300:450]), ("generated", digits[450:600])):
        np.savez(tmp_path / f"{name}.npz", images=part)
    out = tmp_path / "out"
    code = main(["copytest", "--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"),
                 "--generated", str(tmp_path / "generated.npz"), "--cells", "2", "--out", str(out),
                 "--device", "cpu"])  # fmt: skip
    assert code == 0
    block = _block(out / "summary.json")
    assert set(block["inputs"]) == {"train", "test", "generated"}
    test_digest = hashlib.sha256((tmp_path / "test.npz").read_bytes()).hexdigest()
    assert block["inputs"]["test"]["file_sha256"] == test_digest
    assert block["inputs"]["train"]["count"] == 300
    assert block["config"]["copy_test"]["cells"] == 2
