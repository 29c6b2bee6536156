"""Shared data for the GAN-copying tests: sklearn digits as features in [0, 1], split three ways."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch


@dataclass(frozen=True)
class DigitSplits:
    train: torch.Tensor  # (897, 1, 8, 8)
    test: torch.Tensor  # (450, 1, 8, 8)
    fresh: torch.Tensor  # (450, 1, 8, 8) a third disjoint sample of the same distribution


@pytest.fixture(scope="session")
def digit_splits() -> DigitSplits:
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    return DigitSplits(images[order[:897]], images[order[897:1347]], images[order[1347:]])


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Tiny GANs train several times faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
