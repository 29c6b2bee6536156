"""The GAN job kinds in the worker: what a unit computes, its artifact, and the finishing step.

`mrgan`: the plan step embeds the training and held-out sets once and stores that feature space as the
job's artifact `embedding.pt` (tensors and primitives only); unit i restores it (nothing is retrained),
trains the MR-GAN of the i-th tau (explicit taus first, then tau quantiles of the held-out distances)
and evaluates it; `copy_test`: one unit. workers.runner orchestrates (claiming,
heartbeats, cancel, retries) exactly as for VAE audits; this module only knows the science calls.
Artifacts are .npz without pickle (JSON summaries as 0-d unicode arrays; per-sample arrays; the generated
images as uint8 (m, C, H, W) under `generated`, for reports) plus the generator checkpoint
(`unit-NNNN.generator.pt`, tensors and primitives only).

Stored scores (one row per training sample): `within_tau_count` = SPEC §5's count_tau(i), the generated
samples within tau of the sample (a radius count; copy_test: its first radius, by default the copy
threshold), `nearest_copy_count` = generated samples whose nearest training sample it is, within the
held-out-calibrated copy threshold (docs/science.md), `score` = within_tau_count + 1 / (1 + closest
distance) so that the score-ordered index ranks by the SPEC §5 count, then closeness; `rho` for copy tests.
For a sweep the scores come from the unit with the smallest tau (the least-regularised GAN); the counts of
every tau go to the tau_counts table (``tau_count_rows``) and stay in the artifacts. Artifacts written
before the within-tau count was kept lack it: their jobs rank by the nearest-credit count as before.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.services.gan_specs import GAN_KINDS, MrganSpec, copy_test_configs, mrgan_configs
from app.services.score_writer import ScoreArrays
from app.settings import get_settings
from models.copying import CopyCounts
from models.gan import (
    FeatureSpace,
    MrganProgress,
    build_feature_space,
    feature_space_state,
    generate_from_model_file,
    resolve_taus,
    restore_feature_space,
    run_copy_test,
    run_tau_unit,
)
from models.imageset import ImageSet
from workers.results import temp_sibling

__all__ = ["GAN_KINDS", "GanInputs", "TauCounts", "compute_unit", "finish", "plan_units",
           "shared_feature_space", "tau_count_rows", "unit_steps", "write_unit"]
log = logging.getLogger(__name__)
EMBEDDING_FILE = "embedding.pt"


@dataclass(frozen=True)
class GanInputs:
    train: ImageSet
    heldout: ImageSet
    generated: ImageSet | None  # copy_test with uploaded samples


@dataclass(frozen=True)
class StepEvent:
    epoch: int  # what workers.runner.UnitMonitor reads: the generator step here


@dataclass
class GanUnitResult:
    arrays: dict[str, np.ndarray]  # per-sample arrays of the artifact
    summary: dict[str, Any]
    checkpoint: dict[str, Any] | None


def _mrgan_section(job_spec: dict[str, Any]) -> dict[str, Any]:
    section = job_spec.get("mrgan")
    return MrganSpec().model_dump() if section is None else dict(section)


def plan_units(job_spec: dict[str, Any], kind: str) -> list[list[int]]:
    """One unit per tau for mrgan, a single unit for copy_test (the unit index is its "model id")."""
    if kind == "mrgan":
        section = _mrgan_section(job_spec)
        return [[i] for i in range(len(section["taus"]) + len(section["tau_quantiles"]))]
    return [[0]]


def unit_steps(job_spec: dict[str, Any], kind: str) -> int:
    return int(_mrgan_section(job_spec)["steps"]) if kind == "mrgan" else 1


def _tensor(images: ImageSet, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(images.images).to(device)  # (N, C, H, W) float32 in [0, 1]


def _uint8(images: torch.Tensor) -> np.ndarray:
    """Generated images (m, C, H, W) as uint8, for reports (4x smaller than float32)."""
    return (images.detach().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


def shared_feature_space(job_dir: Path, job_spec: dict[str, Any], inputs: GanInputs,
                         device: torch.device) -> FeatureSpace:  # fmt: skip
    """The mrgan job's feature space: restored from ``job_dir/embedding.pt``, or computed and stored
    there (atomically) when it is missing or was made for another embedding. Deterministic on one
    device, so two runs that both compute it store the same thing."""
    configs = mrgan_configs(job_spec, inputs.train.image_shape, inputs.heldout.count, get_settings())
    train, heldout = _tensor(inputs.train, device), _tensor(inputs.heldout, device)
    path = job_dir / EMBEDDING_FILE
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            return restore_feature_space(state, train, heldout, configs.embedding)
        except (ValueError, KeyError, RuntimeError, OSError) as error:
            log.warning("%s cannot be used (%s); computing the feature space again", path, error)
    space = build_feature_space(train, heldout, configs.embedding)
    job_dir.mkdir(parents=True, exist_ok=True)
    temp = temp_sibling(path)
    try:
        torch.save(feature_space_state(space, configs.embedding), temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return space


def compute_unit(
    kind: str, job_spec: dict[str, Any], index: int, inputs: GanInputs, device: torch.device,
    progress: Callable[[Any], None], should_stop: Callable[[], bool], job_dir: Path,
) -> GanUnitResult:  # fmt: skip
    if kind == "mrgan":
        return _mrgan_unit(job_spec, index, inputs, device, progress, should_stop, job_dir)
    return _copy_test_unit(job_spec, inputs, device)


def _mrgan_unit(
    job_spec: dict[str, Any], index: int, inputs: GanInputs, device: torch.device,
    progress: Callable[[Any], None], should_stop: Callable[[], bool], job_dir: Path,
) -> GanUnitResult:  # fmt: skip
    configs = mrgan_configs(job_spec, inputs.train.image_shape, inputs.heldout.count, get_settings())
    train = _tensor(inputs.train, device)
    space = shared_feature_space(job_dir, job_spec, inputs, device)
    tau = resolve_taus(space, configs.sweep)[index]

    def report(event: MrganProgress) -> None:
        progress(StepEvent(epoch=event.step))

    result = run_tau_unit(train, space, tau, configs.gan, configs.training, configs.sweep,
                          progress=report, should_stop=should_stop)  # fmt: skip
    arrays = {
        "copy_count": result.copy_count.cpu().numpy(), "closest": result.closest.cpu().numpy(),
        "within_tau_count": result.within_tau_count.cpu().numpy(),
        "generated_distance": result.generated_distance.cpu().numpy(),
        "generated_nearest": result.generated_nearest.cpu().numpy(),
        "generated": _uint8(result.generated),
    }  # fmt: skip
    cells = [vars(row) for row in result.cells]
    return GanUnitResult(arrays, {**result.summary(), "unit": index, "cells": cells}, result.run.checkpoint())


def _copy_test_unit(job_spec: dict[str, Any], inputs: GanInputs, device: torch.device) -> GanUnitResult:
    configs = copy_test_configs(job_spec, inputs.train.image_shape, inputs.heldout.count, get_settings())
    if inputs.generated is not None:
        generated = _tensor(inputs.generated, device)
    else:
        assert configs.generator_path is not None and configs.latent_dim is not None
        count = configs.n_generated or inputs.heldout.count
        generated = generate_from_model_file(
            str(configs.generator_path), configs.latent_dim, count, inputs.train.image_shape,
            seed=configs.seed, device=device,
        )  # fmt: skip
    report = run_copy_test(_tensor(inputs.train, device), _tensor(inputs.heldout, device), generated,
                           embedding=configs.embedding, copy=configs.copy,
                           copy_quantile=configs.copy_quantile)  # fmt: skip
    arrays = {
        "copy_count": report.counts.count.cpu().numpy(), "closest": report.counts.closest.cpu().numpy(),
        "rho": report.rho.rho.cpu().numpy(),
        "within_tau_count": report.within_tau[0].cpu().numpy(),  # (N,) at the first radius
        "within_tau_counts": report.within_tau.cpu().numpy(), "taus": np.asarray(report.taus),  # (T, N), (T,)
        "generated_distance": report.generated_nearest.distance.cpu().numpy(),
        "generated_nearest": report.generated_nearest.index.cpu().numpy(),
        "generated": _uint8(generated),
    }  # fmt: skip
    cells = [vars(row) for row in report.copying.cells]
    return GanUnitResult(arrays, {**report.summary(), "cells": cells}, None)


def write_unit(path: Path, result: GanUnitResult) -> None:
    """Atomic like the VAE artifacts: write to a temp name, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = path.with_name(f"{path.stem}.generator.pt")
    temp, checkpoint_temp = temp_sibling(path), temp_sibling(checkpoint)
    try:
        if result.checkpoint is not None:
            torch.save(result.checkpoint, checkpoint_temp)
            os.replace(checkpoint_temp, checkpoint)
        summary = np.array(json.dumps(result.summary, allow_nan=True))  # 0-d unicode: no pickle needed
        contents: dict[str, Any] = {"summary_json": summary, **result.arrays}
        np.savez(temp, **contents)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
        checkpoint_temp.unlink(missing_ok=True)


def _load(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files if key != "summary_json"}
        summary = json.loads(str(data["summary_json"]))
    return arrays, summary


def finish(kind: str, paths: list[Path]) -> tuple[ScoreArrays, dict[str, Any]]:
    """Scores and the job summary from every unit's artifact (paths in unit order)."""
    loaded = [_load(path) for path in paths]
    if kind == "mrgan":
        reference = min(range(len(loaded)), key=lambda i: loaded[i][1]["tau"])
        arrays, _ = loaded[reference]
        summary: dict[str, Any] = {"kind": "mrgan", "scores_from_unit": reference,
                                   "units": [unit_summary for _, unit_summary in loaded]}  # fmt: skip
    else:
        arrays, unit_summary = loaded[0]
        summary = {"kind": "copy_test", **unit_summary}
    counts = CopyCounts(0.0, torch.from_numpy(arrays["copy_count"]), torch.from_numpy(arrays["closest"]))
    copy_count = counts.count.double().numpy()
    within = arrays.get("within_tau_count")
    within_count = None if within is None else within.astype(np.float64)
    ranked_by = copy_count if within_count is None else within_count
    score = ranked_by + 1.0 / (1.0 + counts.closest.double().numpy())  # closest = inf -> + 0
    count_name = "nearest_copy_count" if within_count is None else "within_tau_count"
    summary["score_rule"] = f"{count_name} + 1 / (1 + closest generated distance)"
    summary["n_samples"] = len(score)
    summary["n_copied"] = int((copy_count > 0).sum())  # nearest-credit count > 0
    summary["n_within_tau"] = None if within_count is None else int((within_count > 0).sum())
    nan = np.full(len(score), np.nan)
    zeros = np.zeros(len(score), dtype=np.int64)
    rho = arrays.get("rho")
    scores = ScoreArrays(score=score, log_p_in=nan, log_p_out=nan, n_in=zeros, n_out=zeros,
                         rho=None if rho is None else rho.astype(np.float64), nearest_copy_count=copy_count,
                         within_tau_count=within_count)  # fmt: skip
    return scores, summary


@dataclass(frozen=True)
class TauCounts:
    """SPEC §5's counts of one tau of a job (a row group of the tau_counts table)."""

    tau_index: int
    tau: float
    within_tau_count: np.ndarray  # (N,) generated samples within tau of each training sample
    nearest_copy_count: np.ndarray | None  # (N,) the unit's nearest-credit count (mrgan units)


def tau_count_rows(kind: str, paths: list[Path]) -> list[TauCounts]:
    """Every tau's counts: one per mrgan unit (unit index = tau index), one per copy_test radius.
    Empty for artifacts written before the within-tau count was kept."""
    loaded = [_load(path) for path in paths]
    if kind == "mrgan":
        return [TauCounts(index, float(summary["tau"]), arrays["within_tau_count"], arrays["copy_count"])
                for index, (arrays, summary) in enumerate(loaded) if "within_tau_count" in arrays]
    arrays, _ = loaded[0]
    if "within_tau_counts" not in arrays:
        return []
    return [TauCounts(index, float(tau), row, None)
            for index, (tau, row) in enumerate(zip(arrays["taus"].tolist(), arrays["within_tau_counts"],
                                                   strict=True))]  # fmt: skip
