"""Writes tests/data/fashion_hf.parquet with the real Hugging Face `datasets` library (not a test dependency:
run it once in a virtual environment that has `datasets` and Pillow, from the repository root):

    python tests/data/make_hf_fixture.py

24 Fashion-MNIST test images (the Debian package's files), keyed like tests/formats_data.py, as
features {id: string, image: Image, label: ClassLabel(names=CLASSES)}.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle_boot")  # fmt: skip
ROOT = Path("/usr/share/datasets/fashion-mnist")


def _idx(path: Path, header: int) -> np.ndarray:
    return np.frombuffer(gzip.open(path).read(), dtype=np.uint8, offset=header)


def main() -> None:
    import datasets
    from PIL import Image

    pixels = _idx(ROOT / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[:24]
    labels = _idx(ROOT / "t10k-labels-idx1-ubyte.gz", 8)[:24].astype(int)
    stems = [f"{CLASSES[label]}/t{i:05d}" for i, label in enumerate(labels.tolist())]
    order = np.argsort(np.array(stems))
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=list(CLASSES))})  # fmt: skip
    table = datasets.Dataset.from_dict(
        {"id": [stems[i] for i in order], "image": [Image.fromarray(pixels[i]) for i in order],
         "label": [int(labels[i]) for i in order]}, features=features)  # fmt: skip
    table.to_parquet(str(REPO / "tests" / "data" / "fashion_hf.parquet"))
    print(f"datasets {datasets.__version__}: wrote {len(table)} rows", file=sys.stderr)


if __name__ == "__main__":
    main()
