"""Dataset loading and validation: every accepted format and every refusal rule (SPEC §6)."""

from __future__ import annotations

import gzip
import io
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from models.builtin_datasets import load_fashion_mnist
from models.data import (
    DataError,
    DataTooLarge,
    ImageSet,
    image_set_from_array,
    load_dataset,
    validate_audit_inputs,
)

MB = 1024 * 1024


def _save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _load(path: Path | str, **kwargs: object) -> ImageSet:
    return load_dataset(path, max_bytes=kwargs.pop("max_bytes", 64 * MB), **kwargs)  # type: ignore[arg-type]


# --- accepted formats ---------------------------------------------------------------------------


def test_npz_uint8_grayscale_becomes_unit_float_nchw(tmp_path: Path) -> None:
    pixels = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    labels = np.array([3, 1, 4, 1, 5])
    loaded = _load(_save_npz(tmp_path / "d.npz", images=pixels, labels=labels))
    assert loaded.images.shape == (5, 1, 4, 3) and loaded.images.dtype == np.float32
    assert loaded.source_kind == "uint8" and loaded.is_8bit
    assert loaded.original_shape == (5, 4, 3)
    np.testing.assert_array_equal(loaded.as_uint8()[:, 0], pixels)
    np.testing.assert_allclose(loaded.images[2, 0, 1, 2], pixels[2, 1, 2] / 255.0)
    assert loaded.labels is not None and loaded.labels.tolist() == [3, 1, 4, 1, 5]


def test_channels_last_rgb_is_transposed_pixel_for_pixel(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.random((3, 5, 6, 3), dtype=np.float32)
    loaded = _load(_save_npz(tmp_path / "rgb.npz", images=pixels))
    assert loaded.images.shape == (3, 3, 5, 6) and loaded.source_kind == "float"
    assert loaded.images[1, 2, 4, 5] == pixels[1, 4, 5, 2]
    assert loaded.image_shape == (3, 5, 6)


def test_npy_plain_and_fortran_order(tmp_path: Path) -> None:
    pixels = np.asfortranarray(np.random.default_rng(1).random((4, 3, 2)))
    np.save(tmp_path / "f.npy", pixels)
    loaded = _load(tmp_path / "f.npy")
    np.testing.assert_allclose(loaded.images[:, 0], pixels.astype(np.float32))


def test_png_folder_sorted_by_file_name(tmp_path: Path) -> None:
    folder = tmp_path / "pngs"
    folder.mkdir()
    for name, value in (("b.png", 20), ("a.png", 10), ("c.png", 30)):
        Image.fromarray(np.full((4, 5), value, dtype=np.uint8), mode="L").save(folder / name)
    (folder / "notes.txt").write_text("ignored")
    loaded = _load(folder)
    assert loaded.images.shape == (3, 1, 4, 5)
    assert loaded.as_uint8()[:, 0, 0, 0].tolist() == [10, 20, 30]


def test_png_folder_rgb(tmp_path: Path) -> None:
    folder = tmp_path / "rgb"
    folder.mkdir()
    pixel = np.zeros((2, 2, 3), dtype=np.uint8)
    pixel[..., 2] = 200
    Image.fromarray(pixel, mode="RGB").save(folder / "x.png")
    loaded = _load(folder)
    assert loaded.images.shape == (1, 3, 2, 2)
    assert loaded.as_uint8()[0, :, 0, 0].tolist() == [0, 0, 200]


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 5),
    st.integers(1, 5),
    st.sampled_from([None, 1, 3]),
    st.integers(0, 2**31 - 1),
)
def test_uint8_round_trip_through_npz(
    count: int, height: int, width: int, channels: int | None, seed: int
) -> None:
    shape = (count, height, width) if channels is None else (count, height, width, channels)
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, images=pixels)
    loaded = image_set_from_array(np.load(io.BytesIO(buffer.getvalue()))["images"], name="x")
    back = loaded.as_uint8()
    expected = pixels[:, None] if channels is None else np.transpose(pixels, (0, 3, 1, 2))
    np.testing.assert_array_equal(back, expected)


def test_integer_arrays_in_byte_range_count_as_uint8() -> None:
    loaded = image_set_from_array(np.array([[[0, 255]]], dtype=np.int64), name="ints")
    assert loaded.source_kind == "uint8" and loaded.images.max() == 1.0


def test_describe_and_subset() -> None:
    loaded = image_set_from_array(np.arange(12, dtype=np.uint8).reshape(3, 2, 2), name="s")
    facts = loaded.describe()
    assert (
        facts["count"] == 3 and facts["image_shape"] == [1, 2, 2] and facts["max"] == pytest.approx(11 / 255)
    )
    part = loaded.subset(np.array([2, 0]))
    assert part.count == 2 and part.as_uint8()[0, 0, 0, 0] == 8 and part.original_shape == (2, 2, 2)


# --- refused contents ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([[[0.5, np.nan]]]), "NaN or infinite"),
        (np.array([[[0.5, np.inf]]]), "NaN or infinite"),
        (np.array([[[0.5, 1.5]]]), r"\[0, 1\]"),
        (np.array([[[-0.1, 0.5]]]), r"\[0, 1\]"),
        (np.array([[[1e300, 0.5]]]), r"\[0, 1\]"),
        (np.array([[[0, 256]]], dtype=np.int32), "0..255"),
        (np.array([[[-1, 3]]], dtype=np.int16), "0..255"),
        (np.zeros((4, 5)), r"\(N, H, W\)"),
        (np.zeros((2, 3, 4, 3, 1)), r"\(N, H, W\)"),
        (np.zeros((0, 4, 4)), "empty"),
        (np.zeros((2, 0, 4)), "empty side"),
        (np.zeros((2, 4, 4, 2)), "1 or 3 channels"),
        (np.zeros((2, 1, 8, 8)), "channels first"),
        (np.zeros((2, 4, 4), dtype=np.complex64), "element type"),
    ],
)
def test_bad_arrays_are_refused_with_the_field_named(array: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message) as caught:
        image_set_from_array(array, name="bad", field="heldout")
    assert caught.value.field == "heldout"


def test_bad_labels_are_refused(tmp_path: Path) -> None:
    images = np.zeros((3, 2, 2), dtype=np.uint8)
    with pytest.raises(DataError, match="expected 3 labels") as caught:
        _load(_save_npz(tmp_path / "a.npz", images=images, labels=np.array([1, 2])))
    assert caught.value.field == "dataset.labels"
    with pytest.raises(DataError, match="integers"):
        _load(_save_npz(tmp_path / "b.npz", images=images, labels=np.array([1.0, 2.0, 3.0])))


def test_object_arrays_are_refused_and_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = np.empty(1, dtype=object)
    payload[0] = _Exploit(str(marker))
    np.save(tmp_path / "evil.npy", payload, allow_pickle=True)
    with pytest.raises(DataError, match="never objects"):
        _load(tmp_path / "evil.npy")
    np.savez(tmp_path / "evil.npz", images=payload)  # ragged/object data ends up as an object array
    with pytest.raises(DataError, match="never objects"):
        _load(tmp_path / "evil.npz")
    assert not marker.exists()


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


def test_ragged_images_are_refused(tmp_path: Path) -> None:
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((2, 2)), np.zeros((3, 3))
    np.savez(tmp_path / "ragged.npz", images=ragged)
    with pytest.raises(DataError, match="ragged images are saved as objects"):
        _load(tmp_path / "ragged.npz")


# --- refused files ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_empty_files_are_refused(tmp_path: Path, suffix: str) -> None:
    (tmp_path / f"e{suffix}").write_bytes(b"")
    with pytest.raises(DataError, match="the file is empty"):
        _load(tmp_path / f"e{suffix}")


def test_garbage_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "g.npy").write_bytes(b"this is not numpy at all" * 10)
    (tmp_path / "g.npz").write_bytes(b"PK\x03\x04 garbage" * 10)
    with pytest.raises(DataError, match=r"not a valid \.npy"):
        _load(tmp_path / "g.npy")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        _load(tmp_path / "g.npz")


def test_truncated_npy_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", np.zeros((10, 8, 8), dtype=np.uint8))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-100])
    with pytest.raises(DataError, match=r"smaller|truncated"):
        _load(tmp_path / "t.npy")


def test_corrupt_npz_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    np.savez_compressed(path, images=np.random.default_rng(0).integers(0, 255, (50, 8, 8), dtype=np.uint8))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 40] = bytes(40)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"c\.npz"):
        _load(path)


def test_npz_without_images_key_lists_what_it_found(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="found: pixels"):
        _load(_save_npz(tmp_path / "k.npz", pixels=np.zeros((2, 2, 2))))


def test_decompression_bomb_is_refused_before_decompressing(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, images=np.zeros((400, 512, 512), dtype=np.uint8))  # 100 MiB of zeros
    assert path.stat().st_size < MB
    started = time.perf_counter()
    with pytest.raises(DataTooLarge, match="exceeds the limit"):
        _load(path, max_bytes=10 * MB)
    assert time.perf_counter() - started < 0.5


def test_npy_header_declaring_a_huge_array_is_refused(tmp_path: Path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10**6, 28, 28)}
    )
    path = tmp_path / "liar.npy"
    path.write_bytes(header.getvalue() + bytes(100))
    with pytest.raises(DataTooLarge, match="over the limit"):
        _load(path, max_bytes=10 * MB)
    with pytest.raises(DataError, match="file is smaller"):
        _load(path, max_bytes=10**10)


def test_npz_member_header_larger_than_its_zip_entry_is_refused(tmp_path: Path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (1000, 8, 8)}
    )
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", header.getvalue() + bytes(64))
    with pytest.raises(DataError, match="file is smaller"):
        _load(path)


def test_png_folder_problems(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((5, 4), dtype=np.uint8)).save(mixed / "b.png")
    with pytest.raises(DataError, match=r"b\.png.*same size"):
        _load(mixed)
    alpha = tmp_path / "alpha"
    alpha.mkdir()
    Image.fromarray(np.zeros((4, 4, 4), dtype=np.uint8), mode="RGBA").save(alpha / "a.png")
    with pytest.raises(DataError, match="alpha"):
        _load(alpha)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 20)
    with pytest.raises(DataError, match=r"a\.png"):
        _load(broken)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no \.png"):
        _load(empty)
    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(np.zeros((100, 100), dtype=np.uint8)).save(big / "a.png")
    with pytest.raises(DataTooLarge, match="limit"):
        _load(big, max_bytes=5000)


def test_unknown_paths_and_types(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="built-ins: digits"):
        _load(tmp_path / "missing.npz")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="unsupported file type"):
        _load(tmp_path / "x.csv")


# --- data root confinement ----------------------------------------------------------------------


def test_paths_are_confined_to_the_data_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    _save_npz(root / "ok.npz", images=np.zeros((2, 2, 2), dtype=np.uint8))
    _save_npz(outside / "secret.npz", images=np.zeros((2, 2, 2), dtype=np.uint8))
    assert _load("ok.npz", data_root=root).count == 2
    for escape in ("../outside/secret.npz", str(outside / "secret.npz")):
        with pytest.raises(DataError, match="outside the data root"):
            _load(escape, data_root=root)
    (root / "link.npz").symlink_to(outside / "secret.npz")
    with pytest.raises(DataError, match="outside the data root"):
        _load("link.npz", data_root=root)


def test_png_folder_symlinks_cannot_escape_the_data_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "pngs").mkdir(parents=True)
    outside.mkdir()
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(outside / "secret.png")
    (root / "pngs" / "a.png").symlink_to(outside / "secret.png")
    with pytest.raises(DataError, match="outside the data root"):
        _load("pngs", data_root=root)


# --- audit-level validation ---------------------------------------------------------------------


def _set(pixels: np.ndarray) -> ImageSet:
    return image_set_from_array(pixels, name="t")


def test_fold_counts_and_repeats() -> None:
    train = _set(np.zeros((5, 3, 3), dtype=np.uint8))
    validate_audit_inputs(train, None, "bernoulli", 5)
    for folds, message in ((1, "at least 2"), (6, "more than the 5")):
        with pytest.raises(DataError, match=message) as caught:
            validate_audit_inputs(train, None, "bernoulli", folds)
        assert caught.value.field == "folds"
    with pytest.raises(DataError, match="repetition") as caught:
        validate_audit_inputs(train, None, "bernoulli", 2, repeats=0)
    assert caught.value.field == "repeats"


def test_heldout_must_match_the_training_shape() -> None:
    train = _set(np.zeros((5, 3, 3), dtype=np.uint8))
    validate_audit_inputs(train, _set(np.zeros((9, 3, 3), dtype=np.uint8)), "bernoulli", 2)
    with pytest.raises(DataError, match="held-out") as caught:
        validate_audit_inputs(train, _set(np.zeros((5, 3, 4), dtype=np.uint8)), "bernoulli", 2)
    assert caught.value.field == "heldout"


def test_likelihood_range_rules() -> None:
    quantised = _set(np.arange(8, dtype=np.float32).reshape(2, 2, 2) / 255.0)
    continuous = _set(np.linspace(0.0, 1.0, 8, dtype=np.float32).reshape(2, 2, 2) / 3.0)
    for likelihood in ("bernoulli", "gaussian_diag", "gaussian_const", "logistic"):
        validate_audit_inputs(quantised, None, likelihood, 2)
    validate_audit_inputs(continuous, None, "bernoulli", 2)
    for likelihood in ("gaussian_diag", "gaussian_const", "logistic"):
        with pytest.raises(DataError, match="8-bit") as caught:
            validate_audit_inputs(continuous, None, likelihood, 2)
        assert caught.value.field == "dataset"
    with pytest.raises(DataError, match="unknown likelihood") as caught:
        validate_audit_inputs(quantised, None, "poisson", 2)
    assert caught.value.field == "likelihood"


# --- built-ins ----------------------------------------------------------------------------------


def test_digits_builtin_is_exactly_8bit_with_disjoint_splits() -> None:
    every = _load("digits")
    assert every.images.shape == (1797, 1, 8, 8) and every.source_kind == "uint8" and every.is_8bit
    assert every.as_uint8().max() == 255 and every.labels is not None
    train, test = _load("digits:train"), _load("digits:test")
    assert (train.count, test.count) == (1498, 299)
    np.testing.assert_array_equal(test.images, every.images[5::6])
    with pytest.raises(DataError, match="pad32"):
        _load("digits:pad32")
    with pytest.raises(DataError, match="unknown option"):
        _load("digits:shuffled")


def test_fashion_mnist_missing_gives_the_install_hint(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", fashion_root=tmp_path)


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_files_and_padding(tmp_path: Path, compress: bool) -> None:
    pixels = np.random.default_rng(3).integers(1, 256, (7, 28, 28), dtype=np.uint8)
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", pixels, compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.arange(7), compress)
    plain = load_dataset("fashion-mnist:test", fashion_root=tmp_path)
    np.testing.assert_array_equal(plain.as_uint8()[:, 0], pixels)
    assert plain.labels is not None and plain.labels.tolist() == list(range(7))
    padded = load_fashion_mnist("test", pad32=True, root=tmp_path)
    assert padded.image_shape == (1, 32, 32)
    np.testing.assert_array_equal(padded.as_uint8()[:, 0, 2:30, 2:30], pixels)
    assert padded.as_uint8()[:, :, :2].max() == 0 and padded.as_uint8()[:, :, :, 30:].max() == 0


def test_corrupt_idx_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte").write_bytes(
        bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") * 3 + b"x"
    )
    with pytest.raises(DataError, match="data bytes"):
        load_dataset("fashion-mnist", fashion_root=tmp_path)
