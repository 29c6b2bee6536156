"""Embedding throughput of one feature extractor saved as TorchScript and as ONNX, side by side.

    .venv/bin/python -m bench.bench_onnx [--images 8000] [--side 28] [--repeats 3] [--threads N]

Both files are run through the service's own path (models.embeddings.build_embedder with a file kind:
TorchScript via torch.jit.load, ONNX via models.onnx_model.OnnxNetwork on the CPU execution provider),
alternating formats in each repeat so that load on a shared machine hits both alike; the eager nn.Module
runs alongside for reference. Prints images/s per format (median of the repeats), the ratio, and the
largest feature difference between the two files.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from models.embeddings import Embedder, EmbeddingConfig, FileEmbedder, build_embedder


class _Extractor(nn.Module):
    """images (B, 1, S, S) -> features (B, 128): two convs (the second stride 2), mean pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1)
        self.head = nn.Linear(64, 128)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.conv2(torch.relu(self.conv1(images))))  # (B, 64, S/2, S/2)
        return self.head(hidden.mean(dim=(2, 3)))


def _save_both(folder: Path, side: int, network: nn.Module) -> dict[str, Path]:
    scripted = folder / "extractor.pt"
    torch.jit.script(network).save(str(scripted))
    exported = folder / "extractor.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = {"x": {0: "b"}, "y": {0: "b"}}
        torch.onnx.export(network, (torch.zeros(2, 1, side, side),), str(exported), input_names=["x"],
                          output_names=["y"], dynamic_axes=axes, dynamo=False)  # fmt: skip
    return {"torchscript": scripted, "onnx": exported}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--side", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch (and so onnxruntime intra-op) threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = torch.rand(args.images, 1, args.side, args.side, generator=torch.Generator().manual_seed(1))
    seconds: dict[str, list[float]] = {"torchscript": [], "onnx": [], "eager": []}
    features: dict[str, torch.Tensor] = {}
    torch.manual_seed(0)
    network = _Extractor().eval()
    with tempfile.TemporaryDirectory() as folder:
        files = _save_both(Path(folder), args.side, network)
        embedders: dict[str, Embedder] = {
            kind: build_embedder(EmbeddingConfig(kind=kind, torchscript_path=str(path)), images[:2])  # type: ignore[arg-type]
            for kind, path in files.items()
        }
        embedders["eager"] = FileEmbedder(network, "eager")  # the nn.Module itself, for reference
        for embedder in embedders.values():  # warm-up (allocations, graph optimisation)
            embedder.embed(images[:1024])
        for _ in range(args.repeats):
            for kind, embedder in embedders.items():
                started = time.perf_counter()
                features[kind] = embedder.embed(images)
                seconds[kind].append(time.perf_counter() - started)
    rates = {kind: args.images / statistics.median(times) for kind, times in seconds.items()}
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{args.images} images {args.side}x{args.side}, median of {args.repeats}")
    for kind, rate in rates.items():
        times = ", ".join(f"{t:.2f}" for t in seconds[kind])
        print(f"  {kind:<11} {rate:9.0f} images/s   (s: {times})")
    print(f"  onnx / torchscript = {rates['onnx'] / rates['torchscript']:.2f}x")
    difference = float((features["onnx"] - features["torchscript"]).abs().max())
    print(f"  max |feature difference| = {difference:.2e}")


if __name__ == "__main__":
    main()
