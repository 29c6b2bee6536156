"""MR-GAN training (SPEC §5): hinge-loss GAN with memorization rejection.

Each generator step draws a batch of fakes, computes d(x) = cosine distance of each fake's embedding to its
nearest training embedding (one matrix product against the training embeddings kept on the device) and
drops fakes with d(x) <= tau from the generator loss, which averages over the survivors. When every fake is
rejected a fresh batch is drawn, at most ``max_redraws`` times; if all of those are rejected too, the
generator step is skipped (counted in ``skipped_generator_steps``) — the documented fallback. In mode "GD"
rejected fakes are also dropped from the discriminator's fake term (a D step whose fakes are all rejected
trains on the real term alone). tau <= 0 is plain GAN training and computes no distances.

Randomness (batch order, latents) comes from one CPU generator seeded with ``cfg.seed`` and moved to the
device, and the networks are initialised from the same seed: a run is deterministic on a given device.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional

from models.embeddings import Embedder
from models.gan.config import Cancelled, GanConfig, MrganConfig, config_to_dict
from models.gan.networks import build_gan
from models.neighbours import nearest, prepare_references

CHECK_EVERY = 25  # generator steps between should_stop polls and progress events


@dataclass(frozen=True)
class MrganProgress:
    step: int
    steps: int
    rejection_rate: float


class Rejector:
    """d(x) for batches of images: cosine distance to the nearest training embedding (SPEC §5)."""

    def __init__(self, embedder: Embedder, train_features: torch.Tensor) -> None:
        self.embedder = embedder
        self.references = prepare_references(train_features, "cosine")  # (N, F) unit rows, on the device

    @torch.no_grad()
    def distance(self, images: torch.Tensor) -> torch.Tensor:
        features = self.embedder.embed(images.detach())  # (B, F)
        return nearest(features, self.references, metric="cosine", references_prepared=True).distance  # (B,)


@dataclass
class MrganRun:
    generator: nn.Module
    gan: GanConfig
    train: MrganConfig
    tau: float
    fakes_scored: int = 0  # fakes whose d(x) was computed in generator steps (redraws included)
    fakes_rejected: int = 0
    redraws: int = 0
    skipped_generator_steps: int = 0
    generator_loss: list[float] = field(default_factory=list)  # per generator step (NaN when skipped)
    discriminator_loss: list[float] = field(default_factory=list)  # per generator step (mean of its D steps)
    seconds: float = 0.0

    @property
    def rejection_rate(self) -> float:
        """Share of scored generator-step fakes that were rejected over the whole training run."""
        return self.fakes_rejected / self.fakes_scored if self.fakes_scored else 0.0

    def checkpoint(self) -> dict[str, object]:
        """Generator weights plus the configs that made them (loadable with torch.load(weights_only=True))."""
        return {
            "gan_config": config_to_dict(self.gan),
            "train_config": config_to_dict(self.train),
            "tau": self.tau,
            "generator": self.generator.state_dict(),
        }


class _Trainer:
    def __init__(self, train_images: torch.Tensor, gan: GanConfig, cfg: MrganConfig, tau: float,
                 rejector: Rejector | None) -> None:  # fmt: skip
        self.images, self.cfg, self.tau = train_images, cfg, tau
        self.rejector = rejector if tau > 0 else None
        self.device = train_images.device
        torch.manual_seed(cfg.seed)
        generator, self.discriminator = (net.to(self.device) for net in build_gan(gan))
        self.run = MrganRun(generator=generator, gan=gan, train=cfg, tau=tau)
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.random = torch.Generator().manual_seed(cfg.seed)
        self.latent_dim = gan.latent_dim

    def _latents(self) -> torch.Tensor:
        z = torch.randn(self.cfg.batch_size, self.latent_dim, generator=self.random)
        return z.to(self.device)  # (B, Z)

    def _real_batch(self) -> torch.Tensor:
        index = torch.randint(self.images.shape[0], (self.cfg.batch_size,), generator=self.random)
        return self.images[index.to(self.device)]  # (B, C, H, W)

    def _survivors(self, fakes: torch.Tensor) -> torch.Tensor:
        """Boolean mask (B,) of fakes that are not rejected."""
        if self.rejector is None:
            return torch.ones(fakes.shape[0], dtype=torch.bool, device=fakes.device)
        return self.rejector.distance(fakes) > self.tau

    def discriminator_step(self) -> float:
        real = self._real_batch()
        with torch.no_grad():
            fakes = self.run.generator(self._latents())
        if self.cfg.mode == "GD":
            fakes = fakes[self._survivors(fakes)]
        loss = functional.relu(1.0 - self.discriminator(real)).mean()
        if fakes.shape[0] > 0:
            loss = loss + functional.relu(1.0 + self.discriminator(fakes)).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return float(loss.detach())

    def generator_step(self) -> float:
        for attempt in range(self.cfg.max_redraws + 1):
            fakes = self.run.generator(self._latents())  # (B, C, H, W), with gradients
            keep = self._survivors(fakes)
            if self.rejector is not None:
                self.run.fakes_scored += keep.numel()
                self.run.fakes_rejected += int((~keep).sum())
            if keep.any():
                self.run.redraws += attempt
                loss = -self.discriminator(fakes[keep]).mean()
                self.opt_g.zero_grad(set_to_none=True)
                loss.backward()
                self.opt_g.step()
                return float(loss.detach())
        self.run.redraws += self.cfg.max_redraws
        self.run.skipped_generator_steps += 1
        return float("nan")


def train_mrgan(
    train_images: torch.Tensor,
    gan: GanConfig,
    cfg: MrganConfig,
    tau: float,
    rejector: Rejector | None,
    *,
    progress: Callable[[MrganProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> MrganRun:
    """Train one GAN on images (N, C, H, W) in [0, 1] with rejection threshold ``tau`` (cosine distance)."""
    if tuple(train_images.shape[1:]) != gan.image_shape:
        shape = tuple(train_images.shape[1:])
        raise ValueError(f"images are shaped {shape}, the GAN expects {gan.image_shape}")
    if tau > 0 and rejector is None:
        raise ValueError("tau > 0 needs a rejector (embedding of the training set)")
    trainer = _Trainer(train_images, gan, cfg, tau, rejector)
    started = time.perf_counter()
    for step in range(cfg.steps):
        if step % CHECK_EVERY == 0 and should_stop is not None and should_stop():
            raise Cancelled(f"MR-GAN training stopped at step {step}")
        d_losses = [trainer.discriminator_step() for _ in range(cfg.d_steps)]
        trainer.run.discriminator_loss.append(sum(d_losses) / len(d_losses))
        trainer.run.generator_loss.append(trainer.generator_step())
        if progress is not None and ((step + 1) % CHECK_EVERY == 0 or step + 1 == cfg.steps):
            progress(MrganProgress(step=step + 1, steps=cfg.steps, rejection_rate=trainer.run.rejection_rate))
    trainer.run.seconds = time.perf_counter() - started
    trainer.run.generator.eval()
    return trainer.run


@torch.no_grad()
def sample_images(
    generator: nn.Module, count: int, latent_dim: int, *, seed: int, device: torch.device, batch: int = 1024
) -> torch.Tensor:
    """``count`` images (count, C, H, W) from a generator in eval mode; latents from a seeded CPU RNG."""
    random = torch.Generator().manual_seed(seed)
    generator.eval()
    parts = []
    for start in range(0, count, batch):
        z = torch.randn(min(batch, count - start), latent_dim, generator=random).to(device)
        parts.append(generator(z))
    return torch.cat(parts)
