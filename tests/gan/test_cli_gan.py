"""`memaudit copytest` and `memaudit mrgan` end to end on small inputs; bad input exits 2 with one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from app.cli import main
from tests.gan.conftest import DigitSplits


def _save(path: Path, images: torch.Tensor) -> str:
    np.savez(path, images=(images[:, 0] * 255).round().to(torch.uint8).numpy())  # (N, H, W) uint8
    return str(path)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def copy_files(tmp_path: Path, digit_splits: DigitSplits) -> dict[str, str]:
    copies = digit_splits.train[:40].repeat(4, 1, 1, 1)
    generated = torch.cat([copies, digit_splits.fresh[:290]])
    return {
        "train": _save(tmp_path / "train.npz", digit_splits.train),
        "test": _save(tmp_path / "test.npz", digit_splits.test),
        "generated": _save(tmp_path / "generated.npz", generated),
    }


def test_copytest_writes_tables_and_ranks_copies(
    tmp_path: Path, copy_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["copytest", "--train", copy_files["train"], "--test", copy_files["test"]]
    code = main([*args, "--generated", copy_files["generated"], "--cells", "5", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["c_t"] < -2.0 and summary["cells"] == 5
    ranked = _rows(out / "copy_counts.csv")
    assert {int(row["sample_id"]) for row in ranked[:40]} == set(range(40))
    assert all(int(row["copy_count"]) == 4 for row in ranked[:40])
    # SPEC §5 counts every generated sample within the radius, so each copied image has at least its 4
    within = [int(row["within_tau_count"]) for row in ranked]
    assert all(count >= 4 for count in within[:40]) and within == sorted(within, reverse=True)
    assert summary["within_tau"][0]["tau"] == summary["copy_threshold"]
    assert summary["within_tau"][0]["pairs"] == sum(within)
    assert len(_rows(out / "cells.csv")) == 5 and len(_rows(out / "generated.csv")) == 450
    assert "C_T =" in capsys.readouterr().out


def test_copytest_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, copy_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    small = _save(tmp_path / "small.npz", torch.zeros(30, 1, 4, 4))
    args = ["copytest", "--train", copy_files["train"], "--test", copy_files["test"]]
    args += ["--out", str(tmp_path / "o")]
    assert main([*args, "--generated", small]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "generated: images are shaped (1, 4, 4)" in error
    assert main([*args, "--generator", str(tmp_path / "missing.pt")]) == 2
    assert "--generator needs --latent-dim" in capsys.readouterr().err
    assert main([*args, "--generated", copy_files["generated"], "--embedding", "inception"]) == 2
    assert "unknown kind 'inception'" in capsys.readouterr().err


def test_mrgan_sweep_writes_one_folder_per_tau(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    code = main([
        "mrgan", "digits", "--tau", "0", "--tau-quantile", "0.5", "--steps", "20", "--width", "32",
        "--n-generated", "200", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    sweep = _rows(out / "sweep.csv")
    assert [float(row["tau"]) > 0 for row in sweep] == [False, True]
    assert float(sweep[0]["rejection_rate"]) == 0.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["heldout"]["count"] == 299 and summary["gan"]["arch"] == "mlp"
    counts = _rows(out / "tau_01" / "copy_counts.csv")
    assert len(counts) == 1498
    within_tau = sum(int(row["within_tau_count"]) > 0 for row in counts)
    assert within_tau == int(sweep[1]["training_samples_within_tau"])
    assert {int(row["sample_id"]) % 6 for row in counts} == {0, 1, 2, 3, 4}  # ids in DATASET as given
    checkpoint = torch.load(out / "tau_01" / "generator.pt", weights_only=True)
    assert checkpoint["tau"] == pytest.approx(float(sweep[1]["tau"]))
    with np.load(out / "tau_00" / "samples.npz", allow_pickle=False) as samples:
        assert samples["images"].shape == (200, 8, 8, 1)
    assert "reject" in capsys.readouterr().out


def test_mrgan_needs_a_tau(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mrgan", "digits", "--out", str(tmp_path / "x")]) == 2
    assert "tau: give at least one tau or tau quantile" in capsys.readouterr().err
    assert main(["mrgan", "digits", "--tau", "3", "--out", str(tmp_path / "x")]) == 2
    assert "cosine distances lie in [0, 2]" in capsys.readouterr().err


def test_cli_choices_mirror_the_gan_config_and_the_cli_does_not_import_torch() -> None:
    import subprocess
    import sys

    from app.cli import gan as gan_cli
    from models.gan.config import GAN_ARCHS, REJECTION_MODES

    assert gan_cli.GAN_ARCHS == GAN_ARCHS
    assert gan_cli.REJECTION_MODES == REJECTION_MODES
    probe = "import sys, app.cli; app.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
