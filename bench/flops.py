"""What a VAE costs, counted from the modules it actually runs (shared by the roofline and GPU benches).

Multiply-adds (MACs) are counted by forward hooks on one plain model (``models.networks``): a Linear
layer costs in x out per sample, a Conv2d C_out x C_in/groups x k_h x k_w x H_out x W_out, a
ConvTranspose2d C_in x C_out/groups x k_h x k_w x H_in x W_in. Nothing else (activations, batch norm,
the likelihood, the sampling) is counted: GFLOP/s figures are 2 x these MACs per second, so every
other operation shows up as a lower fraction of the machine's matmul peak.

Training FLOPs of one step per sample = 2 x [forward MACs (encoder + decoder) + weight-gradient MACs
(the same) + input-gradient MACs (the same, less the first encoder layer, whose input needs no
gradient)]. Training bytes per step = Adam's 7 passes over the parameters (fused Adam reads the
parameter, gradient and both moments and writes back the parameter and both moments: 28 B per
parameter) + activations: every counted layer's output and the input, written once in the forward
pass, read once in the backward pass, their gradients written and read once (16 B per float).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.config import ModelConfig
from models.networks import build_vae


@dataclass(frozen=True)
class ModelCost:
    encoder_macs: int  # per sample
    decoder_macs: int  # per decoded latent
    first_layer_input_macs: int  # input-gradient MACs of the first encoder layer (never computed)
    activation_floats: int  # per sample: input + outputs of every counted layer (encoder and decoder)
    parameters: int

    def train_flops_per_sample(self) -> int:
        forward = self.encoder_macs + self.decoder_macs
        return 2 * (3 * forward - self.first_layer_input_macs)

    def train_bytes_per_step(self, batch_size: int) -> int:
        return 28 * self.parameters + 16 * batch_size * self.activation_floats


def _macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features * (output.numel() // output.shape[-1])
    if isinstance(module, nn.Conv2d):
        k = math.prod(module.kernel_size)
        return output.numel() * (module.in_channels // module.groups) * k
    if isinstance(module, nn.ConvTranspose2d):
        k = math.prod(module.kernel_size)
        return inputs[0].numel() * (module.out_channels // module.groups) * k
    return 0


def model_cost(model_cfg: ModelConfig, image_shape: tuple[int, int, int]) -> ModelCost:
    model = build_vae(model_cfg, image_shape, 0).eval()
    records: list[tuple[int, int, int]] = []  # (macs, output floats, input-gradient macs) per call

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        macs = _macs(module, inputs, output)
        if macs:
            records.append((macs, output.numel(), macs))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    batch = 2
    with torch.no_grad():
        mean, _ = model.encode(torch.zeros(batch, *image_shape))
        encoder = list(records)
        records.clear()
        model.decode(torch.zeros_like(mean))
        decoder = list(records)
    for handle in handles:
        handle.remove()
    return ModelCost(
        encoder_macs=sum(r[0] for r in encoder) // batch,
        decoder_macs=sum(r[0] for r in decoder) // batch,
        first_layer_input_macs=encoder[0][2] // batch,
        activation_floats=math.prod(image_shape) + sum(r[1] for r in encoder + decoder) // batch,
        parameters=sum(p.numel() for p in model.parameters()),
    )
