"""Every input format on Fashion-MNIST images (the Debian package), converted by tests/formats_data.py:
same pixels, keys, labels and order from every lossless format, and the refusals (SPEC §6)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.data import DataError, DataTooLarge, ImageSet, load_dataset
from models.formats import Conversion, expand_braces, open_source
from models.formats.safety import ArchiveLimits
from models.formats.store import read_store, store_images, write_store
from tests.formats_data import (
    CLASSES,
    Subset,
    encode,
    fashion_subset,
    write_cifar,
    write_folder,
    write_npz,
    write_parquet,
    write_tar,
    write_webdataset,
    write_zip,
)

MB = 1 << 20
HF_FIXTURE = Path(__file__).resolve().parents[1] / "data" / "fashion_hf.parquet"


@pytest.fixture(scope="module")
def subset() -> Subset:
    return fashion_subset(48, offset=100)


@pytest.fixture(scope="module")
def converted(subset: Subset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    root = tmp_path_factory.mktemp("formats")
    write_webdataset(root / "wds", subset, shards=3)
    write_parquet(root / "parquet", subset, shards=2)
    return {
        "folder": write_folder(root / "folder", subset),
        "zip": write_zip(root / "images.zip", subset),
        "zip-wrapped": write_zip(root / "wrapped.zip", subset, wrap="fashion/"),
        "zip-bmp-png": write_zip(root / "mixed-codecs.zip", subset, kinds=("bmp", "png")),
        "tar": write_tar(root / "images.tar", subset),
        "tar.gz-reversed": write_tar(root / "images.tar.gz", subset, gz=True, reverse=True),
        "webdataset-pattern": str(root / "wds" / "train-{000..002}.tar"),
        "webdataset-folder": root / "wds",
        "parquet-folder": root / "parquet",
        "npz": write_npz(root / "keys.npz", subset),
    }


def _load(spec: Path | str, **kwargs: object) -> ImageSet:
    return load_dataset(spec, max_bytes=kwargs.pop("max_bytes", 64 * MB), **kwargs)  # type: ignore[arg-type]


def _stems(images: ImageSet) -> list[str]:
    return [key.rsplit(".", 1)[0] if key.endswith((".png", ".webp", ".bmp", ".jpg")) else key
            for key in images.key_texts()]  # type: ignore[union-attr]  # fmt: skip


@pytest.mark.parametrize("name", ["folder", "zip", "zip-wrapped", "zip-bmp-png", "tar", "tar.gz-reversed",
                                  "webdataset-pattern", "webdataset-folder", "parquet-folder", "npz"])
def test_every_lossless_format_gives_the_same_pixels_keys_labels_and_order(
    converted: dict[str, Path | str], subset: Subset, name: str
) -> None:
    images = _load(converted[name])
    assert images.count == 48 and images.image_shape == (1, 28, 28) and images.source_kind == "uint8"
    np.testing.assert_array_equal(images.as_uint8()[:, 0], subset.images)
    assert _stems(images) == subset.stems
    labels = images.label_texts()
    if name.startswith(("webdataset", "parquet")):  # .cls / ClassLabel: the class index or its name
        expected = subset.names if name.startswith("parquet") else [str(v) for v in subset.labels.tolist()]
    else:
        expected = subset.names  # the ImageFolder folder, or the npz's string labels
    assert labels == expected


def test_image_folder_keys_are_relative_posix_paths_and_labels_the_first_level_folder(
    converted: dict[str, Path | str], subset: Subset
) -> None:
    images = _load(converted["zip"])
    assert images.key_texts()[0] == f"{subset.stems[0]}.png"
    assert images.label_names == tuple(sorted(set(subset.names)))
    flat = _load(converted["zip-wrapped"])  # one wrapping folder is the archive's root, not a class
    assert flat.key_texts() == images.key_texts() and flat.label_texts() == images.label_texts()


def test_jpeg_archives_are_decoded_close_to_the_original(subset: Subset, tmp_path: Path) -> None:
    images = _load(write_zip(tmp_path / "jpeg.zip", subset, kinds=("jpg", "png")))
    assert images.key_texts()[0].endswith(".jpg") and images.key_texts()[1].endswith(".png")
    error = np.abs(images.as_uint8()[:, 0].astype(int) - subset.images.astype(int))
    assert error[1::2].max() == 0 and 0 < error[0::2].mean() < 4  # PNG exact, JPEG q95 close


def test_webp_decodes_as_rgb_and_mode_l_gives_the_gray_pixels_back(subset: Subset, tmp_path: Path) -> None:
    path = write_zip(tmp_path / "webp.zip", subset, kinds=("webp", "png"))
    with pytest.raises(DataError, match=r"28x28 L differs from .*\.webp \(28x28 RGB\)"):
        _load(path)  # WebP has no grayscale mode: lossless WebP of gray images decodes as RGB
    images = _load(path, conversion=Conversion(mode="L"))
    np.testing.assert_array_equal(images.as_uint8()[:, 0], subset.images)


def test_the_real_datasets_library_parquet_file(subset: Subset) -> None:
    """tests/data/fashion_hf.parquet was written by `datasets` itself (tests/data/make_hf_fixture.py)."""
    images = _load(HF_FIXTURE)
    assert images.count == 24 and images.image_shape == (1, 28, 28)
    expected = fashion_subset(24, offset=0)
    np.testing.assert_array_equal(images.as_uint8()[:, 0], expected.images)
    assert images.key_texts() == expected.stems
    assert images.label_texts() == expected.names  # ClassLabel names from the file's metadata


def test_parquet_without_an_id_column_keys_rows_by_index(subset: Subset, tmp_path: Path) -> None:
    paths = write_parquet(tmp_path / "p", subset, shards=2, with_id=False)
    images = _load(tmp_path / "p" / "train-{00000..00001}-of-00002.parquet")
    assert images.key_texts() == [str(i) for i in range(48)]
    assert len(paths) == 2


def test_cifar10_binary_batches(subset: Subset, tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar-10-batches-bin", subset)
    images = _load(tmp_path / "cifar-10-batches-bin")
    assert images.image_shape == (3, 32, 32) and images.count == 48
    np.testing.assert_array_equal(images.as_uint8()[:, 1, 2:30, 2:30], subset.images)
    assert images.key_texts()[:2] == ["data_batch_1.bin:0", "data_batch_1.bin:1"]
    assert images.key_texts()[24] == "data_batch_2.bin:0"
    assert images.label_texts() == subset.names
    one = _load(tmp_path / "cifar-10-batches-bin" / "data_batch_2.bin")
    assert one.count == 24


def test_lossless_formats_give_the_same_scores_by_key(converted: dict[str, Path | str]) -> None:
    from models.audit import run_audit
    from models.config import AuditConfig, ModelConfig, TrainConfig

    model = ModelConfig(hidden=(16,), latent=2)
    train = TrainConfig(epochs=1, batch_size=16)
    audit = AuditConfig(folds=2, repeats=1, is_samples=2, seed=3, device="cpu")
    scores = {}
    for name in ("zip", "parquet-folder", "webdataset-pattern", "npz"):
        images = _load(converted[name])
        result = run_audit(images.images, model, train, audit)
        scores[name] = dict(zip(_stems(images), result.scores.M.tolist(), strict=True))
    reference = scores.pop("zip")
    for name, by_key in scores.items():
        assert by_key == reference, name


# --- conversion ------------------------------------------------------------------------------------------


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_mixed_sizes_are_refused_naming_the_first_misfit_unless_resized(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = _zip(tmp_path / "mixed.zip", {"a/1.png": _png(rng.integers(0, 255, (28, 28), dtype=np.uint8)),
                                         "a/2.png": _png(rng.integers(0, 255, (28, 28), dtype=np.uint8)),
                                         "b/3.png": _png(rng.integers(0, 255, (40, 30), dtype=np.uint8)),
                                         "b/4.png": _png(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8))})
    with pytest.raises(DataError, match=r"b/3\.png: image sized 30x40 L differs from a/1\.png \(28x28 L\).*"
                                        r"dataset\.resize"):
        _load(path)
    resized = _load(path, conversion=Conversion(resize=(16, 16), mode="L"))
    assert resized.image_shape == (1, 16, 16) and resized.count == 4
    with pytest.raises(DataError, match=r"b/4\.png: image sized 16x16 RGB differs from a/1\.png \(16x16 L\)"):
        _load(path, conversion=Conversion(resize=(16, 16)))
    colour = _load(path, conversion=Conversion(resize=(8, 12), mode="RGB"))
    assert colour.image_shape == (3, 8, 12)


def test_resize_is_antialiased(tmp_path: Path) -> None:
    stripes = np.zeros((32, 32), dtype=np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: point sampling would give all-black or all-white
    path = _zip(tmp_path / "s.zip", {"s.png": _png(stripes)})
    small = _load(path, conversion=Conversion(resize=(8, 8)))
    assert 100 < small.as_uint8().mean() < 155 and small.as_uint8().std() < 30


def test_alpha_and_16_bit_images(tmp_path: Path) -> None:
    rgba = _zip(tmp_path / "rgba.zip", {"x.png": _png(np.zeros((4, 4, 4), dtype=np.uint8))})
    with pytest.raises(DataError, match="alpha"):
        _load(rgba)
    assert _load(rgba, conversion=Conversion(mode="RGB")).image_shape == (3, 4, 4)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), dtype=np.uint16)).save(buffer, format="PNG")
    deep = _zip(tmp_path / "deep.zip", {"x.png": buffer.getvalue()})
    with pytest.raises(DataError, match="16-bit"):
        _load(deep)


def test_keys_must_be_unique_and_the_error_lists_the_first_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "dup.npz"
    np.savez(path, images=np.zeros((5, 2, 2), dtype=np.uint8), keys=np.array(["a", "b", "a", "c", "b"]))
    with pytest.raises(DataError, match=r"keys must be unique; duplicated: 'a', 'b'") as caught:
        _load(path)
    assert caught.value.field == "dataset.keys"


def test_non_images_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    pixel = _png(np.zeros((2, 2), dtype=np.uint8))
    path = _zip(tmp_path / "x.zip", {"README.txt": b"hi", "__MACOSX/._a.png": b"junk", ".hidden.png": b"junk",
                                     "cat/.DS_Store": b"junk", "cat/a.png": pixel, "dog/b.PNG": pixel})
    images = _load(path)
    assert images.key_texts() == ["cat/a.png", "dog/b.PNG"] and images.label_texts() == ["cat", "dog"]


def test_brace_expansion() -> None:
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ValueError, match="unbalanced"):
        expand_braces("s-{000..002.tar")


# --- the canonical store ---------------------------------------------------------------------------------


def test_store_round_trip_and_memory_map(converted: dict[str, Path | str], subset: Subset,
                                         tmp_path: Path) -> None:  # fmt: skip
    limits = ArchiveLimits(max_bytes=64 * MB)
    source = open_source([Path(converted["tar.gz-reversed"])], field="dataset", limits=limits)
    assert source is not None
    meta = write_store(tmp_path / "store", source, conversion=Conversion(), limits=limits, field="dataset")
    assert meta["count"] == 48 and meta["shape"] == [48, 28, 28] and meta["format"] == "image-tar"
    stored = read_store(tmp_path / "store", field="dataset", max_bytes=64 * MB)
    direct = _load(converted["zip"])
    np.testing.assert_array_equal(stored.images, direct.images)  # archive order was reversed: sorted
    assert stored.key_texts() == direct.key_texts() and stored.label_texts() == direct.label_texts()
    mapped = store_images(tmp_path / "store")
    assert isinstance(mapped, np.memmap) and mapped.shape == (48, 28, 28)
    np.testing.assert_array_equal(mapped[5], subset.images[5])


# --- hostile archives (the service's corpus is tests/reliability/test_hostile_input.py) ------------------


def _tar_with(path: Path, build: object) -> Path:
    with tarfile.open(path, "w") as archive:
        build(archive)  # type: ignore[operator]
    return path


def _link(kind: bytes, target: str) -> object:
    def build(archive: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("cat/a.png")
        info.type, info.linkname = kind, target
        archive.addfile(info)

    return build


def _device(archive: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("cat/dev.png")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    archive.addfile(info)


@pytest.mark.parametrize(("kind", "words"),
                         [(tarfile.SYMTYPE, "symbolic link"), (tarfile.LNKTYPE, "hard link")])
def test_tar_links_are_refused(tmp_path: Path, kind: bytes, words: str) -> None:
    with pytest.raises(DataError, match=words):
        _load(_tar_with(tmp_path / "l.tar", _link(kind, "/etc/passwd")))


def test_tar_devices_and_traversal_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="device file"):
        _load(_tar_with(tmp_path / "d.tar", _device))
    for name, words in (("../evil.png", "climbs out"), ("/abs/evil.png", "absolute path")):
        def build(archive: tarfile.TarFile, name: str = name) -> None:
            data = _png(np.zeros((2, 2), dtype=np.uint8))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

        with pytest.raises(DataError, match=words):
            _load(_tar_with(tmp_path / "t.tar", build))


def test_zip_traversal_absolute_and_symlinks_are_refused(tmp_path: Path) -> None:
    pixel = _png(np.zeros((2, 2), dtype=np.uint8))
    for name, words in (("a/../../evil.png", "climbs out"), ("/etc/evil.png", "absolute"),
                        ("C:/evil.png", "absolute"), ("a\\evil.png", "backslashes")):
        with pytest.raises(DataError, match=words):
            _load(_zip(tmp_path / "z.zip", {name: pixel}))
    link = zipfile.ZipInfo("cat/link.png")
    link.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as archive:
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        _load(tmp_path / "s.zip")


def test_zip_bombs_are_refused_before_inflating(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.png", bytes(50 * MB))  # 50 MiB of zeros in ~50 kB
    with pytest.raises(DataTooLarge, match="declared uncompressed size"):
        _load(tmp_path / "bomb.zip", max_bytes=10 * MB)
    with pytest.raises(DataTooLarge, match="compression ratio"):
        load_dataset(tmp_path / "bomb.zip", max_bytes=1 << 30)


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    pixel = _png(np.zeros((2, 2), dtype=np.uint8))
    path = _zip(tmp_path / "many.zip", {f"{i}.png": pixel for i in range(30)})
    with pytest.raises(DataTooLarge, match="more than 20 members"):
        load_dataset(path, limits=ArchiveLimits(max_bytes=MB, max_members=20))


def test_tar_gz_bomb_is_refused_by_declared_size_and_by_ratio(tmp_path: Path) -> None:
    def big(archive: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("a.png")
        info.size = 40 * MB
        archive.addfile(info, io.BytesIO(bytes(40 * MB)))

    with tarfile.open(tmp_path / "bomb.tar.gz", "w:gz") as archive:
        big(archive)
    assert (tmp_path / "bomb.tar.gz").stat().st_size < MB
    with pytest.raises(DataTooLarge, match="declares 41943040 bytes"):
        _load(tmp_path / "bomb.tar.gz", max_bytes=10 * MB)
    with pytest.raises(DataTooLarge, match="compression ratio"):
        load_dataset(tmp_path / "bomb.tar.gz", max_bytes=1 << 30)


def test_garbage_archives_are_data_errors(tmp_path: Path) -> None:
    for name in ("g.zip", "g.tar", "g.tar.gz", "g.parquet"):
        (tmp_path / name).write_bytes(b"garbage" * 40)
        with pytest.raises(DataError):
            _load(tmp_path / name)
    (tmp_path / "data_batch_1.bin").write_bytes(bytes(3073 * 2 + 5))
    with pytest.raises(DataError, match="whole number of CIFAR-10 records"):
        _load(tmp_path / "data_batch_1.bin")


def test_a_row_naming_only_a_file_path_is_refused(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array([{"bytes": None, "path": "/data/a.png"}], type=image_type)})
    pq.write_table(table, tmp_path / "paths.parquet")
    with pytest.raises(DataError, match="image bytes are missing"):
        _load(tmp_path / "paths.parquet")


def test_encoded_images_of_other_formats_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(buffer, format="GIF")
    with pytest.raises(DataError, match="cannot decode"):
        _load(_zip(tmp_path / "gif.zip", {"a.png": buffer.getvalue()}))
    assert encode(np.zeros((2, 2), dtype=np.uint8), "png")[:4] == b"\x89PNG"
    assert len(CLASSES) == 10


def test_a_pixel_file_appears_whole_or_not_at_all_and_reads_back_chunk_by_chunk(tmp_path: Path) -> None:
    from models.formats.records import pixel_file_chunks, write_pixel_file

    target = tmp_path / "pixels" / "set.npy"
    rows = np.arange(6 * 4 * 5, dtype=np.uint8).reshape(6, 4, 5)
    seen_while_writing = []

    def chunks(fail_at: int | None = None) -> Iterator[np.ndarray]:
        for start in range(0, 6, 2):
            seen_while_writing.append(target.exists())
            if start == fail_at:
                raise OSError("No space left on device")
            yield rows[start:start + 2]

    with pytest.raises(OSError):
        write_pixel_file(target, rows.shape, chunks(fail_at=4))
    assert list(target.parent.iterdir()) == []  # neither the file nor its temporary name
    write_pixel_file(target, rows.shape, chunks())
    assert seen_while_writing == [False] * 6
    np.testing.assert_array_equal(np.load(target), rows)
    shape, read = pixel_file_chunks(target, field="dataset")
    assert shape == rows.shape
    np.testing.assert_array_equal(np.concatenate(list(read)), rows)
