"""Learning rate 1e-3 vs 1e-4 on the same data: quantiles of M per epoch and the generalization gap.

The paper contrasts the two rates: the higher one memorizes more (higher 0.95/0.999 quantiles of M).
CPU-sized by default (sklearn digits, reference MLP 512-256-16, Bernoulli, K=5, L=1, 40 epochs);
results are recorded in docs/science.md.

    .venv/bin/python bench/lr_contrast.py --epochs 40 --eval-every 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--is-samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--n-samples", type=int, default=1797, help="first N digits (memorization shows sooner)"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from sklearn.datasets import load_digits

    from models.audit import run_audit
    from models.config import AuditConfig, ModelConfig, TrainConfig

    torch.set_num_threads(args.threads)
    images = (load_digits().images[: args.n_samples] / 16.0).astype(np.float32)[:, None]
    audit_cfg = AuditConfig(
        folds=args.folds,
        repeats=args.repeats,
        is_samples=args.is_samples,
        eval_every=args.eval_every,
        seed=args.seed,
        device="cpu",
    )
    print(
        f"digits {images.shape}, MLP 512-256-16 Bernoulli, K={args.folds}, L={args.repeats}, "
        f"S={args.is_samples}, {args.epochs} epochs, seed {args.seed}"
    )
    print("| lr | epoch | M q0.5 | M q0.95 | M q0.999 | train -ELBO | held-out-fold -ELBO | gap |")
    print("|---|---|---|---|---|---|---|---|")
    for lr in (1e-3, 1e-4):
        started = time.perf_counter()
        result = run_audit(images, ModelConfig(), TrainConfig(epochs=args.epochs, lr=lr), audit_cfg)
        for epoch, quantiles in zip(result.eval_epochs, result.epoch_quantiles, strict=True):
            train = float(result.train_loss[:, epoch - 1].mean())
            held = float(result.heldout_loss[:, epoch - 1].mean())
            q50, q95, q999 = (f"{q:.3f}" for q in quantiles)
            losses = f"{train:.2f} | {held:.2f} | {held - train:.2f}"
            print(f"| {lr:g} | {epoch} | {q50} | {q95} | {q999} | {losses} |")
        print(
            json.dumps(
                {"lr": lr, "seconds": round(time.perf_counter() - started, 1), "quantiles": result.quantiles}
            ),
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
