"""Writes 300 Fashion-MNIST test images (the Debian package) in every input format memaudit reads, for
the examples of docs/science.md and docs/api.md. From the repository root:

    python docs/examples/make_formats.py DIR

DIR/fashion.zip (ImageFolder, PNG), DIR/fashion.tar.gz (ImageFolder, PNG), DIR/shards/train-00{0,1,2}.tar
(WebDataset), DIR/fashion.parquet (Hugging Face layout), DIR/fashion.npz (images, keys, labels),
DIR/cifar-10-batches-bin/ (the images padded to 32x32 RGB) and DIR/fashion-mixed.zip (two sizes: needs
resize). The writers are the ones the tests use (tests/formats_data.py); every format holds the samples in
key order.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.formats_data import (
    encode,
    fashion_subset,
    write_cifar,
    write_npz,
    write_parquet,
    write_tar,
    write_webdataset,
    write_zip,
)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    subset = fashion_subset(300)
    write_zip(out / "fashion.zip", subset)
    write_tar(out / "fashion.tar.gz", subset, gz=True)
    write_webdataset(out / "shards", subset, shards=3)
    (out / "fashion.parquet").unlink(missing_ok=True)
    write_parquet(out / "parquet", subset, shards=1)[0].rename(out / "fashion.parquet")
    write_npz(out / "fashion.npz", subset)
    write_cifar(out / "cifar-10-batches-bin", subset)
    with zipfile.ZipFile(out / "fashion-mixed.zip", "w") as archive:
        for i, (stem, pixels) in enumerate(zip(subset.stems, subset.images, strict=True)):
            image = pixels if i % 2 else pixels[2:-2, 2:-2]  # every other image 24x24
            archive.writestr(f"{stem}.png", encode(image, "png"))
    print(f"wrote {len(subset.stems)} images in every format under {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "formats-example"))
