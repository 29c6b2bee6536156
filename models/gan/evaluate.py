"""Copying tests for a generator trained elsewhere (the ``copy_test`` job and ``memaudit copytest``).

Input: generated samples as an array, or a generator file plus its latent size: TorchScript (loaded with
torch.jit.load, never unpickled) or ONNX (onnxruntime), told apart by content (models.model_files),
sampled here with seeded N(0, I) latents. Output: C_T against the test set
(SPEC §4), the NN ratio rho per training sample (§3), a Fréchet distance in the same feature space, and the
per-training-sample copy counts (held-out-calibrated threshold, see models.gan.sweep), all in one metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.copying import (
    CopyCounts,
    CopyingResult,
    CopyTestConfig,
    NnRatio,
    copy_counts,
    copy_threshold,
    data_copying_test,
    nn_ratio,
    within_tau_counts,
)
from models.embeddings import EmbeddingConfig, build_embedder
from models.frechet import frechet_distance
from models.model_files import load_network, model_format
from models.neighbours import Neighbours, nearest, prepare_references
from models.onnx_model import NetworkFileError

GENERATOR_BATCH = 512


@dataclass(frozen=True)
class CopyTestReport:
    copying: CopyingResult
    rho: NnRatio
    frechet: float
    counts: CopyCounts  # nearest-credit counts at the held-out-calibrated copy threshold
    taus: tuple[float, ...]  # the radii of the SPEC §5 counts (default: the copy threshold)
    within_tau: torch.Tensor  # (len(taus), N) generated samples within tau of each training sample
    generated_nearest: Neighbours  # per generated sample: nearest training sample and its distance
    heldout_distance: torch.Tensor  # (n,) test -> nearest training distance (calibrates the threshold)
    metric: str
    n_train: int
    n_test: int
    n_generated: int

    def summary(self) -> dict[str, Any]:
        rho = self.rho.rho
        finite = rho[torch.isfinite(rho)]
        copies = self.generated_nearest.distance <= self.counts.threshold
        return {
            "c_t": self.copying.c_t,
            "cells": len(self.copying.cells),
            "cells_kept": sum(row.kept for row in self.copying.cells),
            "min_generated_share": self.copying.min_generated_share,
            "pca_dims": self.copying.pca_dims,
            "frechet_distance": self.frechet,
            "metric": self.metric,
            "copy_threshold": self.counts.threshold,
            "generated_copy_share": float(copies.double().mean()),
            "training_samples_copied": int((self.counts.count > 0).sum()),
            "within_tau": [
                {"tau": tau, "training_samples": int((row > 0).sum()), "pairs": int(row.sum())}
                for tau, row in zip(self.taus, self.within_tau, strict=True)
            ],
            "rho_median": float(finite.median()) if finite.numel() else float("nan"),
            "rho_above_1_share": float((rho > 1).double().mean()),
            "n_train": self.n_train,
            "n_test": self.n_test,
            "n_generated": self.n_generated,
        }


@torch.no_grad()
def generate_from_model_file(
    path: str, latent_dim: int, count: int, image_shape: tuple[int, ...], *, seed: int, device: torch.device
) -> torch.Tensor:
    """``count`` images from a generator file (TorchScript or ONNX, by content)
    z (B, latent_dim) -> images (B, C, H, W) in [0, 1]."""
    what = "generator"
    if latent_dim < 1 or count < 2:
        raise ValueError(f"{what}: latent size must be >= 1 and the sample count >= 2")
    what = f"generator {model_format(path)}" if Path(path).is_file() else what
    module = load_network(path, device, what, 2, 1 + len(image_shape))
    random = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, count, GENERATOR_BATCH):
        z = torch.randn(min(GENERATOR_BATCH, count - start), latent_dim, generator=random).to(device)
        try:
            images = module(z)
        except NetworkFileError:
            raise
        except Exception as error:  # a user's module can fail in any way; report it, don't crash
            shape = tuple(z.shape)
            raise ValueError(f"{what}: calling it on latents of shape {shape} failed: {error}") from error
        expected = (z.shape[0], *image_shape)
        if not isinstance(images, torch.Tensor) or tuple(images.shape) != expected:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"{what}: expected images of shape {expected} (B, C, H, W), got {got}")
        check_pixels("generated", images)
        parts.append(images.float())
    return torch.cat(parts)  # (count, C, H, W)


generate_from_torchscript = generate_from_model_file  # the name from before ONNX generators


def check_pixels(name: str, images: torch.Tensor) -> None:
    if not torch.isfinite(images).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    if float(images.min()) < 0.0 or float(images.max()) > 1.0:
        raise ValueError(f"{name}: pixel values must lie in [0, 1] like the training images")


def run_copy_test(
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    generated_images: torch.Tensor,
    *,
    embedding: EmbeddingConfig | None = None,
    copy: CopyTestConfig | None = None,
    copy_quantile: float = 0.05,
    taus: Sequence[float] | None = None,
) -> CopyTestReport:
    """All copying statistics of generated images (m, C, H, W) against train (N, ...) and test (n, ...).

    ``taus``: radii (in the report's metric) of the SPEC §5 per-training-sample counts; default the
    held-out-calibrated copy threshold."""
    copy = copy or CopyTestConfig()
    for name, images in (("test", test_images), ("generated", generated_images)):
        shape, train_shape = tuple(images.shape[1:]), tuple(train_images.shape[1:])
        if shape != train_shape:
            raise ValueError(f"{name}: images are shaped {shape}, training images {train_shape}")
    check_pixels("generated", generated_images)
    embedder = build_embedder(embedding or EmbeddingConfig(), train_images)
    train, test, generated = (embedder.embed(x) for x in (train_images, test_images, generated_images))
    references = prepare_references(train, copy.metric)
    generated_nearest = nearest(generated, references, metric=copy.metric, references_prepared=True)
    heldout_distance = nearest(test, references, metric=copy.metric, references_prepared=True).distance
    threshold = copy_threshold(heldout_distance, copy_quantile)
    radii = (threshold,) if taus is None else tuple(float(t) for t in taus)
    if not radii or any(not 0.0 <= t < float("inf") for t in radii):
        raise ValueError(f"tau: radii must be finite and >= 0, got {list(radii)}")
    return CopyTestReport(
        copying=data_copying_test(train, test, generated, copy),
        rho=nn_ratio(train, test, generated, copy.metric),
        frechet=frechet_distance(generated, test),
        counts=copy_counts(train.shape[0], generated_nearest, threshold), taus=radii,
        within_tau=within_tau_counts(train, generated, list(radii), metric=copy.metric),
        generated_nearest=generated_nearest, heldout_distance=heldout_distance, metric=copy.metric,
        n_train=train.shape[0], n_test=test.shape[0], n_generated=generated.shape[0],
    )  # fmt: skip
