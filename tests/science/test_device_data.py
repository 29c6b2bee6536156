"""A unit's data on its device: compact storage that changes no number, and scoring noise that does
not depend on the device (issue 11: common random numbers across CPU and CUDA units)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import models.noise
from models.audit import train_unit
from models.config import AuditConfig, ModelConfig, TrainConfig
from models.device_data import PixelStore, fixed_representation
from models.imageset import image_set_from_array
from models.likelihoods import represent
from models.noise import NOISE_BLOCK, Purpose, blocked_noise, noise_block

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits_uint8() -> np.ndarray:
    return np.rint(load_digits().images[:70] * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (70, 1, 8, 8)


def test_uint8_levels_read_as_the_float32_intensities_numpy_makes() -> None:
    levels = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    store = PixelStore.from_array(levels, CPU)
    expected = levels.astype(np.float32) / np.float32(255.0)
    np.testing.assert_array_equal(store.intensities(slice(None)).numpy(), expected)
    assert store.values.dtype == torch.uint8 and store.values.data_ptr() == levels.ctypes.data  # no copy


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian_diag", "logistic"])
def test_uint8_input_trains_bit_identical_models(digits_uint8: np.ndarray, likelihood: str) -> None:
    floats = digits_uint8.astype(np.float32) / np.float32(255.0)
    model = ModelConfig(hidden=(32, 16), latent=4, likelihood=likelihood)  # type: ignore[arg-type]
    train, audit = TrainConfig(epochs=2, batch_size=16), AuditConfig(folds=3, repeats=1, is_samples=4)
    heldout = digits_uint8[:9]
    a = train_unit(digits_uint8, model, train, audit, [0, 1], device=CPU, heldout=heldout)
    b = train_unit(floats, model, train, audit, [0, 1], device=CPU, heldout=floats[:9])
    np.testing.assert_array_equal(a.loglik, b.loglik)
    np.testing.assert_array_equal(a.train_loss, b.train_loss)
    assert a.external_loss is not None and b.external_loss is not None
    np.testing.assert_array_equal(a.external_loss, b.external_loss)


@pytest.mark.parametrize(
    ("likelihood", "dtype"),
    [("bernoulli", torch.uint8), ("logistic", torch.uint8), ("gaussian_const", torch.float32)],
)
def test_fixed_representation_is_compact_and_exact(
    digits_uint8: np.ndarray, likelihood: str, dtype: torch.dtype
) -> None:
    store = PixelStore.from_array(digits_uint8, CPU)
    stored = fixed_representation(store, likelihood, seed=3, index=0)
    assert stored.codes.dtype == dtype
    if likelihood == "logistic":  # the 8-bit levels themselves: no second copy
        assert stored.codes.data_ptr() == store.values.data_ptr()
    # the same numbers as representing the float images with the whole set's noise at once
    noise = blocked_noise("rand", (3, Purpose.EVAL_REPR, 0), 0, store.count, store.shape[1:], CPU)
    expected = represent(store.intensities(slice(None)), noise, likelihood)
    torch.testing.assert_close(stored.rows(slice(None)), expected, rtol=0, atol=0)


def test_image_set_keeps_the_uint8_original_and_reads_floats_from_it() -> None:
    raw = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4) * 7
    images = image_set_from_array(raw, name="x")
    assert images.pixels.dtype == np.uint8 and images.pixels.shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(images.images, raw[:, None].astype(np.float32) / np.float32(255.0))
    assert images.images is images.images  # made once
    assert images.as_uint8().base is not None and not images.as_uint8().flags.writeable
    assert images.describe()["max"] == float(np.float32(raw.max()) / np.float32(255.0))


def test_scoring_noise_is_identical_whatever_device_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    key, tail = (11, int(Purpose.EVAL_EPS)), (5, 3)
    reference = blocked_noise("randn", key, 10, 150, tail, CPU)
    # a sample's noise is its block's, whatever range asks for it
    block = noise_block("randn", key, 1, tail)
    torch.testing.assert_close(reference[NOISE_BLOCK - 10 : 2 * NOISE_BLOCK - 10], block, rtol=0, atol=0)
    real_devices = [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in real_devices:
        drawn = blocked_noise("randn", key, 10, 150, tail, device)
        assert drawn.device.type == device.type
        torch.testing.assert_close(drawn.cpu(), reference, rtol=0, atol=0)
    # without a GPU: naming CUDA devices changes nothing but the final move, which receives the CPU draw
    moved: list[tuple[torch.Tensor, torch.device]] = []

    def record_move(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        moved.append((tensor, device))
        return tensor

    monkeypatch.setattr(models.noise, "to_device", record_move)
    for name in ("cuda", "cuda:1", "mps"):
        drawn = blocked_noise("randn", key, 10, 150, tail, name)
        torch.testing.assert_close(drawn, reference, rtol=0, atol=0)
        assert moved[-1][0].device == CPU and moved[-1][1] == torch.device(name)
