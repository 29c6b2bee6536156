"""Single-model VAEs (plain nn.Modules): the reference MLP and the DCGAN-style conv VAE (SPEC §2).

These are what the ``sequential`` strategy trains, and what the batched ensemble is stacked from
(``models.ensemble``), so both strategies start from the very same initial weights.

Conv geometry (docs/science.md): the reference network takes 32x32 inputs through four stride-2
stages F, 2F, 4F, 8F down to 2x2, and its decoder starts from the latent as a 1x1 map with a
kernel-2 transposed convolution to 2x2. Other sizes keep that pattern: the canvas is the smallest
power-of-two square side >= max(H, W) (at least 4, at most 128), with log2(side) - 1 stages of
F * 2^i filters down to 2x2 (8x8 digits: 2 stages; 64x64: 5 stages up to 16F). Images smaller than
the canvas are zero-padded, centred, for the encoder and the decoder output is cropped back, so
padding never enters a log-likelihood. ``ModelConfig.pad_to`` instead pads the *data* (the
paper's MNIST setup: 28x28 padded to 32x32 and scored whole), see ``model_input_shape``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from models.config import ModelConfig
from models.likelihoods import GAUSSIAN_CONST_INIT_LOG_VAR, PARAM_PLANES

MIN_CONV_SIDE = 4
MAX_CONV_SIDE = 128
LEAKY_SLOPE = 0.2
KERNEL, STRIDE, PADDING = 4, 2, 1  # every conv stage halves (or doubles) the resolution
BOTTOM_SIDE = 2  # the encoder ends at 2x2; the decoder starts from 1x1 with a kernel-2 ConvT


@dataclass(frozen=True)
class ConvGeometry:
    channels: int
    height: int
    width: int
    side: int  # padded square canvas
    stages: int  # stride-2 stages from side down to 2

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
    side = max(MIN_CONV_SIDE, 1 << math.ceil(math.log2(longest)))
    return ConvGeometry(channels, height, width, side, int(math.log2(side)) - 1)


def model_input_shape(cfg: ModelConfig, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The (C, H, W) the model reads: the image, or the image zero-padded to ``pad_to`` (centred)."""
    channels, height, width = image_shape
    if cfg.pad_to is None:
        return image_shape
    if max(height, width) > cfg.pad_to:
        raise ValueError(f"pad_to: the images are {height}x{width}, larger than pad_to={cfg.pad_to}")
    return channels, cfg.pad_to, cfg.pad_to


def pad_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., h, w) -> (..., height, width), zero padding centred (the extra pixel, if odd, after)."""
    top, left = (height - images.shape[-2]) // 2, (width - images.shape[-1]) // 2
    bottom, right = height - images.shape[-2] - top, width - images.shape[-1] - left
    return nn.functional.pad(images, (left, right, top, bottom))


def crop_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of ``pad_images``: (..., H, W) -> the centred (..., height, width)."""
    top, left = (images.shape[-2] - height) // 2, (images.shape[-1] - width) // 2
    return images[..., top : top + height, left : left + width]


def pad_to_canvas(x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """(..., C, H, W) -> (..., C, side, side), zero padding centred."""
    return pad_images(x, geometry.side, geometry.side)


def crop_from_canvas(x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """(..., side, side) -> (..., H, W)."""
    return crop_images(x, geometry.height, geometry.width)


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
    if likelihood != "gaussian_const":
        return None
    return nn.Parameter(torch.tensor(GAUSSIAN_CONST_INIT_LOG_VAR))  # the reference's initial value


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
    """The reference DCGAN-style conv VAE (SPEC §2), every convolution without bias.

    encoder: Conv(C->F, k4 s2 p1) LeakyReLU(0.2), then per stage Conv(k4 s2 p1) BatchNorm LeakyReLU(0.2)
             with doubling filters down to 2x2; mean and log-variance heads Linear(top*2*2 -> Z)
    decoder: z as (Z, 1, 1): ConvT(Z->top, k2 s1 p0) BatchNorm ReLU, then per stage ConvT(k4 s2 p1)
             BatchNorm ReLU with halving filters, the last one ConvT(F->P*C, k4 s2 p1) alone
    """

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.geometry = conv_geometry(image_shape)
        self.latent = cfg.latent
        self.planes = PARAM_PLANES[cfg.likelihood]
        channels = conv_channels(cfg.base_filters, self.geometry.stages)
        top = channels[-1]
        enc_in = [self.geometry.channels, *channels[:-1]]
        self.encoder_convs = nn.ModuleList(
            nn.Conv2d(a, b, KERNEL, STRIDE, PADDING, bias=False)
            for a, b in zip(enc_in, channels, strict=True)
        )
        self.encoder_norms = nn.ModuleList(nn.BatchNorm2d(b) for b in channels[1:])
        flat = top * BOTTOM_SIDE * BOTTOM_SIDE
        self.encoder_mean = nn.Linear(flat, cfg.latent)
        self.encoder_log_var = nn.Linear(flat, cfg.latent)
        self.decoder_input = nn.ConvTranspose2d(cfg.latent, top, BOTTOM_SIDE, 1, 0, bias=False)
        self.decoder_input_norm = nn.BatchNorm2d(top)
        dec_out = [*reversed(channels[:-1]), self.planes * self.geometry.channels]
        dec_in = list(reversed(channels))
        self.decoder_convs = nn.ModuleList(
            nn.ConvTranspose2d(a, b, KERNEL, STRIDE, PADDING, bias=False)
            for a, b in zip(dec_in, dec_out, strict=True)
        )
        self.decoder_norms = nn.ModuleList(nn.BatchNorm2d(b) for b in dec_out[:-1])
        # conv, norm and ReLU outputs of every stage but the last, which is the conv output alone
        sides = [BOTTOM_SIDE * 2 ** (i + 1) for i in range(len(dec_out))]
        inner = top * BOTTOM_SIDE**2 + sum(c * s * s for c, s in zip(dec_out[:-1], sides[:-1], strict=True))
        self.decoder_floats = 3 * inner + dec_out[-1] * sides[-1] ** 2
        self.const_log_var = _const_log_var(cfg.likelihood)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = pad_to_canvas(x, self.geometry)  # (B, C, side, side)
        for i, conv in enumerate(self.encoder_convs):
            h = conv(h)
            if i > 0:
                h = self.encoder_norms[i - 1](h)
            h = nn.functional.leaky_relu(h, LEAKY_SLOPE)
        h = h.flatten(1)  # (B, top*2*2)
        return self.encoder_mean(h), self.encoder_log_var(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.decoder_input(z[:, :, None, None])  # (B, top, 2, 2)
        h = torch.relu(self.decoder_input_norm(h))
        for i, conv in enumerate(self.decoder_convs):
            h = conv(h)
            if i < len(self.decoder_norms):
                h = torch.relu(self.decoder_norms[i](h))
        h = crop_from_canvas(h, self.geometry)  # (B, P*C, H, W), channel = p*C + c
        return h.unflatten(1, (self.planes, -1)).flatten(2)  # (B, P, D)


def build_vae(cfg: ModelConfig, image_shape: tuple[int, int, int], init_seed: int) -> VAE:
    """A freshly initialised VAE whose weights depend only on (cfg, image_shape, init_seed).

    ``image_shape`` is the images' (C, H, W); with ``cfg.pad_to`` the model is built for the padded
    shape (passing the padded shape itself gives the same model)."""
    shape = model_input_shape(cfg, image_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        if cfg.arch == "mlp":
            return MLPVAE(cfg, shape)
        return ConvVAE(cfg, shape)


def count_parameters(cfg: ModelConfig, image_shape: tuple[int, int, int]) -> int:
    """Learned parameters of one fold model (batch-norm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in build_vae(cfg, image_shape, 0).parameters())
