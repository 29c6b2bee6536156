"""Model stacks: E VAEs behind one (E, B, ...) interface.

``StackedMLPVAE`` / ``StackedConvVAE`` hold the parameters of E independently initialised models
stacked along a leading model axis and run all of them in one call: batched matmuls
(``baddbmm``) for linear layers, grouped convolutions (``groups=E``) for conv layers, and batch
norm over E*C channels (each channel belongs to one model, so its statistics are exactly the
per-model ones). Adam is elementwise, so optimising the stacked tensors is the same as
optimising each model alone. ``SingleStack`` wraps one plain VAE (E = 1) for the sequential
strategy, so training and importance sampling share one code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, cast

import torch
from torch import nn

from models.networks import (
    LEAKY_SLOPE,
    MLPVAE,
    VAE,
    ConvGeometry,
    ConvVAE,
    crop_from_canvas,
    pad_to_canvas,
    split_posterior,
)


class ModelStack(nn.Module):
    """E models: encode (E,B,C,H,W) -> 2 x (E,B,Z); decode (E,B,Z) -> (E,B,P,D)."""

    n_models: int
    latent: int
    planes: int
    decoder_floats: int  # per model and decoded latent, see VAE.decoder_floats
    decodes_by_model: bool = False  # decode_model is available

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode_model(
        self, e: int, z: torch.Tensor, workspace: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Model e's decoder alone, (1, B, Z) -> (1, B, P, D), for stacks with ``decodes_by_model``
        (importance sampling decodes model by model on CPU so that each model's activations stay in
        cache). ``workspace``: activation buffers kept between calls of the same shape (filled on the
        first call), so that every model of a chunk writes into the same, already cached memory; the
        result lives in it until the next call."""
        raise NotImplementedError

    def const_log_var(self) -> torch.Tensor | None:  # (E,) for gaussian_const
        raise NotImplementedError


class SingleStack(ModelStack):
    """One plain VAE seen as a stack of one (the sequential strategy)."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model
        self.n_models = 1
        self.latent = model.latent
        self.planes = model.planes
        self.decoder_floats = model.decoder_floats

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.model.encode(x[0])
        return mean.unsqueeze(0), log_var.unsqueeze(0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z[0]).unsqueeze(0)

    def const_log_var(self) -> torch.Tensor | None:
        param = self.model.const_log_var
        return None if param is None else param.reshape(1)


class StackedLinear(nn.Module):
    """E linear layers: (E, B, in) -> (E, B, out) with one baddbmm."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        layers = [m for m in modules if isinstance(m, nn.Linear)]
        self.weight = nn.Parameter(torch.stack([layer.weight.detach().T for layer in layers]).contiguous())
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]).unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    def member(self, e: int, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Layer e alone: (1, B, in) -> (1, B, out), written into ``out`` when given."""
        if out is None:
            return torch.baddbmm(self.bias[e : e + 1], x, self.weight[e : e + 1])
        return torch.baddbmm(self.bias[e : e + 1], x, self.weight[e : e + 1], out=out)


def _stacked_const_log_var(models: Sequence[VAE]) -> nn.Parameter | None:
    params = [m.const_log_var for m in models]
    if params[0] is None:
        return None
    return nn.Parameter(torch.stack([p.detach() for p in params if p is not None]))


class StackedMLPVAE(ModelStack):
    decodes_by_model = True

    def __init__(self, models: Sequence[MLPVAE]) -> None:
        super().__init__()
        first = models[0]
        self.n_models, self.latent, self.planes, self.pixels = (
            len(models),
            first.latent,
            first.planes,
            first.pixels,
        )
        self.decoder_floats = first.decoder_floats
        self.encoder_layers = nn.ModuleList(
            StackedLinear([m.encoder_layers[i] for m in models]) for i in range(len(first.encoder_layers))
        )
        self.encoder_head = StackedLinear([m.encoder_head for m in models])
        self.decoder_layers = nn.ModuleList(
            StackedLinear([m.decoder_layers[i] for m in models]) for i in range(len(first.decoder_layers))
        )
        self.decoder_head = StackedLinear([m.decoder_head for m in models])
        self.log_var_param = _stacked_const_log_var(models)

    # ReLU in place on each fresh baddbmm output: baddbmm's backward needs its inputs, not its output
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.flatten(2)  # (E, B, D)
        for layer in self.encoder_layers:
            h = layer(h).relu_()
        return split_posterior(self.encoder_head(h), self.latent)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for layer in self.decoder_layers:
            h = layer(h).relu_()
        return self.decoder_head(h).unflatten(-1, (self.planes, self.pixels))  # (E, B, P, D)

    def decode_model(
        self, e: int, z: torch.Tensor, workspace: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        layers = [cast(StackedLinear, layer) for layer in self.decoder_layers] + [self.decoder_head]
        if workspace is not None and (not workspace or workspace[0].shape[1] != z.shape[1]):
            workspace[:] = [z.new_empty(1, z.shape[1], layer.weight.shape[2]) for layer in layers]
        h = z  # (1, B, Z)
        for i, layer in enumerate(layers):
            h = layer.member(e, h, None if workspace is None else workspace[i])
            if i < len(layers) - 1:
                h.relu_()
        return h.unflatten(-1, (self.planes, self.pixels))  # (1, B, P, D)

    def const_log_var(self) -> torch.Tensor | None:
        return self.log_var_param


ConvKind = TypeVar("ConvKind", nn.Conv2d, nn.ConvTranspose2d)


def _grouped(kind: type[ConvKind], modules: Sequence[nn.Module]) -> ConvKind:
    """One grouped convolution (groups = number of models) holding the weights of E plain ones."""
    convs = [m for m in modules if isinstance(m, kind)]
    first, groups = convs[0], len(convs)
    grouped = kind(
        first.in_channels * groups,
        first.out_channels * groups,
        first.kernel_size[0],  # square kernels, strides and paddings only
        first.stride[0],
        _int_padding(first),
        groups=groups,
        bias=first.bias is not None,
    )
    _copy_grouped(grouped, convs)
    return grouped


def _int_padding(conv: nn.Conv2d | nn.ConvTranspose2d) -> int:
    padding = conv.padding
    assert not isinstance(padding, str)
    return int(padding[0])


def _copy_grouped(
    grouped: nn.Conv2d | nn.ConvTranspose2d, convs: Sequence[nn.Conv2d | nn.ConvTranspose2d]
) -> None:
    # conv weights are (out, in/g, k, k), transposed ones (in, out/g, k, k): both stack along dim 0
    with torch.no_grad():
        grouped.weight.copy_(torch.cat([c.weight for c in convs]))
        if grouped.bias is not None:
            grouped.bias.copy_(torch.cat([c.bias for c in convs if c.bias is not None]))


def _grouped_norm(norms: Sequence[nn.Module]) -> nn.BatchNorm2d:
    parts = [n for n in norms if isinstance(n, nn.BatchNorm2d)]
    grouped = nn.BatchNorm2d(parts[0].num_features * len(parts), momentum=parts[0].momentum, eps=parts[0].eps)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(grouped, name).copy_(torch.cat([getattr(p, name) for p in parts]))
    return grouped


class StackedConvVAE(ModelStack):
    """Inside the conv towers activations are laid out (B, E*C, H, W), model-major channels."""

    def __init__(self, models: Sequence[ConvVAE]) -> None:
        super().__init__()
        first = models[0]
        self.geometry: ConvGeometry = first.geometry
        self.n_models, self.latent, self.planes = len(models), first.latent, first.planes
        self.decoder_floats = first.decoder_floats

        def grouped_norms(attr: str) -> nn.ModuleList:
            count = len(getattr(first, attr))
            return nn.ModuleList(_grouped_norm([getattr(m, attr)[i] for m in models]) for i in range(count))

        self.encoder_convs = nn.ModuleList(
            _grouped(nn.Conv2d, [m.encoder_convs[i] for m in models]) for i in range(len(first.encoder_convs))
        )
        self.encoder_norms = grouped_norms("encoder_norms")
        self.encoder_mean = StackedLinear([m.encoder_mean for m in models])
        self.encoder_log_var = StackedLinear([m.encoder_log_var for m in models])
        self.decoder_input = _grouped(nn.ConvTranspose2d, [m.decoder_input for m in models])
        self.decoder_input_norm = _grouped_norm([m.decoder_input_norm for m in models])
        self.decoder_convs = nn.ModuleList(
            _grouped(nn.ConvTranspose2d, [m.decoder_convs[i] for m in models])
            for i in range(len(first.decoder_convs))
        )
        self.decoder_norms = grouped_norms("decoder_norms")
        self.log_var_param = _stacked_const_log_var(models)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e, b = x.shape[:2]
        h = pad_to_canvas(x, self.geometry).transpose(0, 1).flatten(1, 2)  # (B, E*C, side, side)
        for i, conv in enumerate(self.encoder_convs):
            h = conv(h)
            if i > 0:
                h = self.encoder_norms[i - 1](h)
            h = nn.functional.leaky_relu(h, LEAKY_SLOPE)
        h = h.reshape(b, e, -1).transpose(0, 1)  # (E, B, top*2*2)
        return self.encoder_mean(h), self.encoder_log_var(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        e, b = z.shape[:2]
        h = self.decoder_input(z.transpose(0, 1).reshape(b, e * self.latent, 1, 1))  # (B, E*top, 2, 2)
        h = torch.relu(self.decoder_input_norm(h))
        for i, conv in enumerate(self.decoder_convs):
            h = conv(h)
            if i < len(self.decoder_norms):
                h = torch.relu(self.decoder_norms[i](h))
        h = crop_from_canvas(h, self.geometry)  # (B, E*P*C, H, W)
        h = h.reshape(b, e, self.planes, -1)  # (B, E, P, D)
        return h.transpose(0, 1)

    def const_log_var(self) -> torch.Tensor | None:
        return self.log_var_param


def stack_models(models: Sequence[VAE]) -> ModelStack:
    """Stack equally configured plain VAEs (copies their current weights and norm statistics)."""
    if len(models) == 1:
        return SingleStack(models[0])
    if all(isinstance(m, MLPVAE) for m in models):
        return StackedMLPVAE([m for m in models if isinstance(m, MLPVAE)])
    if all(isinstance(m, ConvVAE) for m in models):
        return StackedConvVAE([m for m in models if isinstance(m, ConvVAE)])
    raise TypeError("stack_models: models must all be MLPVAE or all ConvVAE")
