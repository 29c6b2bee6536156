"""Frozen configs of MR-GAN training and of the per-tau evaluation (SPEC §5).

Configs validate themselves (``ValueError`` naming the field) and round-trip through JSON-safe dicts, so
checkpoints and DB rows carry them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

# One cancellation type for every job kind, so workers handle VAE and GAN units alike.
from models.training import Cancelled

__all__ = ["Cancelled", "GanConfig", "MrganConfig", "SweepConfig", "config_from_dict", "config_to_dict"]

GanArch = Literal["mlp", "dcgan"]
RejectionMode = Literal["G", "GD"]
GAN_ARCHS: tuple[str, ...] = get_args(GanArch)
REJECTION_MODES: tuple[str, ...] = get_args(RejectionMode)
DCGAN_SIZES = (28, 32)

_T = TypeVar("_T")


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{field}: {message}")


def config_to_dict(config: object) -> dict[str, Any]:
    """JSON-safe dict of a config dataclass (tuples become lists)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, field.name)
        out[field.name] = list(value) if isinstance(value, tuple) else value
    return out


def config_from_dict(cls: type[_T], data: dict[str, Any]) -> _T:
    names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    _require(not unknown, cls.__name__, f"unknown fields {unknown}")
    return cls(**{key: tuple(v) if isinstance(v, list) else v for key, v in data.items()})


@dataclass(frozen=True)
class GanConfig:
    """Generator/discriminator architecture. ``width``: MLP hidden units or DCGAN base filters."""

    arch: GanArch = "mlp"
    image_shape: tuple[int, int, int] = (1, 8, 8)  # (C, H, W)
    latent_dim: int = 32
    width: int = 256

    def __post_init__(self) -> None:
        _require(self.arch in GAN_ARCHS, "arch", f"must be one of {', '.join(GAN_ARCHS)}; got {self.arch!r}")
        _require(
            len(self.image_shape) == 3 and all(isinstance(s, int) and s >= 1 for s in self.image_shape),
            "image_shape", "must be three positive integers (C, H, W)",
        )  # fmt: skip
        if self.arch == "dcgan":
            _, height, width = self.image_shape
            sizes = " or ".join(map(str, DCGAN_SIZES))
            message = f"dcgan needs square {sizes} px images, got {height}x{width}"
            _require(height == width and height in DCGAN_SIZES, "arch", message)
        _require(1 <= self.latent_dim <= 4096, "latent_dim", "must be in 1..4096")
        _require(1 <= self.width <= 8192, "width", "must be in 1..8192")

    @staticmethod
    def for_images(image_shape: tuple[int, int, int]) -> GanConfig:
        """The default network for an image size: DCGAN for 28/32 px, the small MLP GAN otherwise."""
        _, height, width = image_shape
        if height == width and height in DCGAN_SIZES:
            return GanConfig(arch="dcgan", image_shape=image_shape, latent_dim=64, width=64)
        return GanConfig(arch="mlp", image_shape=image_shape, latent_dim=32, width=256)


@dataclass(frozen=True)
class MrganConfig:
    """Training recipe: hinge loss, Adam(lr, betas), ``d_steps`` discriminator steps per generator step."""

    steps: int = 2000  # generator steps
    batch_size: int = 64
    d_steps: int = 1
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    mode: RejectionMode = "G"
    max_redraws: int = 10  # fresh batches drawn when every fake of a generator batch is rejected
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.steps >= 1, "steps", "must be >= 1")
        _require(self.batch_size >= 2, "batch_size", "must be >= 2")
        _require(self.d_steps >= 1, "d_steps", "must be >= 1")
        _require(0 < self.lr <= 1, "lr", "must be in (0, 1]")
        betas_ok = len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)
        _require(betas_ok, "betas", "must be two values in [0, 1)")
        _require(self.mode in REJECTION_MODES, "mode", f"must be G or GD; got {self.mode!r}")
        _require(self.max_redraws >= 0, "max_redraws", "must be >= 0")


@dataclass(frozen=True)
class SweepConfig:
    """Which taus to train with and how each trained generator is evaluated.

    ``taus`` are cosine distances; ``tau_quantiles`` are turned into taus as quantiles of the held-out ->
    training nearest-neighbour distance distribution (both lists may be given; they are concatenated).
    A generated sample counts as a copy of its nearest training sample when it is closer than the
    ``copy_quantile`` quantile of the same held-out distribution.
    """

    taus: tuple[float, ...] = (0.0,)
    tau_quantiles: tuple[float, ...] = ()
    copy_quantile: float = 0.05
    n_generated: int | None = None  # None: as many as the held-out set has
    cells: int | None = None  # C_T cells; None: resolve_cells (50 when the held-out set is large enough)
    ct_metric: Literal["euclidean", "cosine"] = "euclidean"

    def __post_init__(self) -> None:
        has_tau = len(self.taus) + len(self.tau_quantiles) >= 1
        _require(has_tau, "tau", "give at least one tau or tau quantile")
        _require(all(0.0 <= t <= 2.0 for t in self.taus), "tau", "cosine distances lie in [0, 2]")
        _require(all(0.0 <= q <= 1.0 for q in self.tau_quantiles), "tau_quantile", "must lie in [0, 1]")
        _require(0.0 <= self.copy_quantile <= 1.0, "copy_quantile", "must lie in [0, 1]")
        _require(self.n_generated is None or self.n_generated >= 2, "n_generated", "must be >= 2")
        _require(self.cells is None or self.cells >= 1, "cells", "must be >= 1")
        _require(self.ct_metric in ("euclidean", "cosine"), "ct_metric", "must be euclidean or cosine")
