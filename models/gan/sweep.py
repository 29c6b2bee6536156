"""A tau sweep of MR-GAN runs (SPEC §5), one independent unit per tau.

``build_feature_space`` embeds the training and held-out sets once; ``feature_space_state`` and
``restore_feature_space`` carry it between processes (the service computes it once per job, stores it as
an artifact and every tau unit restores it instead of retraining the embedder). ``run_tau_unit`` trains
one GAN and evaluates it: rejection rate over training, C_T against the held-out set, Fréchet distance in
the same feature space, per-generated-sample nearest-training distances (cosine, the rejection distance)
and two per-training-sample copy counts. ``within_tau_count`` is SPEC §5's count_tau(i): the generated
samples within tau of training sample i, a radius count, so near-duplicate training images are both
credited. ``copy_count`` credits only the nearest training sample: a generated sample copies it when their
cosine distance is at most the ``copy_quantile`` quantile (default 0.05) of the held-out -> training
distances, i.e. it is closer than 95% of fresh images are to their nearest training image; that threshold
does not depend on tau, so those counts are comparable across the sweep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from models.copying import (
    CellRow,
    CopyTestConfig,
    copy_counts,
    copy_threshold,
    data_copying_test,
    resolve_cells,
    within_tau_counts,
)
from models.embeddings import (
    Embedder,
    EmbeddingConfig,
    build_embedder,
    embedder_state,
    restore_embedder,
)
from models.frechet import frechet_distance
from models.gan.config import GanConfig, MrganConfig, SweepConfig, config_to_dict
from models.gan.train import MrganProgress, MrganRun, Rejector, sample_images, train_mrgan
from models.neighbours import nearest

GENERATION_SEED_OFFSET = 1_000_003  # evaluation latents must not replay the training latents


@dataclass(frozen=True)
class FeatureSpace:
    embedder: Embedder
    train: torch.Tensor  # (N, F) training features
    heldout: torch.Tensor  # (n, F) held-out features
    rejector: Rejector  # cosine search against the training features, kept on the device
    heldout_distance: torch.Tensor  # (n,) cosine distance of each held-out sample to its nearest training one


def build_feature_space(
    train_images: torch.Tensor, heldout_images: torch.Tensor, embedding: EmbeddingConfig
) -> FeatureSpace:
    """Embed training (N, C, H, W) and held-out (n, C, H, W) images once, on their device."""
    if tuple(train_images.shape[1:]) != tuple(heldout_images.shape[1:]):
        raise ValueError(
            f"heldout: images are shaped {tuple(heldout_images.shape[1:])}, "
            f"training images {tuple(train_images.shape[1:])}"
        )
    embedder = build_embedder(embedding, train_images)
    train, heldout = embedder.embed(train_images), embedder.embed(heldout_images)
    rejector = Rejector(embedder, train)
    distance = nearest(heldout, rejector.references, metric="cosine", references_prepared=True).distance
    return FeatureSpace(embedder, train, heldout, rejector, distance)


def feature_space_state(space: FeatureSpace, embedding: EmbeddingConfig) -> dict[str, Any]:
    """Tensors (CPU) and primitives that rebuild ``space`` (``torch.save``-able, loadable with
    ``weights_only=True``). Pixel features are the images themselves and are not stored."""
    state: dict[str, Any] = {
        "format": 1, "embedding": config_to_dict(embedding), "embedder": embedder_state(space.embedder),
        "heldout_distance": space.heldout_distance.detach().cpu(),
    }  # fmt: skip
    if embedding.kind != "pixels":
        state["train"], state["heldout"] = space.train.detach().cpu(), space.heldout.detach().cpu()
    return state


def restore_feature_space(
    state: dict[str, Any],
    train_images: torch.Tensor,
    heldout_images: torch.Tensor,
    embedding: EmbeddingConfig,
) -> FeatureSpace:
    """The FeatureSpace ``build_feature_space(train_images, heldout_images, embedding)`` returned when
    ``state`` was saved, on the images' device. ValueError when ``state`` is of another embedding."""
    if state.get("format") != 1 or state.get("embedding") != config_to_dict(embedding):
        raise ValueError("the stored feature space was built with another embedding")
    device = train_images.device
    embedder = restore_embedder(embedding, state["embedder"], train_images)
    if "train" in state:
        train, heldout = state["train"].to(device), state["heldout"].to(device)
    else:
        train, heldout = embedder.embed(train_images), embedder.embed(heldout_images)
    distance = state["heldout_distance"].to(device)
    if train.shape[0] != train_images.shape[0] or distance.shape[0] != heldout_images.shape[0]:
        raise ValueError("the stored feature space belongs to other images")
    return FeatureSpace(embedder, train, heldout, Rejector(embedder, train), distance)


def resolve_taus(space: FeatureSpace, sweep: SweepConfig) -> list[float]:
    """Explicit taus, then one tau per requested quantile of the held-out -> training distances."""
    quantiles = [float(torch.quantile(space.heldout_distance.double(), q)) for q in sweep.tau_quantiles]
    return [float(t) for t in sweep.taus] + quantiles


@dataclass
class TauResult:
    tau: float
    run: MrganRun
    c_t: float
    cells: list[CellRow]
    frechet: float
    copy_threshold: float
    generated: torch.Tensor  # (m, C, H, W) samples drawn after training
    generated_distance: torch.Tensor  # (m,) cosine distance to the nearest training sample
    generated_nearest: torch.Tensor  # (m,) index of that training sample
    within_tau_count: torch.Tensor  # (N,) SPEC §5 count_tau(i): generated samples within tau of sample i
    copy_count: torch.Tensor  # (N,) nearest-credit count: generated samples with NN i within copy_threshold
    closest: torch.Tensor  # (N,) distance of the closest generated sample whose NN is i (inf: none)
    seconds: float

    @property
    def within_tau_share(self) -> float:
        """Share of generated samples with d(x) <= tau (what rejection targets)."""
        return float((self.generated_distance <= self.tau).double().mean())

    def summary(self) -> dict[str, Any]:
        """JSON-safe numbers of this unit."""
        return {
            "tau": self.tau,
            "rejection_rate": self.run.rejection_rate,
            "fakes_scored": self.run.fakes_scored,
            "redraws": self.run.redraws,
            "skipped_generator_steps": self.run.skipped_generator_steps,
            "c_t": self.c_t,
            "cells_kept": sum(row.kept for row in self.cells),
            "frechet_distance": self.frechet,
            "copy_threshold": self.copy_threshold,
            "generated_copy_share": float((self.generated_distance <= self.copy_threshold).double().mean()),
            "within_tau_share": self.within_tau_share,
            "training_samples_within_tau": int((self.within_tau_count > 0).sum()),
            "median_generated_distance": float(self.generated_distance.median()),
            "n_generated": int(self.generated.shape[0]),
            "train_seconds": self.run.seconds,
            "seconds": self.seconds,
            "gan_config": config_to_dict(self.run.gan),
            "train_config": config_to_dict(self.run.train),
        }


def run_tau_unit(
    train_images: torch.Tensor,
    space: FeatureSpace,
    tau: float,
    gan: GanConfig,
    train_cfg: MrganConfig,
    sweep: SweepConfig,
    *,
    progress: Callable[[MrganProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TauResult:
    """Train one MR-GAN with threshold ``tau`` and evaluate it against the held-out set."""
    started = time.perf_counter()
    run = train_mrgan(
        train_images, gan, train_cfg, tau, space.rejector, progress=progress, should_stop=should_stop
    )
    count = sweep.n_generated or space.heldout.shape[0]
    generated = sample_images(
        run.generator, count, gan.latent_dim, seed=train_cfg.seed + GENERATION_SEED_OFFSET,
        device=train_images.device,
    )  # fmt: skip
    features = space.embedder.embed(generated)  # (m, F)
    neighbours = nearest(features, space.rejector.references, metric="cosine", references_prepared=True)
    cells = resolve_cells(sweep.cells, space.heldout.shape[0])
    copying = data_copying_test(
        space.train, space.heldout, features,
        CopyTestConfig(cells=cells, metric=sweep.ct_metric, seed=train_cfg.seed),
    )  # fmt: skip
    threshold = copy_threshold(space.heldout_distance, sweep.copy_quantile)
    counts = copy_counts(space.train.shape[0], neighbours, threshold)
    return TauResult(
        tau=tau, run=run, c_t=copying.c_t, cells=copying.cells,
        frechet=frechet_distance(features, space.heldout), copy_threshold=threshold,
        generated=generated, generated_distance=neighbours.distance, generated_nearest=neighbours.index,
        within_tau_count=within_tau_counts(space.train, features, [tau], metric="cosine")[0],
        copy_count=counts.count, closest=counts.closest, seconds=time.perf_counter() - started,
    )  # fmt: skip


def run_sweep(
    train_images: torch.Tensor,
    heldout_images: torch.Tensor,
    gan: GanConfig,
    train_cfg: MrganConfig,
    sweep: SweepConfig,
    embedding: EmbeddingConfig,
    *,
    progress: Callable[[float, MrganProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[TauResult]:
    """The whole sweep in-process (local CLI, notebooks): one unit per tau, in order."""
    space = build_feature_space(train_images, heldout_images, embedding)
    results = []
    for tau in resolve_taus(space, sweep):
        report = None if progress is None else (lambda event, tau=tau: progress(tau, event))
        unit = run_tau_unit(
            train_images, space, tau, gan, train_cfg, sweep, progress=report, should_stop=should_stop
        )
        results.append(unit)
    return results
