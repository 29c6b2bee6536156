"""Embeddings: pixels, the seeded autoencoder, and TorchScript extractors loaded without unpickling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from models.embeddings import EmbeddingConfig, build_embedder
from tests.gan.conftest import DigitSplits


class _MeanPool(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))  # (B, C): a (batch, F) feature extractor


class _KeepsSpatial(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images  # (B, C, H, W): not (batch, F)


def test_parse_spec() -> None:
    assert EmbeddingConfig.parse("pixels").kind == "pixels"
    assert EmbeddingConfig.parse("autoencoder", seed=3).seed == 3
    parsed = EmbeddingConfig.parse("torchscript:/x/f.pt")
    assert (parsed.kind, parsed.torchscript_path) == ("torchscript", "/x/f.pt")
    with pytest.raises(ValueError, match="unknown kind 'inception'"):
        EmbeddingConfig.parse("inception")


def test_pixels_flatten(digit_splits: DigitSplits) -> None:
    features = build_embedder(EmbeddingConfig(), digit_splits.train).embed(digit_splits.test[:7])
    assert torch.equal(features, digit_splits.test[:7].flatten(1))


def test_autoencoder_is_seeded_and_semantic(digit_splits: DigitSplits) -> None:
    config = EmbeddingConfig(kind="autoencoder", latent_dim=16, epochs=3)
    first = build_embedder(config, digit_splits.train).embed(digit_splits.test)
    second = build_embedder(config, digit_splits.train).embed(digit_splits.test)
    assert first.shape == (450, 16)
    assert torch.equal(first, second)
    # Near-duplicates stay nearer than unrelated images in the learned space.
    embedder = build_embedder(config, digit_splits.train)
    base = embedder.embed(digit_splits.test[:50])
    jitter = embedder.embed((digit_splits.test[:50] + 0.01).clamp(0, 1))
    other = embedder.embed(digit_splits.fresh[:50])
    assert (base - jitter).norm(dim=1).mean() < 0.2 * (base - other).norm(dim=1).mean()
    # Codes are centred on the training mean, so cosine distances are not squashed by a common offset.
    train_codes = embedder.embed(digit_splits.train)
    assert float(train_codes.mean(0).abs().max()) < 1e-4 * float(train_codes.abs().mean())


def _scripted(path: Path) -> EmbeddingConfig:
    return EmbeddingConfig(kind="torchscript", torchscript_path=str(path))


def test_torchscript_extractor_loads_and_runs(tmp_path: Path, digit_splits: DigitSplits) -> None:
    path = tmp_path / "pool.pt"
    torch.jit.script(_MeanPool()).save(str(path))
    embedder = build_embedder(_scripted(path), digit_splits.train)
    torch.testing.assert_close(embedder.embed(digit_splits.test[:4]), digit_splits.test[:4].mean(dim=(2, 3)))


def test_torchscript_errors_are_clear(tmp_path: Path, digit_splits: DigitSplits) -> None:
    pickled = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, pickled)  # a pickle, not TorchScript: must not be loaded
    with pytest.raises(ValueError, match="is not a TorchScript file"):
        build_embedder(_scripted(pickled), digit_splits.train)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip archive at all")
    with pytest.raises(ValueError, match="is not a TorchScript file"):
        build_embedder(_scripted(garbage), digit_splits.train)
    with pytest.raises(ValueError, match="file not found"):
        build_embedder(_scripted(tmp_path / "missing.pt"), digit_splits.train)
    spatial = tmp_path / "spatial.pt"
    torch.jit.script(_KeepsSpatial()).save(str(spatial))
    with pytest.raises(ValueError, match=r"expected features of shape \(batch, F\)"):
        build_embedder(_scripted(spatial), digit_splits.train)
