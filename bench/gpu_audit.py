"""The paper's audit on one CUDA device, measured: batched (all K*L models in one unit) vs sequential.

Configuration (SPEC §1-2, the paper's MNIST setting on Fashion-MNIST): ``fashion-mnist:pad32``
(60,000 images, 1x32x32), MLP VAE 1024-512-256-16, Bernoulli likelihood, K=10 folds x L=10
repetitions = 100 models, S=256 importance samples, batch 64, Adam lr 1e-3.

1. All 100 models as ONE batched unit (``models.audit.train_unit``, the worker's code path) for
   --epochs epochs, then its full importance-sampling pass (100 models x 60,000 samples x 256 latents).
2. The sequential strategy (the reference code's way: one model at a time) for ONE model, the same
   epochs and its importance-sampling pass.

Prints the per-epoch time at 100 models, the IS time, peak GPU memory, the extrapolated 100-epoch
audit for both strategies (labelled as extrapolations: measured epoch time x 100 + the measured IS
pass; sequential x 100 models) and the batched-vs-sequential ratio, with GPU name, driver, CUDA and
torch versions. Needs only torch and numpy (and the Debian package ``dataset-fashion-mnist`` or its
four idx files in --fashion-root). About 3-5 minutes on an H100 with the default 3 epochs.

    python bench/gpu_audit.py                      # on the GPU machine, from a checkout of this repo
    python bench/gpu_audit.py --fashion-root DIR   # idx files copied elsewhere
    python bench/gpu_audit.py --smoke              # tiny synthetic configuration on CPU (CI runs this)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from models.audit import ProgressEvent, UnitResult, train_unit
from models.builtin_datasets import FASHION_MNIST_DIR, load_builtin
from models.config import AuditConfig, ModelConfig, TrainConfig

PAPER_EPOCHS = 100


def _driver_version() -> str:
    try:
        text = Path("/proc/driver/nvidia/version").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    for word in text.split():
        if word.count(".") >= 1 and word.replace(".", "").isdigit():
            return word
    return "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cuda_runtime": torch.version.cuda,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts |= {
            "gpu": torch.cuda.get_device_name(device),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "driver": _driver_version(),
        }
    else:
        facts["cpu"] = platform.processor() or platform.machine()
    return facts


class EpochClock:
    """Per-epoch wall times of a unit from its progress events (an epoch = training + held-out loss)."""

    def __init__(self, label: str) -> None:
        self.label, self.marks, self.last = label, [0.0], 0.0

    def __call__(self, event: ProgressEvent) -> None:
        if event.phase == "train":
            self.marks.append(event.seconds)
            print(f"  {self.label}: epoch {event.epoch}/{event.epochs} at {event.seconds:.1f} s", flush=True)

    @property
    def epochs(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]

    def steady(self) -> float:
        """Median epoch time without the first epoch (warm-up), when there is more than one."""
        times = self.epochs
        return statistics.median(times[1:] if len(times) > 1 else times)


def _run(
    images: np.ndarray,
    model: ModelConfig,
    train: TrainConfig,
    audit: AuditConfig,
    ids: list[int],
    device: torch.device,
    label: str,
) -> tuple[UnitResult, EpochClock, float, int]:
    clock = EpochClock(label)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    result = train_unit(images, model, train, audit, ids, device=device, progress=clock)
    wall = time.perf_counter() - started
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0
    return result, clock, wall, peak


def configure(args: argparse.Namespace) -> tuple[np.ndarray, ModelConfig, TrainConfig, AuditConfig, str]:
    if args.smoke:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(96, 1, 8, 8), dtype=np.uint8)  # synthetic: torch + numpy only
        model = ModelConfig(hidden=(32, 16), latent=4, likelihood="bernoulli")
        train = TrainConfig(epochs=args.epochs or 2, batch_size=16, lr=1e-3)
        audit = AuditConfig(folds=2, repeats=2, is_samples=4, device=args.device or "cpu", seed=0)
        return images, model, train, audit, "synthetic 96x1x8x8 (smoke)"
    data = load_builtin("fashion-mnist:pad32", fashion_root=Path(args.fashion_root))
    images = data.pixels  # (60000, 1, 32, 32) uint8: the worker's data path
    model = ModelConfig(arch="mlp", hidden=(512, 256), latent=16, likelihood="bernoulli")
    train = TrainConfig(epochs=args.epochs or 3, batch_size=64, lr=1e-3)
    audit = AuditConfig(folds=10, repeats=args.repeats, is_samples=256, device=args.device or "cuda", seed=0)
    return images, model, train, audit, data.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=0, help="epochs to measure (default 3; smoke 2)")
    parser.add_argument(
        "--repeats", type=int, default=10, help="L (K is 10): 10 gives the paper's 100 models"
    )
    parser.add_argument("--device", default=None, help="default cuda (smoke: cpu)")
    parser.add_argument("--fashion-root", default=str(FASHION_MNIST_DIR))
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic configuration, runs on CPU")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    images, model, train, audit, data_name = configure(args)
    device = torch.device(audit.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_audit: no CUDA device here (use --smoke on a CPU)", file=sys.stderr)
        return 2
    n_models = audit.n_models
    env = environment(device)
    print(
        f"{data_name}: {images.shape}, {n_models} models, S={audit.is_samples}, {train.epochs} epochs; {env}"
    )
    batched, b_clock, b_wall, b_peak = _run(
        images, model, train, audit, list(range(n_models)), device, f"batched x{n_models}"
    )
    sequential_cfg = dataclasses.replace(audit, strategy="sequential")
    single, s_clock, s_wall, s_peak = _run(images, model, train, sequential_cfg, [0], device, "sequential x1")
    b_epoch, s_epoch = b_clock.steady(), s_clock.steady()
    b_is, s_is = batched.timings["is_seconds"], single.timings["is_seconds"]
    b_total = PAPER_EPOCHS * b_epoch + b_is
    s_total = n_models * (PAPER_EPOCHS * s_epoch + s_is)
    report = {
        "environment": env,
        "precision": batched.precision,
        "config": {
            "dataset": data_name,
            "n": int(images.shape[0]),
            "models": n_models,
            "is_samples": audit.is_samples,
            "batch_size": train.batch_size,
            "lr": train.lr,
            "epochs_measured": train.epochs,
            "model": model.to_dict(),
        },
        "batched": {
            "epoch_seconds": b_clock.epochs,
            "steady_epoch_seconds": b_epoch,
            "is_seconds": b_is,
            "decoder_passes_per_second": batched.timings["decoder_passes_per_second"],
            "per_model_step_ms": batched.timings["per_model_step_ms"],
            "wall_seconds": b_wall,
            "peak_gpu_memory_gib": b_peak / 2**30,
            "stacks": batched.stacks,
        },
        "sequential_one_model": {
            "epoch_seconds": s_clock.epochs,
            "steady_epoch_seconds": s_epoch,
            "is_seconds": s_is,
            "wall_seconds": s_wall,
            "per_model_step_ms": single.timings["per_model_step_ms"],
            "peak_gpu_memory_gib": s_peak / 2**30,
        },
        "extrapolated_100_epochs": {
            "batched_seconds": b_total,
            "sequential_seconds": s_total,
            "note": "extrapolation: steady epoch time x 100 + the measured IS pass; "
            "sequential: that for one model x the number of models",
        },
        "epoch_ratio_sequential_over_batched": n_models * s_epoch / b_epoch,
        "total_ratio_sequential_over_batched": s_total / b_total,
        "finite_loglik": bool(np.isfinite(batched.loglik).all()),
    }
    print(
        f"\nGPU: {env.get('gpu', env.get('cpu'))}, driver {env.get('driver', '-')}, "
        f"CUDA {env['cuda_runtime']}, torch {env['torch']}; precision {batched.precision}"
    )
    print(
        f"batched, {n_models} models in one unit: {b_epoch:.2f} s per epoch (epochs: "
        f"{', '.join(f'{t:.2f}' for t in b_clock.epochs)} s), IS pass {b_is:.1f} s "
        f"({batched.timings['decoder_passes_per_second']:.3g} decoder passes/s), "
        f"peak GPU memory {b_peak / 2**30:.2f} GiB, stacks {batched.stacks}"
    )
    print(f"sequential, 1 model: {s_epoch:.2f} s per epoch, IS {s_is:.2f} s")
    print(
        f"per epoch: {n_models} sequential models would take {n_models * s_epoch:.1f} s vs {b_epoch:.2f} s "
        f"batched = {report['epoch_ratio_sequential_over_batched']:.1f}x"
    )
    print(
        f"EXTRAPOLATED {PAPER_EPOCHS}-epoch audit (not measured end to end): batched {b_total / 60:.1f} min, "
        f"sequential {s_total / 3600:.2f} h, ratio {report['total_ratio_sequential_over_batched']:.1f}x"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if report["finite_loglik"] else 1


if __name__ == "__main__":
    sys.exit(main())
