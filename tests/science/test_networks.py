"""Network shapes, the conv padding rule, and stacked (batched) models equal their plain members."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from models.config import ModelConfig
from models.ensemble import StackedConvVAE, StackedMLPVAE, stack_models
from models.networks import MLPVAE, ConvVAE, build_vae, conv_geometry


@pytest.fixture
def float64() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize(
    ("shape", "side", "stages"),
    [((1, 8, 8), 16, 2), ((1, 28, 28), 32, 3), ((3, 32, 32), 32, 3), ((1, 20, 40), 64, 4)],
)
def test_conv_geometry_pads_to_a_power_of_two_canvas(
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
