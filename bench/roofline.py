"""Roofline of the science core on this machine, in one run with one thread count (issue 9).

Measures the machine's sgemm peak (torch, 2048 x 2048) and memory bandwidth (a 256 MiB copy), then for
each configuration (MLP VAE at 64 px = digits, 784 px = MNIST, 1024 px = MNIST padded to 32x32, the
paper's; conv VAE at 3x32x32) the two costs of an audit, batched (a stack of --models models) and
sequential (one model) side by side:

* importance sampling, through the real ``models.training._evaluate``: decoder passes/s and GFLOP/s
  (2 x the decoder's counted multiply-adds per pass, see bench/flops.py) as a fraction of sgemm peak;
* a training step, through the real ``models.training._train_epoch``: time per model and step against
  the roofline bound max(FLOPs / sgemm peak, (Adam + activation bytes) / bandwidth).

Every measurement is interleaved with sgemm runs (round-robin, --rounds rounds) and reported as the
median over rounds of its ratio to the adjacent peak, so a fluctuating load on a shared machine moves
numerator and denominator together. Two clocks: wall time and the process's CPU time (the CPU-time ratio
is what the code achieves per CPU-second it actually got; it is the one to read on a loaded machine).

    .venv/bin/python -m bench.roofline                 # ~5 min on 2 cores
    .venv/bin/python -m bench.roofline --quick         # one round, smaller sets (smoke)
    .venv/bin/python -m bench.roofline --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from bench.flops import ModelCost, model_cost
from models.audit import _context
from models.config import AuditConfig, ModelConfig, TrainConfig
from models.training import FitContext, _build_stack, _epoch_order, _evaluate, _train_epoch
from models.units import device_name

CPU = torch.device("cpu")
GEMM_SIDE = 2048
COPY_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Config:
    name: str
    model: ModelConfig
    shape: tuple[int, int, int]
    is_samples: int


CONFIGS = (
    Config("mlp-64px (digits)", ModelConfig(), (1, 8, 8), 64),
    Config("mlp-784px (MNIST)", ModelConfig(), (1, 28, 28), 256),
    Config("mlp-1024px (MNIST pad32, paper)", ModelConfig(), (1, 32, 32), 256),
    Config(
        "conv-3x32x32 (CIFAR-like)",
        ModelConfig(arch="conv", latent=64, likelihood="gaussian_diag"),
        (3, 32, 32),
        128,
    ),
)


class Clocks:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self) -> Clocks:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


@dataclass
class Series:
    """Rates of one measurement and of the sgemm runs around it, per round."""

    wall: list[float] = field(default_factory=list)  # seconds per call
    cpu: list[float] = field(default_factory=list)
    peak_wall: list[float] = field(default_factory=list)  # sgemm FLOP/s next to it
    peak_cpu: list[float] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(getattr(self, name))

    def fraction(self, flops: float, clock: str) -> float:
        """Median over rounds of (flops / seconds) / adjacent sgemm FLOP/s."""
        seconds, peaks = getattr(self, clock), getattr(self, f"peak_{clock}")
        return statistics.median(flops / s / p for s, p in zip(seconds, peaks, strict=True))


class Machine:
    """The reference kernels: sgemm of side x side matrices, a copy of copy_bytes."""

    def __init__(self, side: int = GEMM_SIDE, copy_bytes: int = COPY_BYTES, reps: int = 3) -> None:
        self.side, self.reps, self.copy_bytes = side, reps, copy_bytes
        self.a, self.b = torch.randn(side, side), torch.randn(side, side)
        self.c = torch.empty(side, side)
        self.src = torch.ones(copy_bytes // 4)
        self.dst = torch.empty_like(self.src)
        self.sgemm()

    def sgemm(self) -> tuple[float, float]:
        """FLOP/s (wall, cpu) of the sgemm."""
        torch.mm(self.a, self.b, out=self.c)
        with Clocks() as clock:
            for _ in range(self.reps):
                torch.mm(self.a, self.b, out=self.c)
        flops = 2.0 * self.side**3 * self.reps
        return flops / clock.wall, flops / clock.cpu

    def bandwidth(self, reps: int = 5) -> tuple[float, float]:
        """Bytes/s (wall, cpu) of a large copy, counting the read and the write."""
        self.dst.copy_(self.src)
        with Clocks() as clock:
            for _ in range(reps):
                self.dst.copy_(self.src)
        moved = 2.0 * self.copy_bytes * reps
        return moved / clock.wall, moved / clock.cpu


def interleaved(
    machine: Machine, jobs: dict[str, Callable[[], None]], rounds: int, min_s: float
) -> dict[str, Series]:
    """Round-robin: sgemm, job, sgemm, next job ...; each job repeated to last about min_s."""
    reps = {}
    for name, job in jobs.items():
        job()  # warm-up (allocations, first-touch)
        with Clocks() as clock:
            job()
        reps[name] = max(1, int(min_s / max(clock.wall, 1e-6)))
    series = {name: Series() for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            before = machine.sgemm()
            with Clocks() as clock:
                for _ in range(reps[name]):
                    job()
            after = machine.sgemm()
            s = series[name]
            s.wall.append(clock.wall / reps[name])
            s.cpu.append(clock.cpu / reps[name])
            s.peak_wall.append(max(before[0], after[0]))
            s.peak_cpu.append(max(before[1], after[1]))
    return series


def _images(shape: tuple[int, int, int], n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _ctx(cfg: Config, n: int, models: int, batch: int) -> FitContext:
    audit = AuditConfig(folds=max(2, models), repeats=1, is_samples=cfg.is_samples, device="cpu")
    return _context(
        _images(cfg.shape, n), cfg.model, TrainConfig(epochs=1, batch_size=batch), audit, CPU, None
    )


def measure_config(
    machine: Machine, cfg: Config, args: argparse.Namespace, bandwidth: float
) -> dict[str, Any]:
    cost = model_cost(cfg.model, cfg.shape)
    ids = list(range(args.models))
    # importance sampling: N samples x S latents per model, about 2 GFLOP per batched pass
    is_n = args.is_samples_n or max(8, int(2e9 / (2 * cost.decoder_macs * cfg.is_samples * args.models)))
    is_n = max(is_n, args.models)  # K folds need K samples; every sample of ctx is evaluated and counted
    ctx = _ctx(cfg, is_n, args.models, 64)
    assert ctx.n_samples == is_n
    stacks = {"batched": _build_stack(ctx, ids, True), "sequential": _build_stack(ctx, [0], False)}

    def importance(kind: str) -> Callable[[], None]:
        stack, members = stacks[kind], ids if kind == "batched" else [0]

        def run() -> None:
            _evaluate(ctx, stack, members, 0)

        return run

    jobs = {f"is-{kind}": importance(kind) for kind in stacks}
    # training: one epoch of `steps` minibatches of 64 per model, through the real epoch loop
    steps = args.train_steps
    train_ctx = _ctx(cfg, 64 * steps, args.models, 64)
    train_ctx.n_used = 64 * steps
    optimizers = {k: torch.optim.Adam(s.parameters(), lr=1e-3, fused=True) for k, s in stacks.items()}
    train_sets = [np.arange(train_ctx.n_samples)] * args.models

    def epoch(kind: str) -> Callable[[], None]:
        stack, members = stacks[kind], (args.models if kind == "batched" else 1)
        gens = [torch.Generator().manual_seed(m) for m in range(members)]

        def run() -> None:
            order = _epoch_order(train_ctx, train_sets[:members], gens)
            _train_epoch(train_ctx, stack, optimizers[kind], order, 1).sum().item()

        return run

    for kind in stacks:
        jobs[f"train-{kind}"] = epoch(kind)
    series = interleaved(machine, jobs, args.rounds, args.min_seconds)
    return _summarise(cfg, cost, series, is_n, steps, args, bandwidth)


def _summarise(
    cfg: Config,
    cost: ModelCost,
    series: dict[str, Series],
    is_n: int,
    steps: int,
    args: argparse.Namespace,
    bandwidth: float,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "config": cfg.name,
        "image_shape": list(cfg.shape),
        "is_samples": cfg.is_samples,
        "decoder_macs": cost.decoder_macs,
        "encoder_macs": cost.encoder_macs,
        "parameters": cost.parameters,
        "is_samples_evaluated": is_n,
    }
    for kind, models in (("batched", args.models), ("sequential", 1)):
        s = series[f"is-{kind}"]
        passes = models * is_n * cfg.is_samples
        flops = 2.0 * cost.decoder_macs * passes
        out[f"is_{kind}"] = {
            "models": models,
            "decoder_passes": passes,
            "decoder_passes_per_s": passes / s.median("wall"),
            "gflops_wall": flops / s.median("wall") / 1e9,
            "fraction_of_peak_wall": s.fraction(flops, "wall"),
            "fraction_of_peak_cpu": s.fraction(flops, "cpu"),
        }
        t = series[f"train-{kind}"]
        model_steps = models * steps
        step_flops = cost.train_flops_per_sample() * 64.0
        step_bytes = float(cost.train_bytes_per_step(64))
        peak = statistics.median(t.peak_wall)
        per_step = t.median("wall") / model_steps
        bound = max(step_flops / peak, step_bytes / bandwidth)
        # per round: step time over the bound at that round's own sgemm peak, then the median
        ratios = [
            (seconds / model_steps) / max(step_flops / p, step_bytes / bandwidth)
            for seconds, p in zip(t.wall, t.peak_wall, strict=True)
        ]
        # eager execution runs the GEMMs and fused Adam one after the other on one thread: they cannot
        # overlap, so compute + Adam's own traffic is a floor too (reported beside the max() bound)
        adam_s = 28.0 * cost.parameters / bandwidth
        serial = [
            (seconds / model_steps) / (step_flops / p + adam_s)
            for seconds, p in zip(t.wall, t.peak_wall, strict=True)
        ]
        out[f"train_{kind}"] = {
            "models": models,
            "per_model_step_ms": 1e3 * per_step,
            "bound_ms": 1e3 * bound,
            "adam_bound_ms": 1e3 * adam_s,
            "serial_bound_ms": 1e3 * (step_flops / peak + adam_s),
            "ratio_to_serial_bound_wall": statistics.median(serial),
            "compute_bound_ms": 1e3 * step_flops / peak,
            "memory_bound_ms": 1e3 * step_bytes / bandwidth,
            "ratio_to_bound_wall": statistics.median(ratios),
            "ratio_to_compute_bound_cpu": 1.0 / t.fraction(step_flops * model_steps, "cpu"),
            "fraction_of_peak_wall": t.fraction(step_flops * model_steps, "wall"),
        }
    # from the peak-normalised medians, so that load changes between the two cannot fake a ratio
    out["is_batched_vs_sequential"] = (
        out["is_batched"]["fraction_of_peak_wall"] / out["is_sequential"]["fraction_of_peak_wall"]
    )
    out["train_batched_vs_sequential"] = (
        out["train_sequential"]["ratio_to_bound_wall"] / out["train_batched"]["ratio_to_bound_wall"]
    )
    return out


def _print_table(machine: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print(
        f"\nsgemm {machine['sgemm_gflops']:.1f} GFLOP/s, copy bandwidth {machine['bandwidth_gbs']:.1f} GB/s, "
        f"{machine['threads']} threads, load average {machine['load_before']} -> {machine['load_after']}\n"
    )
    print(
        "| config | S | IS batched: passes/s, GFLOP/s, % peak (wall / cpu) "
        "| IS sequential: % peak (wall / cpu) "
        "| train per-model step ms batched / sequential | bound ms (compute, memory) | batched step / bound "
        "| sequential step / bound | batched step / (compute + Adam) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ib, iseq, tb, ts = r["is_batched"], r["is_sequential"], r["train_batched"], r["train_sequential"]
        print(
            f"| {r['config']} | {r['is_samples']} "
            f"| {ib['decoder_passes_per_s']:.3g}, {ib['gflops_wall']:.1f}, "
            f"{100 * ib['fraction_of_peak_wall']:.0f}% / {100 * ib['fraction_of_peak_cpu']:.0f}% "
            f"| {100 * iseq['fraction_of_peak_wall']:.0f}% / {100 * iseq['fraction_of_peak_cpu']:.0f}% "
            f"| {tb['per_model_step_ms']:.3f} / {ts['per_model_step_ms']:.3f} "
            f"| {tb['bound_ms']:.3f} ({tb['compute_bound_ms']:.3f}, {tb['memory_bound_ms']:.3f}) "
            f"| {tb['ratio_to_bound_wall']:.2f}x | {ts['ratio_to_bound_wall']:.2f}x "
            f"| {tb['ratio_to_serial_bound_wall']:.2f}x ({tb['serial_bound_ms']:.3f} ms) |"
        )


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    by = {r["config"].split(" ")[0]: r for r in rows}
    lines = []
    for key, target in (("mlp-784px", 0.70), ("mlp-64px", 0.50)):
        if key in by:
            f = by[key]["is_batched"]
            lines.append(
                f"IS {key} >= {target:.0%} of peak: wall {f['fraction_of_peak_wall']:.0%}, "
                f"cpu {f['fraction_of_peak_cpu']:.0%}"
            )
    for key in ("mlp-784px", "mlp-1024px"):
        if key in by:
            t = by[key]["train_batched"]
            lines.append(
                f"training {key} within 1.5x of the bound: {t['ratio_to_bound_wall']:.2f}x (wall), "
                f"{t['ratio_to_compute_bound_cpu']:.2f}x of the compute bound (cpu), "
                f"{t['ratio_to_serial_bound_wall']:.2f}x of compute + Adam (wall)"
            )
    for r in rows:
        lines.append(
            f"{r['config']}: batched vs sequential: IS {r['is_batched_vs_sequential']:.2f}x, "
            f"training {r['train_batched_vs_sequential']:.2f}x"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", type=int, default=10, help="models in the batched stack")
    parser.add_argument("--train-steps", type=int, default=20, help="steps per model per timed epoch")
    parser.add_argument("--is-samples-n", type=int, default=0, help="samples per IS pass (0: auto)")
    parser.add_argument("--min-seconds", type=float, default=0.4, help="per measurement and round")
    parser.add_argument("--configs", default="all", help="comma-separated prefixes, e.g. mlp-784px,conv")
    parser.add_argument("--quick", action="store_true", help="one round, tiny sizes (a smoke run)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.min_seconds, args.train_steps = 1, 0.0, 2
        args.is_samples_n = args.is_samples_n or 8
    torch.set_num_threads(args.threads)
    chosen = [
        c
        for c in CONFIGS
        if args.configs == "all" or any(c.name.startswith(p) for p in args.configs.split(","))
    ]
    load_before = round(os.getloadavg()[0], 2)
    machine = Machine(1024, 32 * 2**20, 1) if args.quick else Machine()
    peaks = [machine.sgemm() for _ in range(max(3, args.rounds))]
    bws = [machine.bandwidth() for _ in range(3)]
    bandwidth = statistics.median(b[0] for b in bws)
    rows = []
    for cfg in chosen:
        rows.append(measure_config(machine, cfg, args, bandwidth))
        print(json.dumps(rows[-1]), flush=True)
    facts = {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "cpu": device_name(CPU),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "sgemm_gflops": statistics.median(p[0] for p in peaks) / 1e9,
        "bandwidth_gbs": bandwidth / 1e9,
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 2),
        "command": " ".join(["python -m bench.roofline", *(argv if argv is not None else sys.argv[1:])]),
    }
    print(f"\n{facts['date']}, {facts['cpu']}, torch {facts['torch']}, command: {facts['command']}")
    _print_table(facts, rows)
    print()
    for line in _targets(rows):
        print("-", line)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": facts, "configs": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
