"""Batched ensemble vs sequential strategy: the whole audit, end to end, on CPU (issues 2 and 9).

Runs the same audit (sklearn digits, reference MLP widths 512-256, latent 16, Bernoulli, K*L models)
per strategy, each in a fresh subprocess so peak RSS is per strategy, --rounds times in alternating
order (sequential, batched, then batched, sequential, ...) so both meet the same load; prints a JSON
line per run (with the load average around it), the per-round ratios and a markdown table.

    .venv/bin/python bench/bench_ensemble.py --folds 5 --repeats 2 --epochs 20 --is-samples 64 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime


def _digits() -> object:
    import numpy as np
    from sklearn.datasets import load_digits

    return (load_digits().images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)


def run_one(args: argparse.Namespace) -> dict[str, object]:
    import numpy as np
    import torch

    from models.audit import run_audit
    from models.config import AuditConfig, ModelConfig, TrainConfig

    torch.set_num_threads(args.threads)
    images = _digits()
    audit_cfg = AuditConfig(
        folds=args.folds,
        repeats=args.repeats,
        is_samples=args.is_samples,
        strategy=args.strategy,
        device="cpu",
        models_per_unit=args.models_per_unit,
    )
    model_cfg = ModelConfig(arch=args.arch, hidden=tuple(args.hidden), likelihood="bernoulli")
    started = time.perf_counter()
    result = run_audit(images, model_cfg, TrainConfig(epochs=args.epochs), audit_cfg)  # type: ignore[arg-type]
    wall = time.perf_counter() - started
    return {
        "strategy": args.strategy,
        "models_per_unit": args.models_per_unit,
        "arch": args.arch,
        "wall_s": round(wall, 2),
        "train_s": round(result.timings["train_seconds"], 2),
        "is_s": round(result.timings["is_seconds"], 2),
        "per_model_step_ms": round(result.timings["per_model_step_ms"], 3),
        "decoder_passes_per_s": round(result.timings["decoder_passes_per_second"]),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "median_M": round(float(np.nanmedian(result.scores.M)), 4),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--is-samples", type=int, default=64)
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--unit-sizes", type=int, nargs="+", default=[10], help="batched models_per_unit to try"
    )
    parser.add_argument("--rounds", type=int, default=1, help="alternating (sequential, batched) pairs")
    parser.add_argument("--strategy", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--models-per-unit", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def _child(args: argparse.Namespace, strategy: str, unit: int | None) -> dict[str, object]:
    command = [
        sys.executable,
        __file__,
        "--strategy",
        strategy,
        "--epochs",
        str(args.epochs),
        "--folds",
        str(args.folds),
        "--repeats",
        str(args.repeats),
        "--is-samples",
        str(args.is_samples),
        "--arch",
        args.arch,
        "--threads",
        str(args.threads),
        "--hidden",
        *map(str, args.hidden),
    ]
    if unit is not None:
        command += ["--models-per-unit", str(unit)]
    load_before = round(os.getloadavg()[0], 2)
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    row: dict[str, object] = json.loads(output.strip().splitlines()[-1])
    row["load"] = f"{load_before} -> {round(os.getloadavg()[0], 2)}"
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    args = _parser().parse_args()
    if args.strategy is not None:
        print(json.dumps(run_one(args)))
        return 0
    rounds: list[tuple[dict[str, object], list[dict[str, object]]]] = []
    for index in range(args.rounds):
        if index % 2 == 0:
            sequential = _child(args, "sequential", None)
            batched = [_child(args, "batched", unit) for unit in args.unit_sizes]
        else:
            batched = [_child(args, "batched", unit) for unit in args.unit_sizes]
            sequential = _child(args, "sequential", None)
        rounds.append((sequential, batched))
    print(
        f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, digits 1797x8x8, {args.arch} {args.hidden}, "
        f"K*L={args.folds * args.repeats}, "
        f"{args.epochs} epochs, S={args.is_samples}, {args.rounds} alternating rounds\n"
    )
    print(
        "| round | strategy | models/unit | wall s | train s | IS s | per-model step ms | decoder passes/s "
        "| peak RSS MiB | load | speed-up vs sequential (same round) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ratios: dict[object, list[float]] = {}
    for index, (sequential, batched) in enumerate(rounds, start=1):
        for row in [sequential, *batched]:
            ratio = float(sequential["wall_s"]) / float(row["wall_s"])  # type: ignore[arg-type]
            if row is not sequential:
                ratios.setdefault(row["models_per_unit"], []).append(ratio)
            print(
                f"| {index} | {row['strategy']} | {row['models_per_unit'] or '-'} | {row['wall_s']} "
                f"| {row['train_s']} | {row['is_s']} | {row['per_model_step_ms']} "
                f"| {row['decoder_passes_per_s']} "
                f"| {row['peak_rss_mib']} | {row['load']} | {ratio:.2f}x |"
            )
    for unit, values in ratios.items():
        print(f"\nbatched ({unit} models/unit) vs sequential: median {statistics.median(values):.2f}x over "
              f"{len(values)} rounds ({', '.join(f'{v:.2f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
