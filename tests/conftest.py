"""Suite-wide fixtures. Area-specific harnesses live in the sub-folders' conftest files."""

from __future__ import annotations

import os

import pytest


def running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    import torch

    torch.manual_seed(0)
