"""Network shapes, the conv padding rule, and stacked (batched) models equal their plain members."""

from __future__ import annotations

import pytest
import torch

from models.config import ModelConfig
from models.ensemble import StackedConvVAE, StackedMLPVAE, stack_models
from models.likelihoods import MIN_LOG_VAR, decoder_log_prob
from models.networks import MLPVAE, ConvVAE, build_vae, conv_geometry, count_parameters


@pytest.mark.parametrize(
    ("shape", "side", "stages"),
    [((1, 8, 8), 8, 2), ((1, 28, 28), 32, 4), ((3, 32, 32), 32, 4), ((1, 20, 40), 64, 5), ((1, 3, 3), 4, 1)],
)
def test_conv_geometry_pads_to_a_power_of_two_canvas_down_to_two_by_two(
    shape: tuple[int, int, int], side: int, stages: int
) -> None:
    geometry = conv_geometry(shape)
    assert (geometry.side, geometry.stages) == (side, stages)


def test_conv_rejects_images_it_cannot_handle_naming_the_field() -> None:
    with pytest.raises(ValueError, match="image_shape"):
        conv_geometry((1, 200, 200))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian_diag", "gaussian_const", "logistic"])
@pytest.mark.parametrize(
    ("arch", "shape"), [("mlp", (1, 8, 8)), ("conv", (1, 28, 28)), ("conv", (3, 32, 32))]
)
def test_output_shapes(arch: str, shape: tuple[int, int, int], likelihood: str) -> None:
    cfg = ModelConfig(arch=arch, likelihood=likelihood, hidden=(32, 16), latent=5, base_filters=4)  # type: ignore[arg-type]
    model = build_vae(cfg, shape, init_seed=0)
    mean, log_var = model.encode(torch.rand(3, *shape))
    assert mean.shape == log_var.shape == (3, 5)
    planes = 2 if likelihood in ("gaussian_diag", "logistic") else 1
    assert model.decode(mean).shape == (3, planes, shape[0] * shape[1] * shape[2])
    assert (model.const_log_var is not None) == (likelihood == "gaussian_const")


def test_reference_mlp_is_512_256_16_with_relu() -> None:
    model = build_vae(ModelConfig(), (1, 32, 32), init_seed=0)
    assert isinstance(model, MLPVAE)
    widths = [(layer.in_features, layer.out_features) for layer in model.encoder_layers]
    assert widths == [(1024, 512), (512, 256)]
    assert model.encoder_head.out_features == 32 and model.latent == 16


def test_conv_padding_never_reaches_the_likelihood() -> None:
    cfg = ModelConfig(arch="conv", base_filters=4, latent=3)
    model = build_vae(cfg, (1, 28, 28), init_seed=0)
    assert isinstance(model, ConvVAE)
    assert model.decode(torch.zeros(2, 3)).shape[-1] == 28 * 28


def test_initialisation_depends_only_on_the_seed() -> None:
    cfg = ModelConfig(hidden=(16,), latent=2)
    a, b, c = (build_vae(cfg, (1, 4, 4), s) for s in (5, 5, 6))
    heads = [m.get_parameter("encoder_head.weight") for m in (a, b, c)]
    assert torch.equal(heads[0], heads[1])
    assert not torch.equal(heads[0], heads[2])


def _run_all(models: list[torch.nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    means, decoded = [], []
    for e, model in enumerate(models):
        mean, log_var = model.encode(x[e])  # type: ignore[operator]
        means.append(torch.cat([mean, log_var], -1))
        decoded.append(model.decode(mean))  # type: ignore[operator]
    return torch.stack(means), torch.stack(decoded)


@pytest.mark.parametrize(
    ("arch", "shape"), [("mlp", (1, 8, 8)), ("conv", (1, 8, 8)), ("conv", (3, 32, 32)), ("conv", (1, 28, 28))]
)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_stack_equals_its_members(float64: None, arch: str, shape: tuple[int, int, int], mode: str) -> None:
    cfg = ModelConfig(arch=arch, likelihood="gaussian_const", hidden=(24, 12), latent=4, base_filters=4)  # type: ignore[arg-type]
    models = [build_vae(cfg, shape, init_seed=s) for s in range(3)]
    stack = stack_models(models)
    assert isinstance(stack, StackedMLPVAE if arch == "mlp" else StackedConvVAE)
    for module in [*models, stack]:
        module.train(mode == "train")
    x = torch.rand(3, 5, *shape)  # (E, B, C, H, W)
    mean, log_var = stack.encode(x)
    expected_enc, expected_dec = _run_all(list(models), x)
    torch.testing.assert_close(torch.cat([mean, log_var], -1), expected_enc, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(stack.decode(mean), expected_dec, rtol=1e-10, atol=1e-10)
    const = stack.const_log_var()
    assert const is not None and const.shape == (3,)


def test_stacked_gradients_equal_member_gradients(float64: None) -> None:
    cfg = ModelConfig(arch="conv", hidden=(8,), latent=2, base_filters=2)
    models = [build_vae(cfg, (1, 8, 8), init_seed=s) for s in range(2)]
    stack = stack_models(models)
    x = torch.rand(2, 4, 1, 8, 8)
    stack.decode(stack.encode(x)[0]).pow(2).sum().backward()
    assert isinstance(stack, StackedConvVAE)
    stacked_grad = stack.get_parameter("encoder_convs.1.weight").grad
    for e, model in enumerate(models):
        model.decode(model.encode(x[e])[0]).pow(2).sum().backward()
        member = model.get_submodule("encoder_convs.1")
        assert isinstance(member, torch.nn.Conv2d) and member.weight.grad is not None
        rows = member.weight.shape[0]
        assert stacked_grad is not None
        torch.testing.assert_close(stacked_grad[e * rows : (e + 1) * rows], member.weight.grad)


def test_reference_conv_vae_has_exactly_the_papers_parameter_count() -> None:
    # SPEC §2: 3x32x32, F = 32, latent 64, diagonal Gaussian (P = 2 planes per channel)
    cfg = ModelConfig(arch="conv", base_filters=32, latent=64, likelihood="gaussian_diag")
    assert count_parameters(cfg, (3, 32, 32)) == 1_579_456
    # the constant-variance Gaussian: P = 1 and one learned scalar
    const = ModelConfig(arch="conv", base_filters=32, latent=32, likelihood="gaussian_const")
    planes_saved = 32 * 3 * 16  # the last ConvT emits C instead of 2C planes
    latent_saved = 2 * (32 * (1024 + 1)) + 32 * 256 * 4  # heads and the first ConvT shrink with Z = 32
    assert count_parameters(const, (3, 32, 32)) == 1_579_456 - planes_saved - latent_saved + 1


LAYER_KINDS = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.BatchNorm2d, torch.nn.Linear)


def _layer_outputs(model: torch.nn.Module, run: object) -> list[tuple[str, tuple[int, ...]]]:
    shapes: list[tuple[str, tuple[int, ...]]] = []
    hooks = [
        module.register_forward_hook(
            lambda mod, _inp, out, name=name: shapes.append((type(mod).__name__, tuple(out.shape[1:])))
        )
        for name, module in model.named_modules()
        if isinstance(module, LAYER_KINDS)
    ]
    run()  # type: ignore[operator]
    for hook in hooks:
        hook.remove()
    return shapes


def test_reference_conv_vae_layer_by_layer() -> None:
    cfg = ModelConfig(arch="conv", base_filters=32, latent=64, likelihood="gaussian_diag")
    model = build_vae(cfg, (3, 32, 32), init_seed=0)
    assert isinstance(model, ConvVAE)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert all(conv.bias is None for conv in convs)  # all convolutions without bias
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    encoder = _layer_outputs(model, lambda: model.encode(x))
    assert encoder == [
        ("Conv2d", (32, 16, 16)),  # no batch norm after the first stage
        ("Conv2d", (64, 8, 8)), ("BatchNorm2d", (64, 8, 8)),
        ("Conv2d", (128, 4, 4)), ("BatchNorm2d", (128, 4, 4)),
        ("Conv2d", (256, 2, 2)), ("BatchNorm2d", (256, 2, 2)),
        ("Linear", (64,)), ("Linear", (64,)),  # mean and log-variance from 8F * 2 * 2 = 1024
    ]  # fmt: skip
    assert model.encoder_mean.in_features == model.encoder_log_var.in_features == 1024
    decoder = _layer_outputs(model, lambda: model.decode(torch.randn(2, 64)))
    assert decoder == [
        ("ConvTranspose2d", (256, 2, 2)), ("BatchNorm2d", (256, 2, 2)),  # from z as (64, 1, 1), kernel 2
        ("ConvTranspose2d", (128, 4, 4)), ("BatchNorm2d", (128, 4, 4)),
        ("ConvTranspose2d", (64, 8, 8)), ("BatchNorm2d", (64, 8, 8)),
        ("ConvTranspose2d", (32, 16, 16)), ("BatchNorm2d", (32, 16, 16)),
        ("ConvTranspose2d", (6, 32, 32)),  # P * C planes, no norm
    ]  # fmt: skip
    first = model.decoder_input
    assert (first.kernel_size, first.stride, first.padding) == ((2, 2), (1, 1), (0, 0))
    # the whole forward pass against the spec written out with torch.nn.functional
    fn = torch.nn.functional

    def norm(h: torch.Tensor, bn: torch.nn.Module) -> torch.Tensor:
        assert isinstance(bn, torch.nn.BatchNorm2d)
        return fn.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    h = fn.leaky_relu(fn.conv2d(x, model.encoder_convs[0].weight, stride=2, padding=1), 0.2)
    for conv, bn in zip(model.encoder_convs[1:], model.encoder_norms, strict=True):
        h = fn.leaky_relu(norm(fn.conv2d(h, conv.weight, stride=2, padding=1), bn), 0.2)
    flat = h.flatten(1)
    mean, log_var = model.encode(x)
    torch.testing.assert_close(mean, fn.linear(flat, model.encoder_mean.weight, model.encoder_mean.bias))
    torch.testing.assert_close(
        log_var, fn.linear(flat, model.encoder_log_var.weight, model.encoder_log_var.bias)
    )
    h = fn.relu(norm(fn.conv_transpose2d(mean[:, :, None, None], first.weight), model.decoder_input_norm))
    for conv, bn in zip(model.decoder_convs[:-1], model.decoder_norms, strict=True):
        h = fn.relu(norm(fn.conv_transpose2d(h, conv.weight, stride=2, padding=1), bn))
    out = fn.conv_transpose2d(h, model.decoder_convs[-1].weight, stride=2, padding=1)  # (B, 6, 32, 32)
    torch.testing.assert_close(model.decode(mean), out.unflatten(1, (2, 3)).flatten(2))


@pytest.mark.parametrize(
    ("shape", "encoder_sides", "top"),
    [((1, 8, 8), [4, 2], 64), ((1, 28, 28), [16, 8, 4, 2], 256), ((3, 64, 64), [32, 16, 8, 4, 2], 512)],
)
def test_other_canvas_sizes_extend_the_pattern_down_to_two_by_two(
    shape: tuple[int, int, int], encoder_sides: list[int], top: int
) -> None:
    cfg = ModelConfig(arch="conv", base_filters=32, latent=16, likelihood="bernoulli")
    model = build_vae(cfg, shape, init_seed=0)
    model.eval()
    encoder = _layer_outputs(model, lambda: model.encode(torch.rand(2, *shape)))
    conv_sides = [out[1] for kind, out in encoder if kind == "Conv2d"]
    assert conv_sides == encoder_sides
    filters = [out[0] for kind, out in encoder if kind == "Conv2d"]
    assert filters == [32 * 2**i for i in range(len(encoder_sides))]
    assert model.encoder_mean.in_features == top * 4
    assert model.decode(torch.randn(2, 16)).shape == (2, 1, shape[0] * shape[1] * shape[2])


def test_pad_to_builds_the_model_for_the_padded_images() -> None:
    cfg = ModelConfig(hidden=(16,), latent=2, pad_to=32)
    model = build_vae(cfg, (1, 28, 28), init_seed=0)
    assert isinstance(model, MLPVAE) and model.pixels == 1024
    assert count_parameters(cfg, (1, 28, 28)) == count_parameters(cfg, (1, 32, 32))
    with pytest.raises(ValueError, match="pad_to"):
        build_vae(cfg, (1, 40, 40), init_seed=0)


def test_gaussian_const_starts_at_minus_two_and_its_clamp_does_not_freeze_it() -> None:
    for arch in ("mlp", "conv"):
        cfg = ModelConfig(arch=arch, likelihood="gaussian_const", hidden=(8,), latent=2, base_filters=2)  # type: ignore[arg-type]
        model = build_vae(cfg, (1, 8, 8), init_seed=0)
        assert model.const_log_var is not None and model.const_log_var.item() == -2.0
    params = torch.zeros(3, 1, 5)
    x = torch.full((3, 5), 0.5)
    for start in (-2.0, -7.0, -9.0, -30.0):
        log_var = torch.tensor(start, requires_grad=True)
        log_p = decoder_log_prob(params, x, "gaussian_const", log_var).sum()
        log_p.backward()
        assert log_var.grad is not None and log_var.grad.item() != 0.0  # never a zero gradient
        if start <= MIN_LOG_VAR:
            # scored at the bound, with the gradient the bound has
            at_bound = torch.tensor(MIN_LOG_VAR, requires_grad=True)
            expected = decoder_log_prob(params, x, "gaussian_const", at_bound).sum()
            expected.backward()
            assert log_p.item() == pytest.approx(expected.item())
            assert log_var.grad.item() == pytest.approx(at_bound.grad.item())  # type: ignore[union-attr]


def test_gaussian_const_log_variance_recovers_from_below_the_bound() -> None:
    # data far from the mean want a large variance: gradient descent must move the scalar back up
    log_var = torch.nn.Parameter(torch.tensor(-9.0))
    optimizer = torch.optim.Adam([log_var], lr=0.1)
    params, x = torch.zeros(4, 1, 6), torch.full((4, 6), 0.9)
    for _ in range(100):
        optimizer.zero_grad()
        (-decoder_log_prob(params, x, "gaussian_const", log_var).sum()).backward()
        optimizer.step()
    assert log_var.item() > MIN_LOG_VAR
