"""Copy test of an existing generator: samples as an array or a TorchScript generator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from models.copying import CopyTestConfig
from models.gan import generate_from_torchscript, run_copy_test
from tests.gan.conftest import DigitSplits

CPU = torch.device("cpu")


class _LinearGenerator(nn.Module):
    def __init__(self, latent: int, shape: list[int]) -> None:
        super().__init__()
        self.shape = shape
        self.linear = nn.Linear(latent, shape[0] * shape[1] * shape[2])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = torch.sigmoid(self.linear(z))
        return flat.view(z.shape[0], self.shape[0], self.shape[1], self.shape[2])


def test_copies_are_detected_and_ranked(digit_splits: DigitSplits) -> None:
    copied = torch.arange(0, 300, 3)  # 100 training digits, each reproduced 3 times with tiny noise
    noise = torch.Generator().manual_seed(2)
    copies = digit_splits.train[copied].repeat(3, 1, 1, 1)
    copies = (copies + 0.003 * torch.randn(copies.shape, generator=noise)).clamp(0, 1)
    report = run_copy_test(
        digit_splits.train, digit_splits.test, torch.cat([copies, digit_splits.fresh[:150]]),
        copy=CopyTestConfig(cells=5),
    )  # fmt: skip
    summary = report.summary()
    assert summary["c_t"] < -3.0
    assert set(report.counts.ranking()[:100].tolist()) == set(copied.tolist())
    assert bool((report.rho.rho[copied] > 1).all())
    assert summary["n_generated"] == 450 and summary["training_samples_copied"] >= 100
    fresh = run_copy_test(
        digit_splits.train, digit_splits.test, digit_splits.fresh, copy=CopyTestConfig(cells=5)
    )
    assert abs(fresh.copying.c_t) < 2.0 and fresh.frechet < report.frechet + 1.0


def test_generated_images_must_match_the_training_shape_and_range(digit_splits: DigitSplits) -> None:
    with pytest.raises(ValueError, match="generated: images are shaped"):
        run_copy_test(digit_splits.train, digit_splits.test, torch.rand(50, 1, 4, 4))
    with pytest.raises(ValueError, match=r"generated: pixel values must lie in \[0, 1\]"):
        run_copy_test(digit_splits.train, digit_splits.test, digit_splits.fresh * 2 - 1)


def test_torchscript_generator_is_sampled_with_seeded_latents(tmp_path: Path) -> None:
    path = tmp_path / "generator.pt"
    torch.jit.script(_LinearGenerator(4, [1, 8, 8])).save(str(path))
    first = generate_from_torchscript(str(path), 4, 700, (1, 8, 8), seed=3, device=CPU)
    again = generate_from_torchscript(str(path), 4, 700, (1, 8, 8), seed=3, device=CPU)
    assert first.shape == (700, 1, 8, 8) and torch.equal(first, again)
    with pytest.raises(ValueError, match=r"expected images of shape \(512, 1, 28, 28\)"):
        generate_from_torchscript(str(path), 4, 700, (1, 28, 28), seed=3, device=CPU)
    with pytest.raises(ValueError, match="calling it on latents of shape"):
        generate_from_torchscript(str(path), 5, 10, (1, 8, 8), seed=3, device=CPU)
