"""Importance-sampled log-likelihood of a stack of VAEs (SPEC §2), in bounded memory.

    log p(x) ~= logsumexp_s [log p(x|z_s) + log p(z_s) - log q(z_s|x)] - log S,  z_s ~ q(z|x)

For E models, N samples and S latents the work is E*N*S decoder passes. It is cut into chunks of
``sample_chunk`` samples x ``latent_chunk`` latents for all E models at once; the per-chunk
log-sum-exps are merged exactly, so chunking changes nothing but memory. A chunk's estimated
footprint ``E * samples * latents * bytes_per_latent`` never exceeds ``budget_bytes`` (except that
one sample with one latent is always allowed); on top of it a chunk holds its samples' normal noise,
E * samples * S * Z floats, which is small next to the decoded pixels. Runs in eval mode without gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.ensemble import ModelStack
from models.likelihoods import decoder_log_prob
from models.noise import NOISE_BLOCK

_LOG_2PI = math.log(2.0 * math.pi)
_FLOAT_BYTES = 4
_LIKELIHOOD_TEMPORARIES = 8  # elementwise temporaries of size D while scoring one decoded latent

# (start, stop) -> representation (E or 1, b, C, H, W) / standard normal noise (E or 1, b, S, Z)
ReprSource = Callable[[int, int], torch.Tensor]
EpsSource = Callable[[int, int], torch.Tensor]


@dataclass(frozen=True)
class ChunkPlan:
    sample_chunk: int
    latent_chunk: int
    bytes_per_latent: int  # one model, one sample, one latent

    def chunk_bytes(self, n_models: int) -> int:
        return n_models * self.sample_chunk * self.latent_chunk * self.bytes_per_latent


def plan_chunks(stack: ModelStack, pixels: int, n_latents: int, budget_bytes: int) -> ChunkPlan:
    """Largest chunks within the budget: latents first (fewer merges), then samples in noise blocks."""
    per_latent = _FLOAT_BYTES * (stack.decoder_floats + _LIKELIHOOD_TEMPORARIES * pixels + 4 * stack.latent)
    per_model_latent = stack.n_models * per_latent
    latent_chunk = max(1, min(n_latents, budget_bytes // per_model_latent))
    sample_chunk = max(1, budget_bytes // (per_model_latent * latent_chunk))
    if sample_chunk >= NOISE_BLOCK:  # whole noise blocks: no noise is drawn twice
        sample_chunk -= sample_chunk % NOISE_BLOCK
    return ChunkPlan(sample_chunk, latent_chunk, per_latent)


def log_normal_std(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last axis."""
    return -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)


def _chunk_log_weights(
    stack: ModelStack,
    x: torch.Tensor,
    mean: torch.Tensor,
    log_var: torch.Tensor,
    eps: torch.Tensor,
    likelihood: str,
) -> torch.Tensor:
    """Log importance weights (E, b, s) for representation x (E, b, D) and noise eps (E|1, b, s, Z)."""
    n_models, batch, latents = mean.shape[0], mean.shape[1], eps.shape[2]
    std = torch.exp(0.5 * log_var).unsqueeze(2)  # (E, b, 1, Z)
    z = mean.unsqueeze(2) + std * eps  # (E, b, s, Z)
    params = stack.decode(z.reshape(n_models, batch * latents, -1))  # (E, b*s, P, D)
    params = params.reshape(n_models, batch, latents, *params.shape[-2:])  # (E, b, s, P, D)
    const = stack.const_log_var()
    const = None if const is None else const[:, None, None]
    log_px = decoder_log_prob(params, x.unsqueeze(2), likelihood, const)  # (E, b, s)
    # log q(z|x) with z = mean + std * eps: the Gaussian density in terms of eps
    log_q = -0.5 * (eps.pow(2) + _LOG_2PI + log_var.unsqueeze(2)).sum(-1)
    return log_px + log_normal_std(z) - log_q


@torch.no_grad()
def importance_log_likelihood(
    stack: ModelStack,
    n_samples: int,
    pixels: int,
    repr_of: ReprSource,
    eps_of: EpsSource,
    likelihood: str,
    n_latents: int,
    budget_bytes: int,
) -> torch.Tensor:
    """(E, N) float64 log p(x_i | model e), estimated with n_latents importance samples."""
    was_training = stack.training
    stack.eval()
    plan = plan_chunks(stack, pixels, n_latents, budget_bytes)
    rows = []
    for start in range(0, n_samples, plan.sample_chunk):
        stop = min(start + plan.sample_chunk, n_samples)
        x = repr_of(start, stop).expand(stack.n_models, -1, -1, -1, -1)  # (E, b, C, H, W)
        mean, log_var = stack.encode(x)  # (E, b, Z)
        eps_all = eps_of(start, stop)  # (E|1, b, S, Z)
        partial = [
            torch.logsumexp(
                _chunk_log_weights(
                    stack, x.flatten(2), mean, log_var, eps_all[:, :, s0 : s0 + plan.latent_chunk], likelihood
                ),
                dim=-1,
            )
            for s0 in range(0, n_latents, plan.latent_chunk)
        ]
        rows.append(torch.logsumexp(torch.stack(partial), dim=0).double() - math.log(n_latents))
    stack.train(was_training)
    return torch.cat(rows, dim=1)
