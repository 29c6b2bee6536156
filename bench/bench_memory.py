"""Peak resident memory of a worker-like process running one 2-model unit on Fashion-MNIST, per job size.

Each size runs in a fresh subprocess that does what a worker does for a unit (load the dataset as an
ImageSet, hand its stored pixels to ``train_unit``: reference MLP, Bernoulli, 1 epoch, S=4, batch
64) and reports its RSS after importing torch (the baseline), after loading the data, and its peak
(``ru_maxrss``). The data's share is peak - baseline; a 60k x 28 x 28 set is 47 MB as uint8 and
188 MB as float32. ``--tree DIR`` runs the same child against another checkout of the code (e.g. the
previous commit, unpacked with ``git archive``) for a side-by-side comparison.

    .venv/bin/python -m bench.bench_memory --sizes 10000 30000 60000
    git archive 6a5bd92 | tar -x -C /tmp/before && .venv/bin/python -m bench.bench_memory --tree /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
import numpy as np, torch
torch.set_num_threads(int(sys.argv[2]))
from models.audit import train_unit
from models.config import AuditConfig, ModelConfig, TrainConfig
from models.data import load_dataset
torch.ones(4) @ torch.ones(4)
baseline = rss_mib()
images = load_dataset(sys.argv[3])
n = int(sys.argv[1])
if n < images.count:
    images = images.subset(np.arange(n))
stored = getattr(images, "pixels", None)
array = stored if stored is not None else images.images  # older ImageSets held only float32
loaded = rss_mib()
started = time.perf_counter()
train_unit(array, ModelConfig(), TrainConfig(epochs=1), AuditConfig(folds=10, repeats=1, is_samples=4),
           [0, 1], device=torch.device("cpu"))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"n": n, "dtype": str(array.dtype), "baseline_mib": round(baseline),
                  "after_load_mib": round(loaded), "peak_mib": round(peak),
                  "seconds": round(time.perf_counter() - started, 1)}))
"""


def run_child(n: int, threads: int, dataset: str, tree: Path | None) -> dict[str, object]:
    env = dict(os.environ)
    root = tree or Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(root)
    command = [sys.executable, "-c", _CHILD, str(n), str(threads), dataset]
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=root).stdout
    row: dict[str, object] = json.loads(output.strip().splitlines()[-1])
    row["tree"] = "this checkout" if tree is None else str(tree)
    row["data_share_mib"] = int(row["peak_mib"]) - int(row["baseline_mib"])  # type: ignore[call-overload]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 60000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--tree", type=Path, default=None, help="also run this other checkout, side by side")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        for tree in [None] + ([args.tree] if args.tree else []):
            rows.append(run_child(n, args.threads, args.dataset, tree))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| code | N | pixels handed to train_unit | baseline MiB | after load MiB | peak MiB "
          "| peak - baseline MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['tree']} | {r['n']} | {r['dtype']} | {r['baseline_mib']} | {r['after_load_mib']} "
            f"| {r['peak_mib']} | {r['data_share_mib']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
