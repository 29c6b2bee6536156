"""GAN generators and discriminators: a small MLP GAN for tiny images (8x8 digits) and a DCGAN-style pair
for 28-32 px images. Generators end in a sigmoid so samples live in [0, 1] like every ImageSet; the
discriminators output one unnormalised score per image (hinge loss), without batch norm.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.gan.config import GanConfig

LEAK = 0.2


class MlpGenerator(nn.Module):
    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        self.image_shape = cfg.image_shape
        # Batch norm in G: on digits at the paper's lr (2e-4) it takes the Fréchet distance after 3000 steps
        # from 10.2 to 0.64 (docs/science.md).
        self.net = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.width), nn.BatchNorm1d(cfg.width), nn.ReLU(),
            nn.Linear(cfg.width, cfg.width), nn.BatchNorm1d(cfg.width), nn.ReLU(),
            nn.Linear(cfg.width, math.prod(cfg.image_shape)),
        )  # fmt: skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z)).view(z.shape[0], *self.image_shape)  # (B, C, H, W)


class MlpDiscriminator(nn.Module):
    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(math.prod(cfg.image_shape), cfg.width), nn.LeakyReLU(LEAK),
            nn.Linear(cfg.width, cfg.width), nn.LeakyReLU(LEAK),
            nn.Linear(cfg.width, 1),
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.flatten(1)).squeeze(1)  # (B,)


class DcganGenerator(nn.Module):
    """z -> (2w, H/4, H/4) -> (w, H/2, H/2) -> (C, H, W) with transposed convolutions."""

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        channels, height, _ = cfg.image_shape
        self.start = height // 4
        self.base = 2 * cfg.width
        self.project = nn.Sequential(
            nn.Linear(cfg.latent_dim, self.base * self.start * self.start),
            nn.BatchNorm1d(self.base * self.start * self.start), nn.ReLU(),
        )  # fmt: skip
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(self.base, cfg.width, 4, 2, 1), nn.BatchNorm2d(cfg.width), nn.ReLU(),
            nn.ConvTranspose2d(cfg.width, channels, 4, 2, 1),
        )  # fmt: skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(z.shape[0], self.base, self.start, self.start)  # (B, 2w, H/4, W/4)
        return torch.sigmoid(self.upsample(h))  # (B, C, H, W)


class DcganDiscriminator(nn.Module):
    """(C, H, W) -> (w, H/2, W/2) -> (2w, H/4, W/4) -> score, strided convolutions, LeakyReLU 0.2."""

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        channels, height, _ = cfg.image_shape
        side = height // 4
        self.net = nn.Sequential(
            nn.Conv2d(channels, cfg.width, 4, 2, 1), nn.LeakyReLU(LEAK),
            nn.Conv2d(cfg.width, 2 * cfg.width, 4, 2, 1), nn.LeakyReLU(LEAK),
            nn.Flatten(), nn.Linear(2 * cfg.width * side * side, 1),
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).squeeze(1)  # (B,)


def build_gan(cfg: GanConfig) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) for the config, initialised from the current torch seed."""
    if cfg.arch == "dcgan":
        return DcganGenerator(cfg), DcganDiscriminator(cfg)
    return MlpGenerator(cfg), MlpDiscriminator(cfg)
