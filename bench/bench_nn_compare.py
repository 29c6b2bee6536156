"""Nearest-neighbour comparison (SPEC §3) speed and memory: N training images vs |H| = |S| references.

    .venv/bin/python bench/bench_nn_compare.py --train 60000 --refs 5000 --side 32 [--device cpu]

Synthetic images (uniform noise) are enough: the search is exact, its cost depends only on the sizes.
Prints pairs/s and peak memory (RSS, and CUDA when used); the block bound is models.neighbours'.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import numpy as np
import torch

from models.nn_compare import compare_nearest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=int, default=60000)
    parser.add_argument("--refs", type=int, default=5000, help="|H| = |S|")
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--downscale", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shape = (1, args.side, args.side)
    train = rng.random((args.train, *shape), dtype=np.float32)  # (N, 1, side, side)
    heldout = rng.random((args.refs, *shape), dtype=np.float32)
    samples = rng.random((args.refs, *shape), dtype=np.float32)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    result = compare_nearest(train, heldout, samples, downscale=args.downscale, device=args.device)
    seconds = time.perf_counter() - started
    pairs = 2 * args.train * args.refs
    report = {
        "machine": f"{platform.node()} ({torch.get_num_threads()} threads)",
        "device": args.device,
        "train": args.train,
        "refs_each": args.refs,
        "dim": int(np.prod(shape)) // args.downscale**2,
        "seconds": round(seconds, 2),
        "pairs_per_second": f"{pairs / seconds:.3g}",
        "peak_rss_mib_before": round(rss_before),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "finite_rho": int(np.isfinite(result.rho).sum()),
    }
    if args.device.startswith("cuda"):
        report["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
