"""Converting real datasets into the canonical store, and the API's memory while it validates an upload.

    .venv/bin/python bench/bench_formats.py [--count 60000] [--skip-upload]

Fashion-MNIST's 60,000 training images (the Debian package) are written as an ImageFolder zip of PNGs and
as Hugging Face parquet (PNG bytes), then converted into the canonical store (models/formats/store.py).
Measured in the same run, so the ratios hold on a busy machine: each conversion against decoding the very
same PNG bytes in a bare loop (the floor), and the array path (reading the .npz) for scale. Then a child
process runs the API (embedded SQLite, in-process) and uploads the zip: its peak RSS above its RSS before
the upload, against the dataset's uint8 and float32 sizes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_inputs(folder: Path, count: int) -> tuple[list[bytes], np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.builtin_datasets import load_fashion_mnist

    train = load_fashion_mnist("train")
    pixels, labels = train.as_uint8()[:count, 0], train.labels[:count]  # type: ignore[index]
    encoded = [_png(image) for image in pixels]
    names = [f"{label}/{i:05d}.png" for i, label in enumerate(labels.tolist())]
    with zipfile.ZipFile(folder / "fashion.zip", "w", zipfile.ZIP_STORED) as archive:
        for name, data in zip(names, encoded, strict=True):
            archive.writestr(name, data)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"id": names, "image": pa.array([{"bytes": d, "path": None} for d in encoded],
                                                     type=image_type), "label": labels.tolist()})  # fmt: skip
    pq.write_table(table, folder / "fashion.parquet", row_group_size=4096)
    np.savez(folder / "fashion.npz", images=pixels, labels=labels)
    return encoded, pixels


def _timed(label: str, work: object) -> float:
    started = time.perf_counter()
    work()  # type: ignore[operator]
    seconds = time.perf_counter() - started
    print(f"{label}: {seconds:.2f} s", file=sys.stderr)
    return seconds


def _conversions(folder: Path, encoded: list[bytes]) -> dict[str, float]:
    from models.data import load_dataset
    from models.formats import Conversion, open_source
    from models.formats.decode import decode_image
    from models.formats.safety import ArchiveLimits
    from models.formats.store import write_store

    limits = ArchiveLimits(max_bytes=2 << 30)

    def decode_only() -> None:
        for data in encoded:
            decode_image(data, "x", budget=1 << 30, field="dataset", conversion=Conversion())

    def store(name: str) -> None:
        source = open_source([folder / name], field="dataset", limits=limits)
        assert source is not None
        write_store(folder / f"store-{name}", source, conversion=Conversion(), limits=limits, field="dataset")

    return {
        "decode_png_floor_s": _timed("decode the PNGs only", decode_only),
        "zip_to_store_s": _timed("zip -> store", lambda: store("fashion.zip")),
        "parquet_to_store_s": _timed("parquet -> store", lambda: store("fashion.parquet")),
        "npz_load_s": _timed("npz -> ImageSet (array path)", lambda: load_dataset(folder / "fashion.npz")),
    }


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _upload_rss(folder: Path) -> dict[str, float]:
    """`memaudit serve --no-worker` in its own process; the zip is streamed to it by httpx from this one,
    so the server's RSS is the API's alone. Its peak (VmHWM) above its RSS just before the upload."""
    import socket

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MEMAUDIT_DATA_DIR": f"{tmp}/data", "MEMAUDIT_PORT": str(port),
               "MEMAUDIT_MAX_UPLOAD_BYTES": str(1 << 30), "MEMAUDIT_API_KEYS": ""}  # fmt: skip
        server = subprocess.Popen([sys.executable, "-m", "app", "serve", "--no-worker"], cwd=REPO, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    httpx.get(f"{url}/health", timeout=2)
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            before = _status(server.pid, "VmRSS:")
            started = time.perf_counter()
            with (folder / "fashion.zip").open("rb") as handle:
                response = httpx.post(f"{url}/datasets", files={"file": ("fashion.zip", handle)}, timeout=600)
            seconds = time.perf_counter() - started
            assert response.status_code == 201, response.text
            peak = _status(server.pid, "VmHWM:")
        finally:
            server.terminate()
            server.wait(timeout=30)
    return {"upload_seconds": seconds, "api_rss_before_mb": before / 2**20, "api_peak_rss_mb": peak / 2**20,
            "api_peak_above_before_mb": (peak - before) / 2**20}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--count", type=int, default=60000)
    parser.add_argument("--skip-upload", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        encoded, pixels = _write_inputs(folder, args.count)
        results: dict[str, object] = {"count": args.count, "load_average": os.getloadavg()[0],
                                      "zip_mb": (folder / "fashion.zip").stat().st_size / 2**20,
                                      "parquet_mb": (folder / "fashion.parquet").stat().st_size / 2**20,
                                      "uint8_mb": pixels.nbytes / 2**20,
                                      "float32_mb": pixels.nbytes * 4 / 2**20}  # fmt: skip
        times = _conversions(folder, encoded)
        results.update(times)
        results["zip_images_per_s"] = args.count / times["zip_to_store_s"]
        results["parquet_images_per_s"] = args.count / times["parquet_to_store_s"]
        results["zip_vs_decode_floor"] = times["zip_to_store_s"] / times["decode_png_floor_s"]
        results["parquet_vs_decode_floor"] = times["parquet_to_store_s"] / times["decode_png_floor_s"]
        if not args.skip_upload:
            results.update(_upload_rss(folder))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
