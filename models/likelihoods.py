"""Decoder likelihoods: log p of the data as stored, summed over pixels (SPEC §2).

Every likelihood works on a *representation* of an image in [0, 1] that both the encoder reads
and the decoder scores:

* ``bernoulli``      - a binarization ``x_b = [u < x]`` of the intensities, u ~ U(0, 1); log p of
  the binary image.
* ``gaussian_diag`` / ``gaussian_const`` - the dequantized 8-bit image ``(u + 255 x) / 256`` with
  u ~ U(0, 1); the density is a Gaussian over ``y = logit(lambda + (1 - 2 lambda) x)`` converted
  back to a log-probability of the 8-bit image by the exact change of variables of SPEC §2.
* ``logistic``       - the 8-bit image ``k / 255`` itself (no noise); a discretized logistic with
  bins of width 1/255 whose two outer bins extend to -inf / +inf, so it sums to one over 0..255.

Decoder outputs are laid out ``(..., P, D)``: P parameter planes over the D = C*H*W pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOGIT_LAMBDA = 0.05
MIN_LOG_VAR = -7.0  # SPEC §2: log-variance clamped at >= -7 (also used for the logistic log-scale)
GAUSSIAN_CONST_INIT_LOG_VAR = -2.0  # the reference's initial value of the one learned log-variance
_LOG_2PI = math.log(2.0 * math.pi)

# parameter planes the decoder emits per pixel; gaussian_const adds one learned scalar per model
PARAM_PLANES: dict[str, int] = {"bernoulli": 1, "gaussian_diag": 2, "gaussian_const": 1, "logistic": 2}
NEEDS_NOISE: dict[str, bool] = {
    "bernoulli": True,
    "gaussian_diag": True,
    "gaussian_const": True,
    "logistic": False,
}


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Intensities in [0, 1] -> the 8-bit levels 0..255 they encode (float)."""
    return torch.round(images * 255.0)


def represent(images: torch.Tensor, noise: torch.Tensor | None, likelihood: str) -> torch.Tensor:
    """The representation a model reads and scores (see the module docstring).

    images: (..., D) intensities in [0, 1]; noise: (..., D) uniform in [0, 1) (ignored by logistic).
    """
    if likelihood == "bernoulli":
        assert noise is not None
        return (noise < images).to(images.dtype)
    if likelihood in ("gaussian_diag", "gaussian_const"):
        assert noise is not None
        return (noise + quantize_8bit(images)) / 256.0
    if likelihood == "logistic":
        return quantize_8bit(images) / 255.0
    raise ValueError(f"likelihood: unknown {likelihood!r}")


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x) for binary x under independent Bernoulli(sigmoid(logits)); (..., D) -> (...)."""
    # x log sigmoid(l) + (1 - x) log sigmoid(-l) = x l - softplus(l), written to broadcast
    return (x * logits - F.softplus(logits)).sum(-1)


def bernoulli_log_prob_signed(logits: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """bernoulli_log_prob for binary x given sign = 1 - 2x (broadcastable): for x in {0, 1},
    x l - softplus(l) = -softplus(sign * l), which saves an elementwise pass and a temporary."""
    return F.softplus(logits * sign).sum(-1).neg()


def to_logit_space(x_deq: torch.Tensor) -> torch.Tensor:
    """y = logit(lambda + (1 - 2 lambda) x) for dequantized x in (0, 1)."""
    p = LOGIT_LAMBDA + (1.0 - 2.0 * LOGIT_LAMBDA) * x_deq
    return torch.log(p) - torch.log1p(-p)


class _ClampKeepingGradient(torch.autograd.Function):
    """max(x, bound) in the forward pass, the identity in the backward pass (straight-through)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, bound: float) -> torch.Tensor:
        return x.clamp(min=bound)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def clamp_keeping_gradient(x: torch.Tensor, bound: float) -> torch.Tensor:
    """The value clamped at >= bound, the gradient of the unclamped value.

    A plain clamp has zero gradient below its bound, so the single learned log-variance of
    ``gaussian_const`` would freeze for good once an optimiser step took it below -7. With this one
    the scoring still uses max(log_var, -7), and the parameter keeps receiving the gradient it would
    have at the bound, so it moves back up as soon as the fit asks for a larger variance.
    """
    out: torch.Tensor = _ClampKeepingGradient.apply(x, bound)
    return out


def logit_gaussian_log_prob(mean: torch.Tensor, log_var: torch.Tensor, x_deq: torch.Tensor) -> torch.Tensor:
    """log P of the 8-bit image whose dequantization is x_deq; Gaussian N(mean, exp(log_var)) over y.

    log p(x) = log p(y) + D log(1 - 2 lambda) - D log 256 - sum_d (y_d - 2 softplus(y_d)).
    mean, log_var, x_deq broadcast to (..., D); returns (...).
    """
    y = to_logit_space(x_deq)
    log_var = log_var.clamp(min=MIN_LOG_VAR)
    log_p_y = -0.5 * (_LOG_2PI + log_var + (y - mean) ** 2 * torch.exp(-log_var))
    jacobian = math.log(1.0 - 2.0 * LOGIT_LAMBDA) - math.log(256.0) - (y - 2.0 * F.softplus(y))
    return (log_p_y + jacobian).sum(-1)


def _log_sigmoid_difference(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(upper) - sigmoid(lower)) for upper > lower, stable in both tails.

    sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a)).
    """
    return F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(lower - upper))


def discretized_logistic_log_prob(
    mean: torch.Tensor, log_scale: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """log P(x) of 8-bit levels x = k/255 under a logistic(mean, scale) discretized into 256 bins.

    Bin k covers [(k - 1/2)/255, (k + 1/2)/255]; bins 0 and 255 extend to -inf and +inf.
    """
    log_scale = log_scale.clamp(min=MIN_LOG_VAR)
    inv_scale = torch.exp(-log_scale)
    half_bin = 0.5 / 255.0
    upper = (x + half_bin - mean) * inv_scale
    lower = (x - half_bin - mean) * inv_scale
    interior = _log_sigmoid_difference(upper, lower)
    bottom = F.logsigmoid(upper)  # P(X <= upper edge of bin 0)
    top = F.logsigmoid(-lower)  # P(X >= lower edge of bin 255)
    x = x.expand_as(interior)
    log_p = torch.where(x < half_bin, bottom, torch.where(x > 1.0 - half_bin, top, interior))
    return log_p.sum(-1)


def decoder_log_prob(
    params: torch.Tensor, x: torch.Tensor, likelihood: str, const_log_var: torch.Tensor | None = None
) -> torch.Tensor:
    """log p(x | decoder output) summed over pixels.

    params: (..., P, D) decoder planes; x: (..., D) representation (broadcastable);
    const_log_var: gaussian_const only, broadcastable to (...,) then over D. Returns (...).
    """
    if likelihood == "bernoulli":
        return bernoulli_log_prob(params[..., 0, :], x)
    if likelihood == "gaussian_diag":
        return logit_gaussian_log_prob(params[..., 0, :], params[..., 1, :], x)
    if likelihood == "gaussian_const":
        assert const_log_var is not None
        log_var = clamp_keeping_gradient(const_log_var, MIN_LOG_VAR)  # exactly >= the bound
        return logit_gaussian_log_prob(params[..., 0, :], log_var.unsqueeze(-1), x)
    if likelihood == "logistic":
        return discretized_logistic_log_prob(params[..., 0, :], params[..., 1, :], x)
    raise ValueError(f"likelihood: unknown {likelihood!r}")


def decoder_mean_image(params: torch.Tensor, likelihood: str) -> torch.Tensor:
    """A displayable image in [0, 1] from decoder planes (..., P, D) -> (..., D)."""
    first = params[..., 0, :]
    if likelihood == "bernoulli":
        return torch.sigmoid(first)
    if likelihood in ("gaussian_diag", "gaussian_const"):
        # the logit-space mean mapped back through the inverse of the logit transform
        return ((torch.sigmoid(first) - LOGIT_LAMBDA) / (1.0 - 2.0 * LOGIT_LAMBDA)).clamp(0.0, 1.0)
    if likelihood == "logistic":
        return first.clamp(0.0, 1.0)
    raise ValueError(f"likelihood: unknown {likelihood!r}")
