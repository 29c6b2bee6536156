"""The adaptive stop of SPEC §7 on a real dataset: fits saved and how much the final top-k moves.

One full audit with L repetitions, then, for each threshold, the stop rule applied to its stability
curve (exactly what ``stop_when_stable`` keeps: ``models.assembly.assemble`` applies the same rule to
the same models), and one in-process run with ``stop_when_stable`` to confirm it trains only those
repetitions and gives the same scores. Results are recorded in docs/science.md.

    PYTHONPATH=. .venv/bin/python bench/adaptive_stop.py --epochs 50 --repeats 10 --stop 0.8
    PYTHONPATH=. .venv/bin/python bench/adaptive_stop.py --n-samples 500 --epochs 200 --stop 0.8
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--is-samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.7, 0.8, 0.9, 0.95])
    parser.add_argument("--stop", type=float, default=0.8, help="threshold of the confirming early-stop run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-samples", type=int, default=1797, help="the first N digits")
    args = parser.parse_args()

    import torch
    from scipy import stats
    from sklearn.datasets import load_digits

    from models.audit import AuditResult, combine, run_audit
    from models.config import AuditConfig, ModelConfig, TrainConfig
    from models.uncertainty import stop_point, top_k

    torch.set_num_threads(args.threads)
    images = (load_digits().images[: args.n_samples] / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    model_cfg = ModelConfig(hidden=(512, 256), latent=16, likelihood="bernoulli")
    train_cfg = TrainConfig(epochs=args.epochs)

    def audit(stop: float | None) -> tuple[AuditResult, float]:
        cfg = AuditConfig(
            folds=args.folds, repeats=args.repeats, is_samples=args.is_samples, seed=args.seed,
            device="cpu", stop_when_stable=stop,
        )  # fmt: skip
        started = time.perf_counter()
        return run_audit(images, model_cfg, train_cfg, cfg), time.perf_counter() - started

    full, full_seconds = audit(None)
    k = full.uncertainty.top_k
    full_top = set(top_k(full.scores.M, k).tolist())
    rows = []
    for threshold in args.thresholds:
        used = stop_point(full.stability, threshold) or args.repeats
        ids = full.model_ids[: used * args.folds]
        kept = combine(full.folds_of, ids, full.loglik[: used * args.folds]).M
        rows.append({
            "threshold": threshold,
            "repeats_used": used,
            "fits": used * args.folds,
            "fits_saved": (args.repeats - used) * args.folds,
            "top_k_overlap_with_full": len(set(top_k(kept, k).tolist()) & full_top) / k,
            "spearman_with_full": float(stats.spearmanr(kept, full.scores.M).statistic),
        })  # fmt: skip
    stopped, stopped_seconds = audit(args.stop)
    used_ids = slice(0, stopped.repeats_used * args.folds)
    posthoc = combine(full.folds_of, full.model_ids[used_ids], full.loglik[used_ids]).M
    confirm = {
        "threshold": args.stop,
        "repeats_used": stopped.repeats_used,
        "seconds": stopped_seconds,
        "full_seconds": full_seconds,
        "max_abs_diff_vs_posthoc": float(np.max(np.abs(stopped.scores.M - posthoc))),
    }  # fmt: skip
    report = {
        "config": {**vars(args), "n": len(images), "model": model_cfg.to_dict(), "top_k": k},
        "stability": full.stability,
        "full": {
            "quantiles": full.quantiles,
            "confidently_memorized": full.n_confident,
            "median_score_se": float(np.median(full.score_se)),
        },
        "thresholds": rows,
        "confirming_run": confirm,
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
