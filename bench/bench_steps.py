"""Per-model training-step time, sequential vs batched, interleaved to cancel out a fluctuating load.

One round = 10 plain models doing `steps` Adam steps one after another, then one stack of the same 10
models doing `steps` steps together. Rounds alternate, so both strategies see the same machine load;
the median over rounds is reported. Reference MLP 512-256-16 or conv VAE (32 base filters, latent 16),
Bernoulli, batch 64, digits-sized (8x8; the conv VAE pads to 16x16).

    .venv/bin/python bench/bench_steps.py --threads 2 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--pixels", type=int, default=64)
    parser.add_argument("--arch", choices=["mlp", "conv"], default="mlp")
    args = parser.parse_args()

    import torch

    from models.config import ModelConfig
    from models.ensemble import SingleStack, stack_models
    from models.networks import build_vae
    from models.training import negative_elbo

    torch.set_num_threads(args.threads)
    side = int(args.pixels**0.5)
    cfg = ModelConfig(arch=args.arch)
    singles = [SingleStack(build_vae(cfg, (1, side, side), seed)) for seed in range(args.models)]
    stack = stack_models([build_vae(cfg, (1, side, side), seed) for seed in range(args.models)])

    def run(target: torch.nn.Module, n_models: int) -> float:
        optimizer = torch.optim.Adam(target.parameters(), lr=1e-3, fused=True)
        x = (torch.rand(n_models, 64, 1, side, side) < 0.5).float()
        eps = torch.randn(1, 64, 16)
        started = time.perf_counter()
        for _ in range(args.steps):
            loss = negative_elbo(target, x, eps, "bernoulli").mean(1).sum()  # type: ignore[arg-type]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started

    sequential, batched = [], []
    for _ in range(args.rounds):
        sequential.append(sum(run(single, 1) for single in singles) / (args.steps * args.models))
        batched.append(run(stack, args.models) / (args.steps * args.models))
    seq_ms, bat_ms = 1e3 * statistics.median(sequential), 1e3 * statistics.median(batched)
    print(
        f"{args.arch} threads={args.threads} models={args.models} pixels={args.pixels}: per-model step "
        f"sequential {seq_ms:.3f} ms, batched {bat_ms:.3f} ms, speed-up {seq_ms / bat_ms:.2f}x "
        f"(median of {args.rounds} interleaved rounds)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
