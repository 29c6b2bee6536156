"""What makes a CUDA unit safe, checked on CPU: sizing from the job's real batch and image size with
the importance-sampling chunk's own budget, out-of-memory splitting that changes no number, the
recorded device and precision, and a training loop that never waits for the device within an epoch."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import models.training
from models.audit import UnitTooLarge, assemble, load_unit, save_unit, train_unit
from models.config import AuditConfig, ModelConfig, TrainConfig
from models.precision import policy_for, precision_scope
from models.units import cuda_memory_plan, training_bytes_per_model

CPU = torch.device("cpu")
MODEL = ModelConfig(hidden=(32, 16), latent=4)
TRAIN = TrainConfig(epochs=2, batch_size=16)
AUDIT = AuditConfig(folds=3, repeats=2, is_samples=4)
GiB = 2**30


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return (load_digits().images[:60] / 16.0).astype(np.float32)[:, None]  # (60, 1, 8, 8)


def test_cuda_unit_size_uses_the_jobs_batch_and_image_size_and_reserves_the_is_chunk() -> None:
    paper = ModelConfig(hidden=(512, 256), latent=16)
    audit = AuditConfig(folds=10, repeats=10)
    small = cuda_memory_plan(paper, audit, 60000, (1, 32, 32), 64, 2 * GiB)
    big_batch = cuda_memory_plan(paper, audit, 60000, (1, 32, 32), 1024, 2 * GiB)
    big_images = cuda_memory_plan(paper, audit, 60000, (3, 64, 64), 64, 2 * GiB)
    assert big_batch.per_model > small.per_model and big_batch.models < small.models
    assert big_images.per_model > small.per_model and big_images.models < small.models
    assert small.per_model == training_bytes_per_model(paper, (1, 32, 32), 64)
    # the IS chunk keeps its own share: what the stacks get plus data plus chunk fits the free memory
    assert small.is_chunk >= 2 * GiB // 4
    assert small.models * small.per_model + small.data + small.is_chunk <= 2 * GiB
    explicit = cuda_memory_plan(paper, AuditConfig(folds=10, repeats=10, is_chunk_bytes=GiB), 60000,
                                (1, 32, 32), 64, 2 * GiB)  # fmt: skip
    assert explicit.is_chunk >= GiB and explicit.models < small.models
    # an H100's 80 GB holds the whole paper audit (100 models) in one unit
    assert cuda_memory_plan(paper, audit, 60000, (1, 32, 32), 64, 79 * GiB).models == 100


def _units(digits: np.ndarray, groups: list[list[int]]) -> list[Any]:
    return [train_unit(digits, MODEL, TRAIN, AUDIT, ids, device=CPU) for ids in groups]


def test_out_of_memory_in_training_retrains_the_unit_in_halves(
    digits: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _units(digits, [[0, 1], [2, 3]])
    real_epoch = models.training._train_epoch
    stacks_tried: list[int] = []

    def small_device(ctx: Any, stack: Any, *args: Any) -> torch.Tensor:
        stacks_tried.append(stack.n_models)
        if stack.n_models > 2:
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        return real_epoch(ctx, stack, *args)

    monkeypatch.setattr(models.training, "_train_epoch", small_device)
    split = train_unit(digits, MODEL, TRAIN, AUDIT, [0, 1, 2, 3], device=CPU)
    assert stacks_tried[0] == 4 and set(stacks_tried[1:]) == {2}
    assert split.model_ids.tolist() == [0, 1, 2, 3] and split.stacks == 2
    # exact: the same numbers as units of two models trained directly
    np.testing.assert_array_equal(split.loglik, np.concatenate([r.loglik for r in reference]))
    np.testing.assert_array_equal(split.train_loss, np.concatenate([r.train_loss for r in reference]))


def test_a_model_that_does_not_fit_alone_is_a_clear_error(
    digits: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_memory(*args: Any) -> torch.Tensor:
        raise torch.OutOfMemoryError("injected")

    monkeypatch.setattr(models.training, "_train_epoch", no_memory)
    with pytest.raises(UnitTooLarge, match=r"does not fit .* even alone .*batch size 16"):
        train_unit(digits, MODEL, TRAIN, AUDIT, [0, 1], device=CPU)


def test_out_of_memory_in_importance_sampling_halves_the_chunk_budget(
    digits: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = AuditConfig(folds=3, repeats=2, is_samples=4, is_chunk_bytes=2**24)
    reference = train_unit(digits, MODEL, TRAIN, audit, [0, 1], device=CPU)
    real_is = models.training.importance_log_likelihood
    budgets: list[int] = []

    def small_device(*args: Any) -> torch.Tensor:
        budgets.append(args[7])
        if args[7] > 2**22:
            raise torch.OutOfMemoryError("injected")
        return real_is(*args)

    monkeypatch.setattr(models.training, "importance_log_likelihood", small_device)
    result = train_unit(digits, MODEL, TRAIN, audit, [0, 1], device=CPU)
    assert budgets == [2**24, 2**23, 2**22]
    np.testing.assert_array_equal(result.loglik, reference.loglik)


def test_unit_records_device_and_precision_and_old_artifacts_still_load(
    digits: np.ndarray, tmp_path: Path
) -> None:
    result = train_unit(digits, MODEL, TRAIN, AUDIT, [0, 1], device=CPU)
    assert result.device == "cpu" and result.device_name and result.stacks == 1
    assert result.precision == policy_for(CPU) == {"training": "fp32", "likelihood": "fp32"}
    save_unit(tmp_path / "new.npz", result)
    again = load_unit(tmp_path / "new.npz")
    assert (again.device_name, again.precision, again.stacks) == (result.device_name, result.precision, 1)
    # an artifact written before these fields existed
    with np.load(tmp_path / "new.npz", allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files if name != "meta"}
        meta = json.loads(str(data["meta"]))
    for key in ("device_name", "precision", "stacks"):
        del meta[key]
    with open(tmp_path / "old.npz", "wb") as handle:
        np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)
    old = load_unit(tmp_path / "old.npz")
    assert (old.device_name, old.precision, old.stacks) == ("", None, 0)
    np.testing.assert_array_equal(old.loglik, result.loglik)
    env = assemble([result, old], 60, AUDIT, None, 1.0).environment
    assert env["devices"] == sorted({"cpu", f"cpu ({result.device_name})"})
    assert [u["model_ids"] for u in env["units"]] == [[0, 1], [0, 1]]
    assert {"training": "fp32", "likelihood": "fp32"} in env["precision"] and None in env["precision"]


def test_precision_scope_is_a_no_op_on_cpu_and_restores_cuda_switches() -> None:
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    with precision_scope(CPU, "training"):
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        with precision_scope(cuda, "likelihood"):
            assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before


# --- host syncs: the training loop must not wait for the device within an epoch --------------------

_SYNCING = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")


@pytest.fixture
def count_syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts every call that makes the host wait for a tensor's value (and CUDA synchronize)."""
    calls: Counter[str] = Counter()

    def counting(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return method(*args, **kwargs)

        return wrapper

    for name in _SYNCING:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch.cuda, "synchronize", counting("synchronize", torch.cuda.synchronize))
    yield calls


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian_diag"])
def test_host_waits_are_per_epoch_never_per_step(
    digits: np.ndarray, count_syncs: Counter[str], likelihood: str
) -> None:
    model = ModelConfig(hidden=(16,), latent=2, likelihood=likelihood)  # type: ignore[arg-type]
    audit = AuditConfig(folds=3, repeats=1, is_samples=2)
    per_run = []
    for batch_size in (40, 4):  # 1 step per epoch vs 10 steps per epoch
        count_syncs.clear()
        train_unit(digits, model, TrainConfig(epochs=3, batch_size=batch_size), audit, [0, 1], device=CPU)
        per_run.append(dict(count_syncs))
    assert per_run[0] == per_run[1]  # ten times the steps, not one more wait
    # and a handful per epoch: the loss read-back, held-out loss, progress
    assert sum(per_run[1].values()) <= 3 * 4 + 4
