"""GAN-side speed: exact NN search throughput and MR-GAN steps/s with and without rejection.

    .venv/bin/python bench/bench_gan.py [--device cpu] [--refs 60000] [--queries 2000] [--steps 200]
                                        [--threads N]

1. Nearest-neighbour search (models.neighbours, exact, chunked): queries/s against ``--refs`` synthetic
   784-dim references (uniform noise: the search is exact, its cost depends only on the sizes), for the
   cosine metric with prepared references (how rejection and copy counts use it) and for Euclidean.
2. MR-GAN generator+discriminator steps/s on sklearn digits (MLP GAN, 1498 training images, batch 64),
   tau = 0 (plain) vs tau > 0 (rejection: one embedding + one matrix product per batch), modes G and GD.
3. The same for a 28 px DCGAN against ``--refs`` synthetic training images (rejection cost grows with N).
Prints one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import torch

from models.data import load_dataset
from models.embeddings import PixelEmbedder
from models.gan import GanConfig, MrganConfig, Rejector, train_mrgan
from models.neighbours import nearest, prepare_references


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_search(refs: int, queries: int, device: torch.device) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    references = torch.rand(refs, 784, generator=gen).to(device)  # (R, 784)
    batch = torch.rand(queries, 784, generator=gen).to(device)  # (Q, 784)
    out = []
    for metric in ("cosine", "euclidean"):
        prepared = prepare_references(references, metric)
        nearest(batch[:64], prepared, metric=metric, references_prepared=True)
        _sync(device)
        started = time.perf_counter()
        nearest(batch, prepared, metric=metric, references_prepared=True)
        _sync(device)
        seconds = time.perf_counter() - started
        out.append({"bench": "nn_search", "metric": metric, "refs": refs, "dim": 784, "queries": queries,
                    "seconds": round(seconds, 3), "queries_per_s": round(queries / seconds, 1)})  # fmt: skip
    return out


def _steps_per_s(images: torch.Tensor, gan: GanConfig, tau: float, mode: str, steps: int,
                 rejector: Rejector) -> dict[str, Any]:  # fmt: skip
    cfg = MrganConfig(steps=steps, batch_size=64, mode=mode)  # type: ignore[arg-type]
    train_mrgan(images, gan, MrganConfig(steps=5, batch_size=64), tau, rejector)  # warm-up
    _sync(images.device)
    run = train_mrgan(images, gan, cfg, tau, rejector)
    _sync(images.device)
    return {"bench": "mrgan_steps", "arch": gan.arch, "refs": images.shape[0], "tau": round(tau, 4),
            "mode": mode, "steps": steps, "steps_per_s": round(steps / run.seconds, 1),
            "rejection_rate": round(run.rejection_rate, 3)}  # fmt: skip


def bench_mrgan(steps: int, refs: int, device: torch.device) -> list[dict[str, Any]]:
    digits = torch.from_numpy(load_dataset("digits:train").images).to(device)  # (1498, 1, 8, 8)
    embedder = PixelEmbedder()
    rejector = Rejector(embedder, embedder.embed(digits))
    out = [_steps_per_s(digits, GanConfig(), tau, mode, steps, rejector)
           for tau, mode in ((0.0, "G"), (0.03, "G"), (0.03, "GD"))]  # fmt: skip
    synthetic = torch.rand(refs, 1, 28, 28, generator=torch.Generator().manual_seed(1)).to(device)
    dcgan = GanConfig.for_images((1, 28, 28))
    big_rejector = Rejector(embedder, embedder.embed(synthetic))
    dcgan_steps = max(10, steps // 10)
    out += [_steps_per_s(synthetic, dcgan, tau, "G", dcgan_steps, big_rejector) for tau in (0.0, 0.03)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--refs", type=int, default=60000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = {"machine": platform.node(), "threads": torch.get_num_threads(), "device": str(device),
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps(machine), flush=True)
    for row in bench_search(args.refs, args.queries, device) + bench_mrgan(args.steps, args.refs, device):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
