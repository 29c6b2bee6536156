"""What a job will cost, estimated before it exists: parameters per model and floating-point work.

Everything here is arithmetic on the request and the dataset's facts (no torch: the API process does
not load it for a VAE audit). The networks are counted layer by layer exactly as models/networks.py,
models/gan/networks.py and models/embeddings.py build them (tests/service/test_limits.py checks the
parameter and multiply-add counts against torch's own on the real modules).

Work is counted in FLOPs: 1 multiply-add (MAC) of a linear or convolution layer = 2 FLOPs, and a
training step costs 3 forward passes (the forward, and the backward for inputs and for weights).
Element-wise work (activations, batch norm, likelihoods, the optimizer) is left out: a few FLOPs per
activation, small next to the layers. Nearest-neighbour searches count 2 FLOPs per coordinate of each
pair compared. Where a cost cannot be known before the job runs (a TorchScript or ONNX generator or feature
extractor) it is not counted; the docs say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

PLANES = {"bernoulli": 1, "gaussian_diag": 2, "gaussian_const": 1, "logistic": 2}  # models.likelihoods
MAX_CONV_SIDE = 128  # models.networks
MIN_CONV_SIDE = 4  # models.networks
BOTTOM_SIDE = 2  # models.networks: the encoder ends at 2x2
KERNEL_TAPS = 16  # every conv of the VAEs and DCGANs is 4x4
AUTOENCODER_HIDDEN = 256  # models.embeddings.EmbeddingConfig.hidden_dim
PCA_DIMS = 64  # models.copying.CopyTestConfig.pca_dims
KMEANS_ITERATIONS = 100  # models.copying.CopyTestConfig.kmeans_max_iters
TRAIN_PASSES = 3  # forward + backward (inputs) + backward (weights)
Shape = tuple[int, int, int]  # (C, H, W)


@dataclass(frozen=True)
class NetCost:
    """One network: its parameters and the multiply-adds of one sample's forward pass."""

    params: int
    macs: int

    def __add__(self, other: NetCost) -> NetCost:
        return NetCost(self.params + other.params, self.macs + other.macs)


ZERO = NetCost(0, 0)


def linear(fan_in: int, fan_out: int, bias: bool = True) -> NetCost:
    return NetCost(fan_in * fan_out + (fan_out if bias else 0), fan_in * fan_out)


def conv(c_in: int, c_out: int, out_side: int, bias: bool) -> NetCost:
    """A 4x4 stride-2 convolution producing out_side x out_side."""
    weights = c_in * c_out * KERNEL_TAPS
    return NetCost(weights + (c_out if bias else 0), weights * out_side * out_side)


def conv_transpose(c_in: int, c_out: int, in_side: int, bias: bool) -> NetCost:
    """A 4x4 stride-2 transposed convolution reading in_side x in_side (each input scatters 16 taps)."""
    weights = c_in * c_out * KERNEL_TAPS
    return NetCost(weights + (c_out if bias else 0), weights * in_side * in_side)


def batch_norm(channels: int) -> NetCost:
    return NetCost(2 * channels, 0)  # weight and bias; running statistics are buffers


@dataclass(frozen=True)
class VaeCost:
    encoder: NetCost
    decoder: NetCost
    extra_params: int = 0  # gaussian_const: one learned log-variance

    @property
    def params(self) -> int:
        return self.encoder.params + self.decoder.params + self.extra_params


def mlp_vae_cost(hidden: Sequence[int], latent: int, likelihood: str, pixels: int) -> VaeCost:
    """models.networks.MLPVAE: D -> hidden... -> 2Z, and Z -> reversed(hidden) -> P*D."""
    encoder, decoder = ZERO, ZERO
    for a, b in pairwise([pixels, *hidden]):
        encoder += linear(a, b)
    encoder += linear(hidden[-1], 2 * latent)
    for a, b in pairwise([latent, *reversed(hidden)]):
        decoder += linear(a, b)
    decoder += linear(hidden[0], PLANES[likelihood] * pixels)
    return VaeCost(encoder, decoder, int(likelihood == "gaussian_const"))


def conv_canvas(image_shape: Shape) -> tuple[int, int]:
    """(side, stages) of models.networks.conv_geometry: a power-of-two square canvas >= 4, halved to 2."""
    longest = max(image_shape[1], image_shape[2])
    if longest > MAX_CONV_SIDE:
        raise ValueError(f"arch: the conv VAE handles images up to {MAX_CONV_SIDE} px; got "
                         f"{image_shape[1]}x{image_shape[2]}")  # fmt: skip
    side = max(MIN_CONV_SIDE, 1 << (longest - 1).bit_length())
    return side, side.bit_length() - 2


def conv_vae_cost(image_shape: Shape, base_filters: int, latent: int, likelihood: str) -> VaeCost:
    """models.networks.ConvVAE (SPEC §2): bias-free stride-2 convs down to 2x2, linear mean and log-variance
    heads, a kernel-2 transposed conv from the 1x1 latent to 2x2, then stride-2 transposed convs back."""
    channels_in = image_shape[0]
    side, stages = conv_canvas(image_shape)
    widths = [base_filters * 2**i for i in range(stages)]
    top, bottom = widths[-1], BOTTOM_SIDE * BOTTOM_SIDE
    encoder = ZERO
    for i, (a, b) in enumerate(zip([channels_in, *widths[:-1]], widths, strict=True)):
        encoder += conv(a, b, side >> (i + 1), bias=False) + (batch_norm(b) if i > 0 else ZERO)
    encoder += linear(top * bottom, 2 * latent)  # the mean and log-variance heads together
    decoder = NetCost(latent * top * bottom, latent * top * bottom) + batch_norm(top)  # ConvT k2 from 1x1
    outs = [*reversed(widths[:-1]), PLANES[likelihood] * channels_in]
    for i, (a, b) in enumerate(zip(reversed(widths), outs, strict=True)):
        last = i == len(outs) - 1
        decoder += conv_transpose(a, b, BOTTOM_SIDE << i, bias=False) + (ZERO if last else batch_norm(b))
    return VaeCost(encoder, decoder, int(likelihood == "gaussian_const"))


def vae_cost(model: dict[str, Any], image_shape: Shape) -> VaeCost:
    """The VAE of a request's ``model`` section on images (C, H, W), padded as ``pad_to`` says."""
    if model.get("pad_to") is not None:  # models.networks.model_input_shape
        image_shape = (image_shape[0], model["pad_to"], model["pad_to"])
    if model["arch"] == "conv":
        return conv_vae_cost(image_shape, model["base_filters"], model["latent"], model["likelihood"])
    return mlp_vae_cost(model["hidden"], model["latent"], model["likelihood"], math.prod(image_shape))


def gan_cost(arch: str, image_shape: Shape, latent_dim: int, width: int) -> tuple[NetCost, NetCost]:
    """(generator, discriminator) of models.gan.networks.build_gan."""
    channels, height, _ = image_shape
    if arch == "dcgan":
        start, base = height // 4, 2 * width
        generator = (linear(latent_dim, base * start * start) + batch_norm(base * start * start)
                     + conv_transpose(base, width, start, bias=True) + batch_norm(width)
                     + conv_transpose(width, channels, 2 * start, bias=True))  # fmt: skip
        discriminator = (conv(channels, width, height // 2, bias=True)
                         + conv(width, 2 * width, height // 4, bias=True)
                         + linear(2 * width * start * start, 1))  # fmt: skip
        return generator, discriminator
    pixels = math.prod(image_shape)
    generator = linear(latent_dim, width) + batch_norm(width) + linear(width, width) + batch_norm(width)
    generator += linear(width, pixels)
    discriminator = linear(pixels, width) + linear(width, width) + linear(width, 1)
    return generator, discriminator


def autoencoder_encoder(pixels: int, latent_dim: int) -> NetCost:
    """The encoder half of models.embeddings._MlpAutoencoder (the decoder mirrors it)."""
    return linear(pixels, AUTOENCODER_HIDDEN) + linear(AUTOENCODER_HIDDEN, latent_dim)


@dataclass
class WorkEstimate:
    """FLOPs of a job, by part (kept in the job's spec["facts"] and shown in refusals)."""

    parts: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, flops: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + float(flops)

    @property
    def flops(self) -> float:
        return sum(self.parts.values())

    def describe(self) -> str:
        parts = ", ".join(f"{name} {value:.2g}" for name, value in self.parts.items() if value > 0)
        return f"{self.flops:.3g} FLOPs ({parts})"


def eval_count(epochs: int, eval_every: int | None) -> int:
    """len(models.audit.eval_epochs(epochs, eval_every)) without building the list."""
    every = eval_every or epochs
    return epochs // every + (1 if epochs % every else 0) if every <= epochs else 1


def vae_job_work(spec: dict[str, Any], n: int, n_heldout: int, image_shape: Shape) -> WorkEstimate:
    """FLOPs of a VAE audit: K*L models trained, evaluated by importance sampling, compared by NN."""
    model, training, audit = spec["model"], spec["training"], spec["audit"]
    cost = vae_cost(model, image_shape)
    folds, models = audit["folds"], audit["folds"] * audit["repeats"]
    fold_size = -(-n // folds)
    epochs, samples = training["epochs"], audit["is_samples"]
    forward = 2 * (cost.encoder.macs + cost.decoder.macs)
    work = WorkEstimate()
    work.add("training", models * epochs * (n - fold_size) * TRAIN_PASSES * forward)
    work.add("epoch losses", models * epochs * (fold_size + n_heldout) * forward)
    evaluations = eval_count(epochs, audit["eval_every"])
    per_sample = 2 * (cost.encoder.macs + samples * cost.decoder.macs)
    work.add("importance sampling", models * evaluations * n * per_sample)
    generated = audit["n_generated"] if audit["n_generated"] is not None else n_heldout
    pixels = math.prod(image_shape)
    work.add("generation", generated * 2 * cost.decoder.macs)
    work.add("nearest neighbours", 2 * pixels * n * (generated + n_heldout))
    return work


def _embedding_work(embedding: dict[str, Any], n: int, samples_embedded: int, pixels: int,
                    work: WorkEstimate) -> tuple[int, int]:  # fmt: skip
    """Adds the embedding's training and feature passes; returns (MACs per image, feature size)."""
    if embedding["kind"] != "autoencoder":
        return 0, pixels  # pixels: no network; a model file: its cost is unknown here, features ~ pixels
    encoder = autoencoder_encoder(pixels, embedding["latent_dim"])
    work.add("embedding", embedding["epochs"] * n * TRAIN_PASSES * 2 * (2 * encoder.macs))
    work.add("embedding", samples_embedded * 2 * encoder.macs)
    return encoder.macs, embedding["latent_dim"]


def _copy_statistics(n: int, n_heldout: int, generated: int, features: int, cells: int,
                     work: WorkEstimate) -> None:  # fmt: skip
    """C_T (PCA, k-means on the training set) and the NN searches of copy counts and rho."""
    pairs = n * (generated + n_heldout) + n_heldout * generated
    work.add("nearest neighbours", 2 * features * pairs)
    reduced = min(features, PCA_DIMS)
    work.add("copy test", 2 * KMEANS_ITERATIONS * cells * (n + n_heldout + generated) * reduced)


def mrgan_job_work(section: dict[str, Any], gan: tuple[str, int, int], n_units: int, n: int, n_heldout: int,
                   cells: int, image_shape: Shape) -> WorkEstimate:  # fmt: skip
    """FLOPs of an MR-GAN sweep: the embedding of the training and held-out sets once per job (the tau
    units share it), then per tau unit the GAN training with rejection (worst case: every redraw taken),
    sampling with the embedding of its samples, and the copy statistics."""
    arch, latent_dim, width = gan
    generator, discriminator = gan_cost(arch, image_shape, latent_dim, width)
    pixels, batch = math.prod(image_shape), section["batch_size"]
    generated = section["n_generated"] or n_heldout
    shared, work = WorkEstimate(), WorkEstimate()
    encoder_macs, features = _embedding_work(section["embedding"], n, n + n_heldout, pixels, shared)
    rejection = 2 * encoder_macs + 2 * n * features  # per fake: its embedding, then cosine NN over T
    g_forward, d_forward = 2 * generator.macs, 2 * discriminator.macs
    d_rejection = rejection if section["mode"] == "GD" else 0  # mode GD also drops rejected fakes from D
    d_step = batch * (g_forward + TRAIN_PASSES * d_forward * 2 + d_rejection)
    attempts = 1 + section["max_redraws"]
    g_step = batch * (attempts * (g_forward + rejection) + 2 * g_forward + TRAIN_PASSES * d_forward)
    work.add("gan training", section["steps"] * (section["d_steps"] * d_step + g_step))
    work.add("generation", generated * (g_forward + 2 * encoder_macs))
    _copy_statistics(n, n_heldout, generated, features, cells, work)
    per_job = {name: n_units * value for name, value in work.parts.items()}
    for name, value in shared.parts.items():
        per_job[name] = per_job.get(name, 0) + value
    return WorkEstimate(per_job)


def copy_test_work(section: dict[str, Any], n: int, n_heldout: int, generated: int, cells: int,
                   image_shape: Shape) -> WorkEstimate:  # fmt: skip
    """FLOPs of a copy test: the embedding and the copy statistics (a generator file's own
    sampling cost is not known here and not counted)."""
    work = WorkEstimate()
    pixels = math.prod(image_shape)
    _, features = _embedding_work(section["embedding"], n, n + n_heldout + generated, pixels, work)
    _copy_statistics(n, n_heldout, generated, features, cells, work)
    return work
