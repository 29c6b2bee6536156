"""Importance-sampled log-likelihood of a stack of VAEs (SPEC §2), in bounded memory.

    log p(x) ~= logsumexp_s [log p(x|z_s) + log p(z_s) - log q(z_s|x)] - log S,  z_s ~ q(z|x)

For E models, N samples and S latents the work is E*N*S decoder passes. Samples are taken in
*groups* (whole noise blocks where the budget allows): a group's representation and latent noise are
fetched and encoded once. Each group is decoded in *chunks* of ``sample_chunk`` samples x
``latent_chunk`` latents for all E models at once (one batched matmul per layer over
E x samples x latents rows); the per-chunk log-sum-exps are merged exactly, so chunking changes
nothing but memory and speed. A chunk's estimated footprint ``E * samples * latents *
bytes_per_latent`` never exceeds ``budget_bytes`` (except that one sample with one latent is always
allowed); on top of it a group holds its samples' normal noise, E * group * S * Z floats.

``cache_bytes`` (CPU) caps a chunk's decoder activations (all models together) at about that
size, so they stay in the CPU's cache while the likelihood reads them back (docs/benchmarks.md:
on the dev CPU this lifts importance sampling from ~55% to ~75-85% of the sgemm peak); without it
(CUDA) a chunk is as large as the budget allows. Runs in eval mode without gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.ensemble import ModelStack
from models.likelihoods import decoder_log_prob
from models.noise import NOISE_BLOCK

_LOG_2PI = math.log(2.0 * math.pi)
_FLOAT_BYTES = 4
_LIKELIHOOD_TEMPORARIES = 8  # elementwise temporaries of size D while scoring one decoded latent
# CPU Bernoulli scoring in L2-sized tiles (docs/benchmarks.md): below this many pixels the tiles' per-op
# overhead outweighs the cheaper log, so small images keep the one-pass softplus
_TILED_MIN_PIXELS = 256
_TILE_FLOATS = 1 << 18  # 1 MiB of logits per tile

# (start, stop) -> representation (E or 1, b, C, H, W) / standard normal noise (E or 1, b, S, Z)
ReprSource = Callable[[int, int], torch.Tensor]
EpsSource = Callable[[int, int], torch.Tensor]


@dataclass(frozen=True)
class ChunkPlan:
    sample_chunk: int  # samples decoded together
    latent_chunk: int  # latents per sample decoded together
    bytes_per_latent: int  # one model, one sample, one latent
    group: int = 0  # samples whose representation and noise are fetched and encoded together

    def chunk_bytes(self, n_models: int) -> int:
        return n_models * self.sample_chunk * self.latent_chunk * self.bytes_per_latent

    @property
    def samples_per_group(self) -> int:
        return max(self.group, self.sample_chunk)


def plan_chunks(
    stack: ModelStack, pixels: int, n_latents: int, budget_bytes: int, cache_bytes: int | None = None
) -> ChunkPlan:
    """Largest chunks within the budget (and the cache cap): latents first (fewer merges), then
    samples; groups of whole noise blocks so that no noise is drawn twice."""
    per_latent = _FLOAT_BYTES * (stack.decoder_floats + _LIKELIHOOD_TEMPORARIES * pixels + 4 * stack.latent)
    per_model_latent = stack.n_models * per_latent
    rows = budget_bytes // per_model_latent  # latents per model one chunk may decode
    if cache_bytes is not None:
        rows = min(rows, cache_bytes // (_FLOAT_BYTES * stack.decoder_floats * stack.n_models))
    latent_chunk = max(1, min(n_latents, rows))
    sample_chunk = max(1, rows // latent_chunk)
    group = sample_chunk
    if sample_chunk >= NOISE_BLOCK:
        sample_chunk -= sample_chunk % NOISE_BLOCK
        group = sample_chunk
    else:
        # a whole noise block per group when its noise fits the budget next to a chunk
        noise_bytes = _FLOAT_BYTES * stack.n_models * NOISE_BLOCK * n_latents * stack.latent
        if noise_bytes <= budget_bytes:
            group = NOISE_BLOCK
    return ChunkPlan(sample_chunk, latent_chunk, per_latent, group)


def log_normal_std(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last axis."""
    return -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)


def _score(params: torch.Tensor, x: torch.Tensor, sign: torch.Tensor | None, likelihood: str,
           const: torch.Tensor | None, tiled: bool = False) -> torch.Tensor:  # fmt: skip
    """log p(x | params) (E, b, s) for decoder planes (E, b, s, P, D); params are a temporary and may
    be overwritten. Bernoulli: x l - softplus(l) = -softplus((1 - 2x) l) for binary x, one pass."""
    if sign is not None:
        logits = params[..., 0, :]
        if tiled and logits.shape[-1] >= _TILED_MIN_PIXELS:
            return _bernoulli_tiled(logits, sign)
        logits.mul_(sign)
        return F.softplus(logits).sum(-1).neg_()
    return decoder_log_prob(params, x, likelihood, const)


def _bernoulli_tiled(logits: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """-sum_d softplus(sign_d l_d) (E, b, s) for logits (E, b, s, D), overwritten, and sign = 1 - 2x
    (E|1, b, 1, D), as

        softplus(u) = relu(u) + log(1 + exp(-|u|)) = (u + |u|) / 2 - log sigmoid(|u|),  |sign l| = |l|,

    tile by tile so that the five cheap passes (a dot with the signs, abs, sum, sigmoid, log) read data in
    L2: torch's one-pass softplus is bound by its log1p (about 0.45 Gelem/s per core here), while sigmoid
    and log run at several Gelem/s in cache. float32 loses nothing that matters: where sigmoid(|l|)
    rounds to 1 the dropped term is below 6e-8."""
    n_models, batch, latents, pixels = logits.shape
    out = torch.empty(n_models, batch, latents, dtype=logits.dtype, device=logits.device)
    per_tile = max(1, _TILE_FLOATS // (latents * pixels))  # samples per tile
    for e in range(n_models):
        signs = sign[min(e, sign.shape[0] - 1)]  # (b, 1, D)
        for a in range(0, batch, per_tile):
            tile = logits[e, a : a + per_tile]  # (t, s, D)
            twice_relu = torch.bmm(tile, signs[a : a + per_tile].transpose(-1, -2)).squeeze_(-1)  # (t, s)
            twice_relu.add_(tile.abs_().sum(-1))  # sum u + sum |u| = 2 sum relu(u)
            torch.sub(tile.sigmoid_().log_().sum(-1), twice_relu, alpha=0.5, out=out[e, a : a + per_tile])
    return out


def _chunk_log_weights(
    stack: ModelStack,
    x: torch.Tensor,
    sign: torch.Tensor | None,
    mean: torch.Tensor,
    log_var: torch.Tensor,
    eps: torch.Tensor,
    likelihood: str,
    cpu_cache: bool = False,
) -> torch.Tensor:
    """Log importance weights (E, b, s) for representation x (E|1, b, 1, D), noise eps (E|1, b, s, Z).
    ``cpu_cache``: decode and score model by model where the stack allows it, in cache-sized tiles."""
    n_models, batch, latents = mean.shape[0], mean.shape[1], eps.shape[2]
    std = torch.exp(0.5 * log_var).unsqueeze(2)  # (E, b, 1, Z)
    z = torch.addcmul(mean.unsqueeze(2), std, eps)  # (E, b, s, Z)
    # log N(z; 0, I) - log q(z|x) with z = mean + std * eps (the log 2 pi terms cancel)
    log_w = (eps.square().sum(-1) - z.square().sum(-1)).mul_(0.5).add_(0.5 * log_var.sum(-1, keepdim=True))
    const = stack.const_log_var()
    const = None if const is None else const[:, None, None]
    flat_z = z.reshape(n_models, batch * latents, -1)  # (E, b*s, Z)
    if cpu_cache and n_models > 1 and stack.decodes_by_model:
        workspace: list[torch.Tensor] = []
        for e in range(n_models):
            params = stack.decode_model(e, flat_z[e : e + 1], workspace)
            params = params.reshape(1, batch, latents, *params.shape[-2:])  # (1, b, s, P, D)
            member_sign = None if sign is None else _member(sign, e)
            member_const = None if const is None else const[e : e + 1]
            log_w[e : e + 1].add_(_score(params, _member(x, e), member_sign, likelihood, member_const, True))
        return log_w
    params = stack.decode(flat_z)  # (E, b*s, P, D)
    params = params.reshape(n_models, batch, latents, *params.shape[-2:])  # (E, b, s, P, D)
    return log_w.add_(_score(params, x, sign, likelihood, const, cpu_cache))


def _member(shared: torch.Tensor, e: int) -> torch.Tensor:
    """Model e's slice (1, ...) of a tensor held per model (E, ...) or shared by all (1, ...)."""
    return shared if shared.shape[0] == 1 else shared[e : e + 1]


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
    cache_bytes: int | None = None,
) -> torch.Tensor:
    """(E, N) float64 log p(x_i | model e), estimated with n_latents importance samples."""
    was_training = stack.training
    stack.eval()
    plan = plan_chunks(stack, pixels, n_latents, budget_bytes, cache_bytes)
    rows = []
    for start in range(0, n_samples, plan.samples_per_group):
        stop = min(start + plan.samples_per_group, n_samples)
        x_all = repr_of(start, stop)  # (E|1, g, C, H, W)
        mean_all, log_var_all = stack.encode(x_all.expand(stack.n_models, -1, -1, -1, -1))  # (E, g, Z)
        x_all = x_all.flatten(2).unsqueeze(2)  # (E|1, g, 1, D)
        sign_all = torch.rsub(x_all, 1.0, alpha=2.0) if likelihood == "bernoulli" else None  # 1 - 2x
        eps_all = eps_of(start, stop)  # (E|1, g, S, Z)
        for a in range(0, stop - start, plan.sample_chunk):
            b = min(a + plan.sample_chunk, stop - start)
            partial = [
                torch.logsumexp(
                    _chunk_log_weights(
                        stack,
                        x_all[:, a:b],
                        None if sign_all is None else sign_all[:, a:b],
                        mean_all[:, a:b],
                        log_var_all[:, a:b],
                        eps_all[:, a:b, s0 : s0 + plan.latent_chunk],
                        likelihood,
                        cpu_cache=cache_bytes is not None,
                    ),
                    dim=-1,
                )
                for s0 in range(0, n_latents, plan.latent_chunk)
            ]
            merged = partial[0] if len(partial) == 1 else torch.logsumexp(torch.stack(partial), dim=0)
            rows.append(merged.double() - math.log(n_latents))
    stack.train(was_training)
    return torch.cat(rows, dim=1)
