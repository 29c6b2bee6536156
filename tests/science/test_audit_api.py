"""The audit API the service builds on: configs, units, artifacts, progress, cancellation, samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from models.audit import (
    Cancelled,
    ProgressEvent,
    assemble,
    combine,
    fold_assignment,
    load_unit,
    plan_units,
    resolve_device,
    run_audit,
    sample_images,
    save_unit,
    train_unit,
)
from models.config import AuditConfig, ModelConfig, TrainConfig

CPU = torch.device("cpu")
MODEL = ModelConfig(hidden=(32, 16), latent=4)
TRAIN = TrainConfig(epochs=2, batch_size=16)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return (load_digits().images[:60] / 16.0).astype(np.float32)[:, None]  # (60, 1, 8, 8)


def test_configs_round_trip_through_json() -> None:
    for cfg in (ModelConfig(arch="conv", hidden=(8, 4)), TrainConfig(lr=1e-4), AuditConfig(eval_every=5)):
        again = type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: ModelConfig(arch="rnn"), "arch"),  # type: ignore[arg-type]
        (lambda: ModelConfig(likelihood="poisson"), "likelihood"),  # type: ignore[arg-type]
        (lambda: ModelConfig(hidden=()), "hidden"),
        (lambda: ModelConfig(latent=0), "latent"),
        (lambda: TrainConfig(epochs=0), "epochs"),
        (lambda: TrainConfig(lr=-1.0), "lr"),
        (lambda: AuditConfig(folds=1), "folds"),
        (lambda: AuditConfig(eval_noise="sometimes"), "eval_noise"),  # type: ignore[arg-type]
        (lambda: AuditConfig(device="tpu"), "device"),
        (lambda: AuditConfig.from_dict({"bogus": 1}), "AuditConfig"),
    ],
)
def test_bad_configs_name_the_field(factory: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        factory()  # type: ignore[operator]


def test_plan_units_covers_every_model_once() -> None:
    cfg = AuditConfig(folds=10, repeats=3, models_per_unit=7)
    units = plan_units(MODEL, cfg, 100, (1, 8, 8), CPU)
    assert sorted(m for unit in units for m in unit) == list(range(30))
    assert max(len(u) for u in units) <= 7 and max(len(u) for u in units) - min(len(u) for u in units) <= 1
    auto = plan_units(MODEL, AuditConfig(), 100, (1, 8, 8), CPU)
    assert sorted(m for unit in auto for m in unit) == list(range(100))


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            resolve_device("cuda")


def test_unit_artifact_round_trip_without_pickle(digits: np.ndarray, tmp_path: Path) -> None:
    cfg = AuditConfig(folds=3, repeats=1, is_samples=4, eval_every=1, n_generated=6)
    result = train_unit(digits, MODEL, TRAIN, cfg, [0, 2], device=CPU, heldout=digits[:10])
    assert result.loglik.shape == (2, 60) and result.epoch_loglik is not None
    assert result.epoch_loglik.shape == (2, 2, 60) and result.eval_epochs.tolist() == [1, 2]
    assert result.train_loss.shape == result.heldout_loss.shape == (2, 2)
    assert result.external_loss is not None and result.external_loss.shape == (2, 2)
    assert result.samples is not None and result.samples.shape == (2, 2, 1, 8, 8)  # ceil(6 / 3) per model
    path = tmp_path / "unit.npz"
    save_unit(path, result)
    with np.load(path, allow_pickle=False) as data:
        assert all(data[name].dtype != object for name in data.files)
    loaded = load_unit(path)
    np.testing.assert_array_equal(loaded.loglik, result.loglik)
    np.testing.assert_array_equal(loaded.model_ids, [0, 2])
    assert loaded.model_config == MODEL.to_dict() and loaded.timings == result.timings


def test_units_combine_into_the_same_scores_as_run_audit(digits: np.ndarray) -> None:
    cfg = AuditConfig(folds=3, repeats=2, is_samples=4, models_per_unit=4)
    whole = run_audit(digits, MODEL, TRAIN, cfg)
    units = [train_unit(digits, MODEL, TRAIN, cfg, ids, device=CPU) for ids in ([5, 1, 3], [0, 2, 4])]
    ids = np.concatenate([u.model_ids for u in units])
    scores = combine(fold_assignment(60, 3, 2, 0), ids, np.concatenate([u.loglik for u in units]))
    np.testing.assert_allclose(scores.M, whole.scores.M, atol=1e-5)
    partial = combine(fold_assignment(60, 3, 2, 0), units[0].model_ids, units[0].loglik)
    assert np.isnan(partial.M).any() and np.isfinite(partial.M).any()


def test_progress_events_and_cooperative_cancel(digits: np.ndarray) -> None:
    events: list[ProgressEvent] = []
    cfg = AuditConfig(folds=3, repeats=1, is_samples=2)
    train_unit(digits, MODEL, TRAIN, cfg, [0, 1], device=CPU, progress=events.append)
    assert [(e.epoch, e.phase) for e in events] == [(1, "train"), (2, "train"), (2, "eval")]
    assert events[0].model_ids == (0, 1) and events[0].epochs == 2
    polls: list[int] = []

    def stop_after_first_epoch() -> bool:
        polls.append(1)
        return len(polls) > 1

    with pytest.raises(Cancelled):
        train_unit(digits, MODEL, TRAIN, cfg, [0], device=CPU, should_stop=stop_after_first_epoch)
    assert len(polls) == 2


def test_audit_result_quantiles_epochs_and_samples(digits: np.ndarray) -> None:
    cfg = AuditConfig(folds=3, repeats=1, is_samples=4, eval_every=1, n_generated=5)
    result = run_audit(digits, MODEL, TrainConfig(epochs=3, batch_size=16), cfg)
    assert result.loglik.shape == (3, 60) and result.model_ids.tolist() == [0, 1, 2]
    assert result.eval_epochs.tolist() == [1, 2, 3] and result.epoch_quantiles.shape == (3, 3)
    np.testing.assert_allclose(result.epoch_quantiles[-1], list(result.quantiles.values()))
    assert result.samples is not None and result.samples.shape == (5, 1, 8, 8)
    assert result.samples.min() >= 0.0 and result.samples.max() <= 1.0
    assert result.timings["decoder_passes_per_second"] > 0 and result.timings["per_model_step_ms"] > 0


def test_sample_images_round_robin_over_models() -> None:
    per_model = np.arange(3 * 2).reshape(3, 2, 1, 1, 1).astype(np.float32)  # model e, sample j -> 2e + j
    pooled = sample_images(per_model, 4)
    assert pooled.ravel().tolist() == [0, 2, 4, 1]
    with pytest.raises(ValueError, match="n_generated"):
        sample_images(per_model, 7)


@pytest.mark.parametrize(
    ("images", "field"),
    [
        (np.zeros((4, 8, 8), np.float32), "images"),
        (np.full((4, 1, 8, 8), np.nan, np.float32), "images"),
        (np.full((4, 1, 8, 8), 2.0, np.float32), "images"),
    ],
)
def test_bad_images_name_the_field(images: np.ndarray, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        train_unit(images, MODEL, TRAIN, AuditConfig(folds=2, repeats=1), [0], device=CPU)


def test_bad_model_ids_and_heldout_name_the_field(digits: np.ndarray) -> None:
    cfg = AuditConfig(folds=3, repeats=1)
    with pytest.raises(ValueError, match="model_ids"):
        train_unit(digits, MODEL, TRAIN, cfg, [3], device=CPU)
    with pytest.raises(ValueError, match="heldout"):
        train_unit(digits, MODEL, TRAIN, cfg, [0], device=CPU, heldout=np.zeros((5, 1, 4, 4), np.float32))


def test_assemble_from_artifacts_keeps_the_generated_samples(digits: np.ndarray, tmp_path: Path) -> None:
    cfg = AuditConfig(folds=3, repeats=1, is_samples=2)
    heldout = digits[:7]
    units = [train_unit(digits, MODEL, TRAIN, cfg, ids, device=CPU, heldout=heldout) for ids in ([2], [0, 1])]
    for i, unit in enumerate(units):
        save_unit(tmp_path / f"{i}.npz", unit)
    loaded = [load_unit(tmp_path / f"{i}.npz") for i in range(2)]
    with_heldout = assemble(loaded, 60, cfg, len(heldout), wall=1.0)
    assert with_heldout.samples is not None and with_heldout.samples.shape == (7, 1, 8, 8)
    without = assemble(loaded, 60, cfg, None, wall=1.0)  # ceil(7 / 3) = 3 per model, all kept
    assert without.samples is not None and without.samples.shape == (9, 1, 8, 8)
    np.testing.assert_array_equal(without.samples[:7], with_heldout.samples)
    assert with_heldout.model_ids.tolist() == [0, 1, 2] and with_heldout.timings["wall_seconds"] == 1.0


@pytest.mark.parametrize("threads", [1, 2])
def test_conv_on_cpu_is_planned_one_model_per_unit(threads: int) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        conv_units = plan_units(
            ModelConfig(arch="conv"), AuditConfig(folds=4, repeats=1), 100, (1, 8, 8), CPU
        )
        mlp_units = plan_units(MODEL, AuditConfig(folds=4, repeats=1), 100, (1, 8, 8), CPU)
    finally:
        torch.set_num_threads(before)
    assert conv_units == [[0], [1], [2], [3]]
    assert mlp_units == [[0, 1, 2, 3]]
