"""MR-GAN training (SPEC §5): rejection lowers copying, bookkeeping, determinism, cancel, checkpoints."""

from __future__ import annotations

import io

import pytest
import torch

from models.embeddings import EmbeddingConfig
from models.gan import (
    Cancelled,
    GanConfig,
    MrganConfig,
    MrganProgress,
    MrganRun,
    SweepConfig,
    build_feature_space,
    config_from_dict,
    resolve_taus,
    run_tau_unit,
    sample_images,
    train_mrgan,
)
from models.gan.networks import build_gan
from tests.gan.conftest import DigitSplits

CPU = torch.device("cpu")


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")
def test_rejection_leaves_fewer_samples_within_tau_than_plain_training(digit_splits: DigitSplits) -> None:
    # 100 training digits and a fast learning rate make the plain GAN memorize within seconds.
    train = digit_splits.train[:100]
    space = build_feature_space(train, digit_splits.test, EmbeddingConfig())
    sweep = SweepConfig(taus=(0.0,), tau_quantiles=(0.25,), n_generated=500, cells=3)
    plain_tau, tau = resolve_taus(space, sweep)
    assert plain_tau == 0.0 and tau == pytest.approx(float(torch.quantile(space.heldout_distance, 0.25)))
    recipe = MrganConfig(steps=3000, lr=1e-3, seed=0)
    plain = run_tau_unit(train, space, plain_tau, GanConfig(), recipe, sweep)
    rejecting = run_tau_unit(train, space, tau, GanConfig(), recipe, sweep)
    plain_within = float((plain.generated_distance <= tau).double().mean())
    assert plain_within > 0.3  # the plain GAN does reproduce training digits
    assert rejecting.within_tau_share < plain_within
    assert plain.run.rejection_rate == 0.0 and 0.0 < rejecting.run.rejection_rate < 1.0
    for unit in (plain, rejecting):
        summary = unit.summary()
        assert summary["frechet_distance"] > 0 and torch.isfinite(torch.tensor(summary["c_t"]))
        assert unit.copy_count.shape == (100,) and int(unit.copy_count.sum()) <= 500
        assert unit.generated_distance.shape == (500,)
    # SPEC §5 radius count at the unit's tau: every generated sample within tau of its nearest training
    # image is counted there, and possibly at other training images within tau too
    within = rejecting.within_tau_count
    assert within.shape == (100,)
    assert int(within.sum()) >= int((rejecting.generated_distance <= tau).sum()) > 0
    assert int(within.sum()) <= 500 * int((within > 0).sum())


def _tiny_run(train: torch.Tensor, tau: float, **overrides: object) -> MrganRun:
    space = build_feature_space(train, train[:50], EmbeddingConfig())
    cfg = MrganConfig(**{"steps": 30, "batch_size": 16, "seed": 5, **overrides})  # type: ignore[arg-type]
    run = train_mrgan(train, GanConfig(width=32), cfg, tau, space.rejector)
    return run


def test_training_is_deterministic_for_a_seed(digit_splits: DigitSplits) -> None:
    run_a, run_b = _tiny_run(digit_splits.train, 0.05), _tiny_run(digit_splits.train, 0.05)
    weights_a, weights_b = run_a.generator.state_dict(), run_b.generator.state_dict()
    for name, value in weights_a.items():
        assert torch.equal(value, weights_b[name])
    assert run_a.fakes_rejected == run_b.fakes_rejected
    assert run_a.generator_loss == run_b.generator_loss


@pytest.mark.parametrize("mode", ["G", "GD"])
def test_all_rejected_draws_fresh_batches_then_skips_the_step(digit_splits: DigitSplits, mode: str) -> None:
    # Cosine distances never exceed 2, so tau = 2 rejects every fake.
    torch.manual_seed(5)
    untrained, _ = build_gan(GanConfig(width=32))
    run = _tiny_run(digit_splits.train, 2.0, mode=mode, max_redraws=2)
    assert run.skipped_generator_steps == 30
    assert run.redraws == 60
    assert run.rejection_rate == 1.0
    assert run.fakes_scored == 30 * 3 * 16
    # The generator's weights never took a step (batch-norm running statistics do follow the forwards).
    trained = dict(run.generator.named_parameters())
    for name, value in untrained.named_parameters():
        assert torch.equal(value, trained[name])


def test_progress_and_cooperative_cancel(digit_splits: DigitSplits) -> None:
    events: list[MrganProgress] = []
    cfg = MrganConfig(steps=50, batch_size=8)
    train_mrgan(digit_splits.train, GanConfig(width=16), cfg, 0.0, None, progress=events.append)
    assert [e.step for e in events] == [25, 50] and events[-1].steps == 50
    polls = iter([False, True])
    with pytest.raises(Cancelled):
        train_mrgan(digit_splits.train, GanConfig(width=16), cfg, 0.0, None, should_stop=lambda: next(polls))


def test_tau_needs_a_rejector_and_shapes_must_match(digit_splits: DigitSplits) -> None:
    with pytest.raises(ValueError, match="needs a rejector"):
        train_mrgan(digit_splits.train, GanConfig(), MrganConfig(steps=1), 0.1, None)
    with pytest.raises(ValueError, match="the GAN expects"):
        train_mrgan(digit_splits.train, GanConfig(image_shape=(1, 28, 28)), MrganConfig(steps=1), 0.0, None)


@pytest.mark.parametrize("size", [28, 32])
def test_dcgan_trains_on_28_and_32_px(size: int) -> None:
    images = torch.rand(64, 1, size, size, generator=torch.Generator().manual_seed(size))
    gan = GanConfig.for_images((1, size, size))
    assert gan.arch == "dcgan"
    gan = GanConfig(arch="dcgan", image_shape=(1, size, size), latent_dim=16, width=8)
    space = build_feature_space(images, images[:16], EmbeddingConfig())
    run = train_mrgan(images, gan, MrganConfig(steps=3, batch_size=8), 0.01, space.rejector)
    samples = sample_images(run.generator, 5, 16, seed=0, device=CPU)
    assert samples.shape == (5, 1, size, size) and 0.0 <= float(samples.min()) <= float(samples.max()) <= 1.0


def test_dcgan_refuses_other_sizes() -> None:
    with pytest.raises(ValueError, match="dcgan needs square 28 or 32 px"):
        GanConfig(arch="dcgan", image_shape=(1, 8, 8))


def test_checkpoint_carries_config_and_loads_without_pickle(digit_splits: DigitSplits) -> None:
    run = _tiny_run(digit_splits.train, 0.0)
    buffer = io.BytesIO()
    torch.save(run.checkpoint(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    gan = config_from_dict(GanConfig, loaded["gan_config"])
    assert config_from_dict(MrganConfig, loaded["train_config"]).seed == 5
    generator, _ = build_gan(gan)
    generator.load_state_dict(loaded["generator"])
    expected = sample_images(run.generator, 4, gan.latent_dim, seed=1, device=CPU)
    assert torch.equal(sample_images(generator, 4, gan.latent_dim, seed=1, device=CPU), expected)
