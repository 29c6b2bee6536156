"""The work behind `memaudit copytest` and `memaudit mrgan` (options: app/cli/gan.py, imported lazily).

Every input is checked before any training starts; a bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import torch

from app import provenance
from app.cli.audit_report import versions, write_summary
from app.cli.audit_run import reading_options
from app.cli.gan_report import (
    format_sweep,
    format_top_copied,
    names_of,
    sweep_columns,
    write_copytest,
    write_csv,
    write_tau_unit,
)
from models.audit import Cancelled, resolve_device
from models.copying import CopyTestConfig, resolve_cells
from models.data import DataError, ImageSet, load_dataset
from models.embeddings import EmbeddingConfig
from models.gan import (
    GanConfig,
    MrganConfig,
    MrganProgress,
    SweepConfig,
    TauResult,
    config_to_dict,
    generate_from_torchscript,
    run_copy_test,
    run_sweep,
)

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130
HELDOUT_EVERY = 6  # without --heldout, every sixth image (index % 6 == 5) is held out, as for digits


def copytest_command(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        device = resolve_device(args.device)
        train = load_dataset(args.train, field="train", **reading_options(args))
        test = load_dataset(args.test, field="test", **reading_options(args))
        _check_same_shape(train, test, "test")
        _check_top(args.top)
        train_images, test_images = _tensor(train, device), _tensor(test, device)
        generated = _generated_images(args, train, test.count, device)
        embedding = EmbeddingConfig.parse(args.embedding, seed=args.seed)
        copy_cfg = CopyTestConfig(
            cells=resolve_cells(args.cells, test.count), metric=args.metric, seed=args.seed
        )
        args.out.mkdir(parents=True, exist_ok=True)
        report = run_copy_test(
            train_images, test_images, generated, embedding=embedding, copy=copy_cfg,
            copy_quantile=args.copy_quantile, taus=args.tau,
        )  # fmt: skip
    except (DataError, ValueError) as error:
        return _input_error("copytest", error)
    except OSError as error:
        return _input_error("copytest", f"out: cannot create {args.out} ({error.strerror or error})")
    sample_ids = np.arange(train.count)
    tables = write_copytest(args.out, report, sample_ids, names_of(train))
    summary = {
        **report.summary(),
        "embedding": config_to_dict(embedding),
        "copy_test": config_to_dict(copy_cfg),
        "copy_quantile": args.copy_quantile,
        "train": train.describe(),
        "test": test.describe(),
        "generated_source": args.generated or f"torchscript:{args.generator}",
        "device": str(device),
        "seconds": time.perf_counter() - started,
        "versions": versions(),
    }
    recorded = {"train": (args.train, train), "test": (args.test, test), "generated": (args.generated, None)}
    config = {"copy_test": {**summary["copy_test"], "copy_quantile": args.copy_quantile, "seed": args.seed,
                            "embedding": summary["embedding"]}}  # fmt: skip
    summary["provenance"] = _provenance(args, recorded, config, device, summary["seconds"])
    summary_path = write_summary(args.out, summary)
    if args.top:
        print(format_top_copied(report.counts, sample_ids, args.top, report.within_tau[0]))
    kept, cells = summary["cells_kept"], summary["cells"]
    print(f"C_T = {report.copying.c_t:.3f} over {kept} of {cells} cells (<< 0: copying, >> 0: underfit)")
    print(f"Fréchet distance (test vs generated, {args.embedding}) = {report.frechet:.4g}")
    print(f"Wrote {', '.join(str(t) for t in tables)} and {summary_path}")
    return 0


def _generated_images(
    args: argparse.Namespace, train: ImageSet, n_test: int, device: torch.device
) -> torch.Tensor:
    if args.generated is not None:
        if args.latent_dim is not None or args.n_generated is not None:
            raise DataError("generated", "--latent-dim and --n-generated only apply to --generator")
        generated = load_dataset(args.generated, field="generated", **reading_options(args))
        _check_same_shape(train, generated, "generated")
        return _tensor(generated, device)
    if args.latent_dim is None:
        raise DataError("latent-dim", "--generator needs --latent-dim")
    return generate_from_torchscript(
        args.generator, args.latent_dim, args.n_generated or n_test, train.image_shape,
        seed=args.seed, device=device,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------- mrgan


def mrgan_command(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        device = resolve_device(args.device)
        train, heldout, sample_ids = _mrgan_data(args)
        gan, train_cfg, sweep = _mrgan_configs(args, train, heldout)
        embedding = EmbeddingConfig.parse(args.embedding, seed=args.seed)
        _check_top(args.top)
        args.out.mkdir(parents=True, exist_ok=True)
    except (DataError, ValueError) as error:
        return _input_error("mrgan", error)
    except OSError as error:
        return _input_error("mrgan", f"out: cannot create {args.out} ({error.strerror or error})")
    try:
        results = run_sweep(
            _tensor(train, device), _tensor(heldout, device), gan, train_cfg, sweep, embedding,
            progress=_print_progress if sys.stderr.isatty() else None,
        )  # fmt: skip
    except ValueError as error:  # e.g. C_T cells without test samples: a problem of the inputs
        return _input_error("mrgan", error)
    except (KeyboardInterrupt, Cancelled):
        print("memaudit mrgan: interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    _write_mrgan(args, results, sample_ids, gan, train_cfg, sweep, embedding, train, heldout, device, started)
    return 0


def _mrgan_data(args: argparse.Namespace) -> tuple[ImageSet, ImageSet, np.ndarray]:
    """Training set, held-out set and the training samples' ids in DATASET as given."""
    dataset = load_dataset(args.dataset, field="dataset", **reading_options(args))
    if args.heldout is not None:
        heldout = load_dataset(args.heldout, field="heldout", **reading_options(args))
        _check_same_shape(dataset, heldout, "heldout")
        return dataset, heldout, np.arange(dataset.count)
    held = np.arange(dataset.count) % HELDOUT_EVERY == HELDOUT_EVERY - 1
    if held.sum() < 2:
        raise DataError("heldout", f"{args.dataset} is too small to hold out every sixth image")
    train_ids = np.flatnonzero(~held)
    return dataset.subset(train_ids), dataset.subset(np.flatnonzero(held)), train_ids


def _mrgan_configs(
    args: argparse.Namespace, train: ImageSet, heldout: ImageSet
) -> tuple[GanConfig, MrganConfig, SweepConfig]:
    default = GanConfig.for_images(train.image_shape)
    arch = args.arch or default.arch
    fallback = default if arch == default.arch else GanConfig(arch=arch)
    gan = GanConfig(
        arch=arch, image_shape=train.image_shape,
        latent_dim=args.latent_dim or fallback.latent_dim, width=args.width or fallback.width,
    )  # fmt: skip
    given = {name: getattr(args, name) for name in ("steps", "batch_size", "d_steps", "lr")}
    train_cfg = MrganConfig(
        **{name: value for name, value in given.items() if value is not None}, mode=args.mode, seed=args.seed
    )
    sweep = SweepConfig(
        taus=tuple(args.tau), tau_quantiles=tuple(args.tau_quantile), copy_quantile=args.copy_quantile,
        n_generated=args.n_generated, cells=resolve_cells(args.cells, heldout.count),
        ct_metric=args.ct_metric,
    )  # fmt: skip
    return gan, train_cfg, sweep


def _write_mrgan(
    args: argparse.Namespace, results: list[TauResult], sample_ids: np.ndarray, gan: GanConfig,
    train_cfg: MrganConfig, sweep: SweepConfig, embedding: EmbeddingConfig, train: ImageSet,
    heldout: ImageSet, device: torch.device, started: float,
) -> None:  # fmt: skip
    for index, result in enumerate(results):
        write_tau_unit(args.out / f"tau_{index:02d}", result, sample_ids, names_of(train))
    table = write_csv(args.out / "sweep.csv", sweep_columns(results))
    seconds = time.perf_counter() - started
    summary = {
        "units": [{"folder": f"tau_{i:02d}", **result.summary()} for i, result in enumerate(results)],
        "gan": config_to_dict(gan),
        "training": config_to_dict(train_cfg),
        "sweep": config_to_dict(sweep),
        "embedding": config_to_dict(embedding),
        "train": train.describe(),
        "heldout": heldout.describe(),
        "device": str(device),
        "seconds": seconds,
        "versions": versions(),
    }
    # Without --heldout, DATASET is split here: its decoded content is the two parts together.
    whole = train if args.heldout else None
    recorded = {"dataset": (args.dataset, whole), "heldout": (args.heldout, heldout)}
    config = {name: summary[name] for name in ("gan", "training", "sweep", "embedding")}
    summary["provenance"] = _provenance(args, recorded, {"mrgan": config}, device, seconds)
    summary_path = write_summary(args.out, summary)
    print(format_sweep(results))
    print(f"Wrote {table}, {summary_path} and one tau_NN/ folder per tau")


def _print_progress(tau: float, event: MrganProgress) -> None:
    print(f"\rtau={tau:.4g} step {event.step}/{event.steps} rejected {event.rejection_rate:.3f}",
          end="\n" if event.step == event.steps else "", file=sys.stderr, flush=True)  # fmt: skip


# ------------------------------------------------------------------------------------------------ helpers


def _provenance(args: argparse.Namespace, datasets: dict[str, tuple[str | None, ImageSet | None]],
                config: dict[str, Any], device: torch.device, seconds: float) -> dict[str, Any]:  # fmt: skip
    """app.provenance's block for a GAN command: its datasets (decoded content where this command kept
    the set whole) and model files, the config, and the run's device and seconds."""
    inputs = {name: provenance.local_input(spec, images, name)
              for name, (spec, images) in datasets.items() if spec is not None}  # fmt: skip
    embedding = str(getattr(args, "embedding", "") or "")
    if ":" in embedding:  # torchscript:PATH (or another file-backed kind)
        inputs["embedding"] = provenance.local_model_file(embedding.split(":", 1)[1])
    if getattr(args, "generator", None):
        inputs["generator"] = provenance.local_model_file(args.generator)
    return provenance.build(inputs=inputs, config=config, units=[{"device": str(device), "seconds": seconds}],
                            phases={"total_seconds": seconds})  # fmt: skip


def _tensor(images: ImageSet, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(images.images).to(device)  # (N, C, H, W) float32 in [0, 1]


def _check_same_shape(train: ImageSet, other: ImageSet, field: str) -> None:
    if other.image_shape != train.image_shape:
        shapes = f"{other.image_shape} (C, H, W) but training images are {train.image_shape}"
        raise DataError(field, f"images are shaped {shapes}")


def _check_top(top: int) -> None:
    if top < 0:
        raise DataError("top", f"must be >= 0, got {top}")


def _input_error(command: str, error: Exception | str) -> int:
    print(f"memaudit {command}: error: {error}", file=sys.stderr)
    return EXIT_INPUT_ERROR
