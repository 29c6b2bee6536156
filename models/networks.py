"""Single-model VAEs (plain nn.Modules): the reference MLP and the DCGAN-style conv VAE (SPEC §2).

These are what the ``sequential`` strategy trains, and what the batched ensemble is stacked from
(``models.ensemble``), so both strategies start from the very same initial weights.

Conv geometry: the conv VAE halves the resolution per stage down to 4x4, so it works on a square
power-of-two canvas of side >= 16. Smaller or odd-sized images are zero-padded, centred, to the
next such side (8x8 -> 16, 28x28 -> 32); the decoder output is cropped back to the image before
scoring, so padding never enters a log-likelihood. Sides above 128 are rejected.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from models.config import ModelConfig
from models.likelihoods import PARAM_PLANES

MAX_CONV_SIDE = 128
LEAKY_SLOPE = 0.2
KERNEL, STRIDE, PADDING = 4, 2, 1  # every conv stage halves (or doubles) the resolution


@dataclass(frozen=True)
class ConvGeometry:
    channels: int
    height: int
    width: int
    side: int  # padded square canvas
    stages: int  # stride-2 stages from side down to 4

    @property
    def pad_top(self) -> int:
        return (self.side - self.height) // 2

    @property
    def pad_left(self) -> int:
        return (self.side - self.width) // 2


def conv_geometry(image_shape: tuple[int, int, int]) -> ConvGeometry:
    channels, height, width = image_shape
    longest = max(height, width)
    if longest > MAX_CONV_SIDE:
        raise ValueError(
            f"image_shape: the conv VAE handles images up to {MAX_CONV_SIDE} px; got {height}x{width}"
        )
    side = max(16, 1 << math.ceil(math.log2(longest)))
    return ConvGeometry(channels, height, width, side, int(math.log2(side)) - 2)


def pad_to_canvas(x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """(..., C, H, W) -> (..., C, side, side), zero padding centred."""
    top, left = geometry.pad_top, geometry.pad_left
    bottom = geometry.side - geometry.height - top
    right = geometry.side - geometry.width - left
    return nn.functional.pad(x, (left, right, top, bottom))


def crop_from_canvas(x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """(..., side, side) -> (..., H, W)."""
    top, left = geometry.pad_top, geometry.pad_left
    return x[..., top : top + geometry.height, left : left + geometry.width]


def split_posterior(encoded: torch.Tensor, latent: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder head (..., 2Z) -> mean (..., Z), log-variance (..., Z)."""
    return encoded[..., :latent], encoded[..., latent:]


class VAE(nn.Module):
    """Common surface: encode images, decode latents into likelihood parameter planes."""

    latent: int
    planes: int
    decoder_floats: int  # activation floats one decoded latent occupies (memory planning of IS)
    const_log_var: nn.Parameter | None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B,C,H,W) -> 2 x (B,Z)
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (B,Z) -> (B,P,D)
        raise NotImplementedError


def _const_log_var(likelihood: str) -> nn.Parameter | None:
    return nn.Parameter(torch.zeros(())) if likelihood == "gaussian_const" else None


class MLPVAE(VAE):
    """MLP encoder D -> hidden... -> 2Z and mirrored decoder Z -> reversed(hidden) -> P*D, ReLU."""

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.latent = cfg.latent
        self.planes = PARAM_PLANES[cfg.likelihood]
        self.pixels = math.prod(image_shape)
        enc_widths = [self.pixels, *cfg.hidden]
        dec_widths = [cfg.latent, *reversed(cfg.hidden)]
        self.encoder_layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(enc_widths))
        self.encoder_head = nn.Linear(enc_widths[-1], 2 * cfg.latent)
        self.decoder_layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dec_widths))
        self.decoder_head = nn.Linear(dec_widths[-1], self.planes * self.pixels)
        self.decoder_floats = 2 * sum(cfg.hidden) + self.planes * self.pixels
        self.const_log_var = _const_log_var(cfg.likelihood)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.flatten(1)  # (B, D)
        for layer in self.encoder_layers:
            h = torch.relu(layer(h))
        return split_posterior(self.encoder_head(h), self.latent)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for layer in self.decoder_layers:
            h = torch.relu(layer(h))
        return self.decoder_head(h).unflatten(-1, (self.planes, self.pixels))  # (B, P, D)


def conv_channels(base_filters: int, stages: int) -> list[int]:
    """Filters per encoder stage: base, 2 base, 4 base, ... (the decoder runs them in reverse)."""
    return [base_filters * 2**i for i in range(stages)]


class ConvVAE(VAE):
    """DCGAN-style conv VAE: stride-2 4x4 convs with batch norm and LeakyReLU(0.2) in the encoder,
    a linear bottleneck at 4x4, transposed convs with batch norm and ReLU in the decoder."""

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.geometry = conv_geometry(image_shape)
        self.latent = cfg.latent
        self.planes = PARAM_PLANES[cfg.likelihood]
        channels = conv_channels(cfg.base_filters, self.geometry.stages)
        top = channels[-1]
        enc_in = [self.geometry.channels, *channels[:-1]]
        self.encoder_convs = nn.ModuleList(
            nn.Conv2d(a, b, KERNEL, STRIDE, PADDING, bias=(i == 0))
            for i, (a, b) in enumerate(zip(enc_in, channels, strict=True))
        )
        self.encoder_norms = nn.ModuleList(nn.BatchNorm2d(b) for b in channels[1:])
        self.encoder_head = nn.Linear(top * 16, 2 * cfg.latent)
        self.decoder_input = nn.Linear(cfg.latent, top * 16)
        self.decoder_input_norm = nn.BatchNorm2d(top)
        dec_out = [*reversed(channels[:-1]), self.planes * self.geometry.channels]
        dec_in = list(reversed(channels))
        last = len(dec_out) - 1
        self.decoder_convs = nn.ModuleList(
            nn.ConvTranspose2d(a, b, KERNEL, STRIDE, PADDING, bias=(i == last))
            for i, (a, b) in enumerate(zip(dec_in, dec_out, strict=True))
        )
        self.decoder_norms = nn.ModuleList(nn.BatchNorm2d(b) for b in dec_out[:-1])
        # linear + norm at 4x4, then conv + norm + ReLU outputs per stage (the last one has no norm)
        stage_floats = sum(c * (8 * 2**i) ** 2 for i, c in enumerate(dec_out))
        self.decoder_floats = 3 * top * 16 + 3 * stage_floats
        self.const_log_var = _const_log_var(cfg.likelihood)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = pad_to_canvas(x, self.geometry)  # (B, C, side, side)
        for i, conv in enumerate(self.encoder_convs):
            h = conv(h)
            if i > 0:
                h = self.encoder_norms[i - 1](h)
            h = nn.functional.leaky_relu(h, LEAKY_SLOPE)
        return split_posterior(self.encoder_head(h.flatten(1)), self.latent)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.decoder_input(z).unflatten(-1, (-1, 4, 4))  # (B, top, 4, 4)
        h = torch.relu(self.decoder_input_norm(h))
        for i, conv in enumerate(self.decoder_convs):
            h = conv(h)
            if i < len(self.decoder_norms):
                h = torch.relu(self.decoder_norms[i](h))
        h = crop_from_canvas(h, self.geometry)  # (B, P*C, H, W), channel = p*C + c
        return h.unflatten(1, (self.planes, -1)).flatten(2)  # (B, P, D)


def build_vae(cfg: ModelConfig, image_shape: tuple[int, int, int], init_seed: int) -> VAE:
    """A freshly initialised VAE whose weights depend only on (cfg, image_shape, init_seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        if cfg.arch == "mlp":
            return MLPVAE(cfg, image_shape)
        return ConvVAE(cfg, image_shape)
