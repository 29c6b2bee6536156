"""ONNX feature extractors and generators: the same numbers as the same network in TorchScript, the format
told by content, and clear errors for files that cannot be run (nothing outside the model is read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.cli import main
from models.copying import CopyTestConfig
from models.embeddings import EmbeddingConfig, build_embedder
from models.gan import generate_from_model_file, run_copy_test
from models.model_files import model_format
from tests.gan.conftest import DigitSplits
from tests.onnx_models import (
    ConvFeatures,
    LinearGenerator,
    SpatialFeatures,
    custom_op_model,
    export_onnx,
    external_data_model,
    not_a_model,
    save_torchscript,
)

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
CPU = torch.device("cpu")
IMAGE = torch.zeros(2, 1, 8, 8)


def _file_embedding(path: Path, kind: str = "onnx") -> EmbeddingConfig:
    return EmbeddingConfig(kind=kind, torchscript_path=str(path))  # type: ignore[arg-type]


def test_onnx_embedding_gives_the_torchscript_copy_statistics(
    tmp_path: Path, digit_splits: DigitSplits
) -> None:
    network = ConvFeatures()
    scripted = save_torchscript(network, tmp_path / "features.pt")
    exported = export_onnx(network, IMAGE, tmp_path / "features.onnx")
    fixed = export_onnx(network, torch.zeros(100, 1, 8, 8), tmp_path / "fixed100.onnx", dynamic_batch=False)
    assert [model_format(str(p)) for p in (scripted, exported)] == ["torchscript", "onnx"]
    generated = torch.cat([digit_splits.train[:40].repeat(3, 1, 1, 1), digit_splits.fresh[:200]])
    reports = [
        run_copy_test(
            digit_splits.train,
            digit_splits.test,
            generated,
            embedding=_file_embedding(path),
            copy=CopyTestConfig(cells=5),
        )
        for path in (scripted, exported, fixed)
    ]
    scripted_features = build_embedder(_file_embedding(scripted), digit_splits.train).embed(
        digit_splits.train
    )
    for path in (exported, fixed):
        features = build_embedder(_file_embedding(path), digit_splits.train).embed(digit_splits.train)
        torch.testing.assert_close(features, scripted_features, rtol=1e-5, atol=1e-6)
    # The features agree to float32 rounding (~3e-8), but exact copies sit at distance ~1e-4 of float
    # cancellation, where such rounding reorders near-ties: a Mann-Whitney U may move by a few of its
    # thousands of pairs and a copy count may flip at the threshold. Cells and thresholds must agree.
    reference = reports[0]
    for report in reports[1:]:
        assert report.copying.c_t == pytest.approx(reference.copying.c_t, abs=0.02)
        for cell, expected in zip(report.copying.cells, reference.copying.cells, strict=True):
            assert (cell.n_train, cell.n_test, cell.n_generated) == (
                expected.n_train,
                expected.n_test,
                expected.n_generated,
            )
            assert abs(cell.u - expected.u) <= 0.002 * cell.n_test * cell.n_generated
        assert report.counts.threshold == pytest.approx(reference.counts.threshold, rel=0.01)
        assert (
            int((report.counts.count != reference.counts.count).sum()) <= 0.005 * digit_splits.train.shape[0]
        )
    assert int((reference.counts.count > 0).sum()) >= 30  # the planted copies are found at all


def test_onnx_generator_samples_what_the_torchscript_one_does(tmp_path: Path) -> None:
    network = LinearGenerator()
    scripted = save_torchscript(network, tmp_path / "generator.pt")
    exported = export_onnx(network, torch.zeros(2, 4), tmp_path / "generator.onnx")
    fixed = export_onnx(network, torch.zeros(64, 4), tmp_path / "fixed.onnx", dynamic_batch=False)
    reference = generate_from_model_file(str(scripted), 4, 700, (1, 8, 8), seed=3, device=CPU)
    for path in (exported, fixed):  # 700 = 10 x 64 + 60: the fixed-batch model gets a padded last chunk
        images = generate_from_model_file(str(path), 4, 700, (1, 8, 8), seed=3, device=CPU)
        torch.testing.assert_close(images, reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"takes inputs \(\?, 4\), not \(B, 5\)"):
        generate_from_model_file(str(exported), 5, 10, (1, 8, 8), seed=3, device=CPU)
    with pytest.raises(ValueError, match=r"expected images of shape \(512, 1, 28, 28\)"):
        generate_from_model_file(str(exported), 4, 700, (1, 28, 28), seed=3, device=CPU)


def test_the_format_comes_from_the_content_not_the_suffix_or_kind(
    tmp_path: Path, digit_splits: DigitSplits
) -> None:
    network = ConvFeatures()
    onnx_named_pt = export_onnx(network, IMAGE, tmp_path / "features.pt")
    scripted_named_onnx = save_torchscript(network, tmp_path / "features.onnx")
    probe = digit_splits.test[:8]
    expected = network(probe).detach()
    for path, kind in ((onnx_named_pt, "torchscript"), (scripted_named_onnx, "onnx")):
        features = build_embedder(_file_embedding(path, kind), digit_splits.train).embed(probe)
        torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)


def test_onnx_files_that_cannot_run_are_clear_errors(tmp_path: Path, digit_splits: DigitSplits) -> None:
    train = digit_splits.train

    def refused(path: Path, pattern: str) -> None:
        with pytest.raises(ValueError, match=pattern):
            build_embedder(_file_embedding(path), train)

    exported = export_onnx(ConvFeatures(), IMAGE, tmp_path / "features.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported.read_bytes()[: exported.stat().st_size // 2])
    refused(truncated, "is not a TorchScript file or a loadable ONNX model")
    refused(not_a_model(tmp_path / "tensor.onnx"), "is not a TorchScript file or a loadable ONNX model")
    refused(custom_op_model(tmp_path / "custom.onnx"), r"loadable ONNX model \(.*com\.example\.evil")
    refused(export_onnx(SpatialFeatures(), IMAGE, tmp_path / "spatial.onnx"),
            r"output \(\?, 4, 8, 8\) has rank 4; it must have rank 2")  # fmt: skip
    wide = export_onnx(
        ConvFeatures(), torch.zeros(2, 1, 28, 28), tmp_path / "fixed28.onnx", dynamic_batch=False
    )
    refused(wide, r"takes inputs \(2, 1, 28, 28\), not \(B, 1, 8, 8\)")
    refused(export_onnx(LinearGenerator(), torch.zeros(2, 4), tmp_path / "rank2.onnx"),
            "input has rank 2; it must have rank 4")  # fmt: skip


def test_external_tensor_data_is_never_read_from_disk(tmp_path: Path, digit_splits: DigitSplits) -> None:
    """An ONNX model may name a file for its weights; onnxruntime would read it from the working
    directory or next to the model. Both are refused: the weights are looked up in an empty folder."""
    models = tmp_path / "models"
    models.mkdir()
    secret = np.arange(64 * 6, dtype=np.float32)
    for where in (tmp_path / "secret.bin", models / "secret.bin", Path.cwd() / "memaudit-secret.bin"):
        secret.tofile(where)
    try:
        for location in ("secret.bin", "../secret.bin", "memaudit-secret.bin", str(tmp_path / "secret.bin")):
            path = external_data_model(models / "external.onnx", location)
            with pytest.raises(ValueError, match="is not a TorchScript file or a loadable ONNX model"):
                build_embedder(_file_embedding(path), digit_splits.train)
    finally:
        (Path.cwd() / "memaudit-secret.bin").unlink()


def test_copytest_cli_takes_an_onnx_generator_and_embedding(
    tmp_path: Path, digit_splits: DigitSplits, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, images in (("train", digit_splits.train), ("test", digit_splits.test)):
        np.savez(tmp_path / f"{name}.npz", images=(images[:, 0] * 255).round().to(torch.uint8).numpy())
    generator = export_onnx(LinearGenerator(), torch.zeros(2, 4), tmp_path / "generator.onnx")
    features = export_onnx(ConvFeatures(), IMAGE, tmp_path / "features.onnx")
    out = tmp_path / "out"
    code = main(["copytest", "--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"),
                 "--generator", str(generator), "--latent-dim", "4", "--n-generated", "300",
                 "--embedding", f"onnx:{features}", "--cells", "3", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_generated"] == 300 and summary["generated_source"] == f"onnx:{generator}"
    assert summary["embedding"]["kind"] == "onnx"
    wrong = main(["copytest", "--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"),
                  "--generator", str(features), "--latent-dim", "4", "--out", str(out)])  # fmt: skip
    assert wrong == 2 and "must have rank 2" in capsys.readouterr().err
