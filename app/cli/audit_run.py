"""The work behind `memaudit audit` (its options are in app/cli/audit.py, which imports this lazily).

Every input is checked before any training starts; a bad input is one line on stderr and exit code 2.
Options left out keep the defaults of models.config (the paper's), so there is one source of defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app import provenance
from app.cli.audit_report import build_summary, format_top, score_columns, write_scores, write_summary
from app.cli.progress import AuditProgress, is_terminal
from models.audit import AuditResult, Cancelled, resolve_device, run_audit
from models.config import AuditConfig, ModelConfig, TrainConfig, configs_from_preset
from models.data import DataError, ImageSet, load_dataset, validate_audit_inputs
from models.networks import build_vae
from models.nn_compare import compare_nearest, downscale_images, rank_correlation

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130

MODEL_OPTIONS = {
    "arch": "arch",
    "hidden": "hidden",
    "latent": "latent",
    "likelihood": "likelihood",
    "base_filters": "base_filters",
    "pad_to": "pad_to",
}
TRAIN_OPTIONS = {"epochs": "epochs", "lr": "lr", "batch_size": "batch_size", "weight_decay": "weight_decay"}
AUDIT_OPTIONS = {
    "folds": "folds",
    "repeats": "repeats",
    "is_samples": "is_samples",
    "eval_every": "eval_every",
    "eval_noise": "eval_noise",
    "seed": "seed",
    "device": "device",
    "strategy": "strategy",
    "models_per_unit": "models_per_unit",
    "stop_when_stable": "stop_when_stable",
}


@dataclass(frozen=True)
class AuditInputs:
    model: ModelConfig
    train: TrainConfig
    audit: AuditConfig
    train_set: ImageSet
    heldout: ImageSet | None


def audit_command(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        inputs = prepare_inputs(args)
        args.out.mkdir(parents=True, exist_ok=True)
    except (DataError, ValueError) as error:
        return _input_error(error)
    except OSError as error:
        return _input_error(f"out: cannot create {args.out} ({error.strerror or error})")
    loaded = time.perf_counter()
    try:
        result = _train(inputs)
    except (KeyboardInterrupt, Cancelled):
        print("memaudit: audit interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    trained = time.perf_counter()
    nn = correlation = None
    if inputs.heldout is not None and result.samples is not None:
        nn = compare_nearest(
            inputs.train_set.images,
            inputs.heldout.images,
            result.samples,
            downscale=args.nn_downscale,
            device=result.device,
        )
        correlation = rank_correlation(nn.rho, result.scores.M)
    timings = {
        "load_seconds": loaded - started,
        "audit_seconds": trained - loaded,
        "nn_seconds": time.perf_counter() - trained,
        "total_seconds": time.perf_counter() - started,
    }
    columns = score_columns(result, nn, inputs.train_set)
    table = write_scores(args.out, columns, args.table_format)
    summary = build_summary(
        result=result,
        train=inputs.train_set,
        heldout=inputs.heldout,
        nn=nn,
        correlation=correlation,
        timings=timings,
    )
    summary["provenance"] = audit_provenance(args, inputs, result, timings)
    summary_path = write_summary(args.out, summary)
    _print_report(
        columns, result, correlation.statistic if correlation else None, args.top, table, summary_path
    )
    return 0


def prepare_inputs(args: argparse.Namespace) -> AuditInputs:
    """Configs, datasets and every check that can fail before training (raises DataError/ValueError)."""
    model_cfg, train_cfg, audit_cfg = configs_from_preset(
        args.preset, _given(args, MODEL_OPTIONS), _given(args, TRAIN_OPTIONS), _given(args, AUDIT_OPTIONS)
    )
    if args.top < 0:
        raise DataError("top", f"must be >= 0, got {args.top}")
    reading = reading_options(args)
    train_set = load_dataset(args.dataset, field="dataset", **reading)
    heldout = None if args.heldout is None else load_dataset(args.heldout, field="heldout", **reading)
    validate_audit_inputs(
        train_set, heldout, model_cfg.likelihood, audit_cfg.folds, repeats=audit_cfg.repeats
    )
    resolve_device(audit_cfg.device)
    build_vae(model_cfg, train_set.image_shape, 0)  # refuses image sizes the architecture cannot take
    if heldout is not None:
        try:
            downscale_images(_first_image(train_set), args.nn_downscale)
        except ValueError as error:
            raise DataError("nn-downscale", str(error).removeprefix("downscale: ")) from error
    return AuditInputs(model_cfg, train_cfg, audit_cfg, train_set, heldout)


def reading_options(args: argparse.Namespace) -> dict[str, Any]:
    """--resize H,W / --mode / --format as load_dataset's keyword arguments."""
    from models.formats import Conversion

    resize = getattr(args, "resize", None)
    conversion = Conversion(resize=resize, mode=getattr(args, "image_mode", None))
    return {"conversion": conversion, "format": getattr(args, "data_format", None) or "auto"}


def _train(inputs: AuditInputs) -> AuditResult:
    audit_cfg, train_cfg = inputs.audit, inputs.train
    heldout = None if inputs.heldout is None else inputs.heldout.images
    with AuditProgress(audit_cfg.n_models, train_cfg.epochs, enabled=is_terminal()) as progress:
        return run_audit(
            inputs.train_set.images, inputs.model, train_cfg, audit_cfg, progress=progress, heldout=heldout
        )


def _print_report(
    columns: dict[str, np.ndarray],
    result: AuditResult,
    spearman: float | None,
    top: int,
    table: Path,
    summary_path: Path,
) -> None:
    if top:
        print(format_top(columns, top))
    quantiles = ", ".join(f"q{key}={value:.4g}" for key, value in result.quantiles.items())
    print(f"M quantiles: {quantiles}")
    if result.n_confident is not None:
        print(f"Confidently memorized (90% interval above q0.95): {result.n_confident}")
    used, requested = result.repeats_used, int(result.folds_of.shape[0])
    if used < requested:
        print(f"Ranking stable after {used} of {requested} repetitions: stopped early")
    if spearman is not None:
        print(f"Spearman(rho, M) = {spearman:.4f}")
    print(f"Wrote {table} and {summary_path} ({result.timings['wall_seconds']:.1f} s on {result.device})")


def audit_provenance(args: argparse.Namespace, inputs: AuditInputs, result: AuditResult,
                     timings: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    """The same block as a service job's summary (app.provenance), for `memaudit diff`."""
    recorded = {"dataset": provenance.local_input(str(args.dataset), inputs.train_set)}
    if inputs.heldout is not None:
        recorded["heldout"] = provenance.local_input(str(args.heldout), inputs.heldout, "heldout")
    audit = {key: value for key, value in result.config["audit"].items() if key != "device"}
    config = {"model": result.config["model"], "training": result.config["train"], "audit": audit}
    phases = {"load_seconds": timings["load_seconds"], "train_seconds": result.timings.get("train_seconds"),
              "likelihood_seconds": result.timings.get("is_seconds"), "nn_seconds": timings["nn_seconds"],
              "total_seconds": timings["total_seconds"]}  # fmt: skip
    return provenance.build(inputs=recorded, config=config,
                            units=result.environment.get("units", []), phases=phases)  # fmt: skip


def _given(args: argparse.Namespace, options: dict[str, str]) -> dict[str, Any]:
    """The options the user actually gave, keyed by config field."""
    return {field: getattr(args, dest) for field, dest in options.items() if getattr(args, dest) is not None}


def _first_image(images: ImageSet) -> torch.Tensor:
    return torch.as_tensor(images.images[:1])  # (1, C, H, W)


def _input_error(error: Exception | str) -> int:
    print(f"memaudit audit: error: {error}", file=sys.stderr)
    return EXIT_INPUT_ERROR
