"""`memaudit audit`, run in-process on tiny configs: outputs, the nearest-neighbour columns, input errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from app.cli import main
from app.cli.progress import AuditProgress
from models.audit import ProgressEvent
from models.config import PRESETS, ModelConfig
from models.data import load_dataset
from models.networks import count_parameters

TINY = ["--folds", "2", "--repeats", "1", "--epochs", "1", "--is-samples", "4", "--hidden", "32,16"]
TINY += ["--latent", "2", "--device", "cpu", "--seed", "3"]


def _tiny_with_repeats(repeats: int) -> list[str]:
    args = list(TINY)
    args[args.index("--repeats") + 1] = str(repeats)
    return args


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("digits")
    pixels = load_dataset("digits").as_uint8()[:, 0]  # (1797, 8, 8)
    np.savez(folder / "train.npz", images=pixels[:120])
    np.savez(folder / "heldout.npz", images=pixels[1000:1040])
    return folder / "train.npz", folder / "heldout.npz"


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    return {key: np.array([float(row[key]) for row in rows]) for key in rows[0] if key not in TEXT_COLUMNS}


TEXT_COLUMNS = ("key", "label")  # the user's ids and classes (empty for an .npz without them)


def test_audit_writes_scores_summary_and_prints_the_top_ten(
    digits_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["audit", str(digits_files[0]), "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr()
    assert printed.err == ""  # not a terminal: no progress bar
    table = _read_csv(out / "scores.csv")
    with (out / "scores.csv").open() as handle:
        header = next(csv.reader(handle))
    assert header == ["sample_id", "key", "label", "score", "log_p_in", "log_p_out", "score_se", "score_lo",
                      "score_hi"]  # fmt: skip
    assert np.isnan(table["score_se"]).all()  # L = 1: no interval
    np.testing.assert_array_equal(table["sample_id"], np.arange(120))
    np.testing.assert_allclose(table["score"], table["log_p_in"] - table["log_p_out"], atol=1e-9)
    assert np.isfinite(table["score"]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["audit"]["folds"] == 2 and summary["config"]["model"]["hidden"] == [32, 16]
    assert summary["quantiles"]["0.95"] == pytest.approx(np.quantile(table["score"], 0.95))
    assert set(summary["versions"]) == {"python", "torch", "numpy", "memaudit"}
    assert summary["timings"]["total_seconds"] > 0 and summary["device"] == "cpu"
    assert summary["model_parameters"] == count_parameters(ModelConfig(hidden=(32, 16), latent=2), (1, 8, 8))
    assert summary["confidently_memorized"] is None and summary["stability"] == []
    assert summary["repeats_used"] == 1 and summary["stopped_early"] is False
    assert len(summary["loss_curves"]["train"]) == 2 and len(summary["loss_curves"]["train_mean"]) == 1
    top_lines = [line for line in printed.out.splitlines() if line[:4].strip().isdigit()]
    assert len(top_lines) == 10
    best = int(np.argmax(table["score"]))
    assert top_lines[0].split()[1] == str(best)


def test_heldout_adds_per_sample_nearest_neighbour_columns_in_parquet(
    digits_files: tuple[Path, Path], tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    train_path, heldout_path = digits_files
    out = tmp_path / "nn"
    args = ["audit", str(train_path), "--out", str(out), *TINY, "--heldout", str(heldout_path)]
    assert main([*args, "--format", "parquet", "--eval-every", "1", "--top", "3"]) == 0
    table = pq.read_table(out / "scores.parquet").to_pydict()
    assert list(table) == [
        "sample_id", "key", "label", "score", "log_p_in", "log_p_out", "score_se", "score_lo", "score_hi",
        "d_heldout", "d_model", "rho",
    ]  # fmt: skip
    assert set(table["key"]) == {None} and set(table["label"]) == {None}  # an .npz without them: null
    d_h, d_s, rho = (np.array(table[name]) for name in ("d_heldout", "d_model", "rho"))
    np.testing.assert_allclose(rho, d_h / d_s)
    train = load_dataset(train_path).images.reshape(120, -1).astype(np.float64)
    heldout = load_dataset(heldout_path).images.reshape(40, -1).astype(np.float64)
    exact = np.linalg.norm(train[:, None] - heldout[None], axis=2).min(axis=1)  # every sample's own minimum
    np.testing.assert_allclose(d_h, exact, rtol=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    nn = summary["nearest_neighbours"]
    assert nn["reference_size"] == 40 and nn["spearman_count"] == 120
    expected = stats.spearmanr(rho, np.array(table["score"])).statistic
    assert nn["spearman_rho_vs_score"] == pytest.approx(expected)
    assert summary["epoch_quantiles"]["epochs"] == [1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--folds", "500"], "folds: 500 folds is more than the 120"),
        (["--folds", "1"], "folds"),
        (["--likelihood", "gaussian_diag", "--latent", "0"], "latent"),
        (["--heldout", "SMALL"], "heldout: held-out images are shaped"),
        (["--heldout", "HELDOUT", "--nn-downscale", "3"], "nn-downscale"),
        (["--heldout", "MISSING"], "heldout: no such file"),
    ],
)
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(
    digits_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    small = tmp_path / "small.npz"
    np.savez(small, images=np.zeros((5, 4, 4), dtype=np.uint8))
    paths = {"SMALL": str(small), "HELDOUT": str(digits_files[1]), "MISSING": str(tmp_path / "none.npz")}
    extra = [paths.get(item, item) for item in extra]
    out = tmp_path / "out"
    code = main(["audit", str(digits_files[0]), "--out", str(out), *TINY, *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err and message in err
    assert not out.exists()


def test_conv_architecture_on_small_images_passes_the_preflight_checks(
    digits_files: tuple[Path, Path], tmp_path: Path
) -> None:
    assert (
        main(["audit", str(digits_files[0]), "--out", str(tmp_path), *TINY, "--arch", "conv", "--top", "0"])
        == 0
    )
    assert (tmp_path / "scores.csv").exists()


def test_data_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        "nan.npz": (np.full((10, 4, 4), np.nan), [], "NaN"),
        "floats.npz": (np.full((10, 4, 4), 0.3), ["--likelihood", "logistic"], "8-bit"),
        "range.npz": (np.full((10, 4, 4), 3.0), [], "[0, 1]"),
    }
    for name, (array, extra, message) in cases.items():
        np.savez(tmp_path / name, images=array)
        code = main(["audit", str(tmp_path / name), "--out", str(tmp_path / "o"), *TINY, *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.startswith("memaudit audit: error: dataset:")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    assert main(["audit", str(tmp_path / "garbage.npz"), "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "not a readable .npz" in capsys.readouterr().err


def test_bad_option_values_are_argparse_errors(digits_files: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["audit", str(digits_files[0]), "--out", str(tmp_path), "--hidden", "5,a"])
    assert caught.value.code == 2


def test_progress_counts_model_epochs_for_batched_and_sequential_units() -> None:
    stream = io.StringIO()
    with AuditProgress(4, 2, enabled=True, stream=stream) as progress:
        progress(ProgressEvent((0, 1), 1, 2, "train", 0.1))  # a batched unit of two models
        assert progress.completed == 2 and progress.models_finished == 0
        progress(ProgressEvent((0, 1), 2, 2, "train", 0.2))
        progress(ProgressEvent((0, 1), 2, 2, "eval", 0.3))
        progress(ProgressEvent((2,), 1, 2, "train", 0.4))  # then sequential models one by one
        assert progress.completed == 5 and progress.models_finished == 2
    assert "5/8" in stream.getvalue() and "model-epoch" in stream.getvalue()


def test_disabled_progress_writes_nothing() -> None:
    stream = io.StringIO()
    with AuditProgress(2, 2, enabled=False, stream=stream) as progress:
        progress(ProgressEvent((0,), 1, 2, "train", 0.1))
        assert progress.completed == 1
    assert stream.getvalue() == ""


def test_repetitions_give_intervals_stability_and_the_confident_count(
    digits_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _tiny_with_repeats(3)
    assert main(["audit", str(digits_files[0]), "--out", str(tmp_path), *args, "--top", "3"]) == 0
    printed = capsys.readouterr().out
    table = _read_csv(tmp_path / "scores.csv")
    assert np.isfinite(table["score_se"]).all() and np.all(table["score_lo"] <= table["score_hi"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    threshold = summary["highly_memorized_threshold"]
    assert summary["confidently_memorized"] == int(np.sum(table["score_lo"] > threshold))
    assert [entry["repetition"] for entry in summary["stability"]] == [2, 3]
    assert all(0 <= entry["overlap"] <= 1 for entry in summary["stability"])
    assert summary["stability_top_k"] == 10 and summary["repeats_used"] == 3
    assert summary["bootstrap"] == {"resamples": 200, "interval_percentiles": [5, 95]}
    assert "Confidently memorized" in printed


def test_stop_when_stable_stops_early_and_says_so(
    digits_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*_tiny_with_repeats(6), "--stop-when-stable", "1e-9"]
    assert main(["audit", str(digits_files[0]), "--out", str(tmp_path), *args]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["repeats_used"] == 3 and summary["repeats_requested"] == 6 and summary["stopped_early"]
    assert summary["config"]["audit"]["stop_when_stable"] == 1e-9
    assert len(summary["loss_curves"]["train"]) == 6  # K = 2 models per repetition, 3 repetitions
    assert "stopped early" in capsys.readouterr().out
    bad = ["--stop-when-stable", "2"]
    assert main(["audit", str(digits_files[0]), "--out", str(tmp_path / "x"), *TINY, *bad]) == 2
    assert "stop_when_stable" in capsys.readouterr().err


def test_presets_fill_in_the_papers_settings_and_explicit_options_win(
    digits_files: tuple[Path, Path], tmp_path: Path
) -> None:
    small = ["--folds", "2", "--repeats", "1", "--epochs", "1", "--is-samples", "2", "--device", "cpu"]
    small += ["--top", "0"]
    out = tmp_path / "mnist"
    assert main(["audit", str(digits_files[0]), "--out", str(out), "--preset", "mnist", *small]) == 0
    summary = json.loads((out / "summary.json").read_text())
    model, audit = summary["config"]["model"], summary["config"]["audit"]
    assert {key: model[key] for key in ("arch", "latent", "likelihood", "pad_to")} == {
        "arch": "mlp", "latent": 16, "likelihood": "bernoulli", "pad_to": 32,
    }  # fmt: skip
    assert model["hidden"] == [512, 256] and audit["is_samples"] == 2 and audit["folds"] == 2
    # the 8x8 digits were padded to 32x32: the MLP reads 1024 pixels, as the paper's MNIST one does
    paper_mnist = ModelConfig(**PRESETS["mnist"]["model"])
    assert summary["model_parameters"] == count_parameters(paper_mnist, (1, 32, 32))
    out = tmp_path / "celeba"
    celeba = ["--preset", "celeba", *small, "--latent", "4", "--base-filters", "4"]
    assert main(["audit", str(digits_files[0]), "--out", str(out), *celeba]) == 0
    model = json.loads((out / "summary.json").read_text())["config"]["model"]
    assert (model["arch"], model["likelihood"], model["latent"], model["base_filters"]) == (
        "conv", "gaussian_const", 4, 4,
    )  # fmt: skip


def test_keys_and_labels_of_an_image_folder_zip_reach_scores_csv_and_the_per_class_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.formats_data import fashion_subset, write_zip

    subset = fashion_subset(40, offset=300)
    archive = write_zip(tmp_path / "fashion.zip", subset, kinds=("png", "jpg"))
    out = tmp_path / "out"
    assert main(["audit", str(archive), "--out", str(out), "--resize", "8,8", *TINY]) == 0
    with (out / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["key"].rsplit(".", 1)[0] for row in rows] == subset.stems
    assert [row["label"] for row in rows] == subset.names
    summary = json.loads((out / "summary.json").read_text())
    classes = {row["label"]: row for row in summary["per_class"]}
    assert set(classes) == set(subset.names)
    assert sum(row["count"] for row in classes.values()) == 40
    threshold = summary["highly_memorized_threshold"]
    for name, row in classes.items():
        mine = np.array([float(r["score"]) for r in rows if r["label"] == name])
        assert row["median"] == pytest.approx(np.median(mine))
        assert row["n_above_threshold"] == int((mine > threshold).sum())
    assert summary["dataset"]["has_keys"] and summary["dataset"]["image_shape"] == [1, 8, 8]
    best = max(rows, key=lambda row: float(row["score"]))
    assert best["key"] in capsys.readouterr().out  # the printed top list names keys
