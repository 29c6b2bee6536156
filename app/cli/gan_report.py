"""What `memaudit copytest` and `memaudit mrgan` write: CSV tables, summary.json and the printed summary."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.copying import CellRow, CopyCounts
from models.gan import CopyTestReport, TauResult

CELL_COLUMNS = (
    "cell", "n_train", "n_test", "n_generated", "u", "z_u", "test_share", "generated_share", "kept",
)  # fmt: skip
SWEEP_COLUMNS = (
    "tau", "rejection_rate", "c_t", "frechet_distance", "within_tau_share", "training_samples_within_tau",
    "generated_copy_share", "copy_threshold", "median_generated_distance", "skipped_generator_steps",
    "train_seconds",
)  # fmt: skip


def write_csv(path: Path, columns: Mapping[str, Sequence[Any]]) -> Path:
    """Columns of equal length as CSV; floats as repr (the shortest text that reads back exactly)."""
    names = list(columns)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in zip(*(columns[name] for name in names), strict=True):
            writer.writerow(row)
    return path


def cell_columns(cells: list[CellRow]) -> dict[str, list[Any]]:
    return {name: [getattr(row, name) for row in cells] for name in CELL_COLUMNS}


def copied_ranking(counts: CopyCounts, within: torch.Tensor) -> torch.Tensor:
    """Training indices, most copied first: the SPEC §5 within-tau count descending, then the
    nearest-credit count descending, then the closest generated sample ascending."""
    nearest_first = counts.ranking().cpu()
    return nearest_first[torch.argsort(-within.cpu()[nearest_first], stable=True)]


def within_tau_columns(within: torch.Tensor) -> dict[str, torch.Tensor]:
    """``within_tau_count`` for one radius, ``within_tau_count_1..T`` for several (summary order)."""
    if within.shape[0] == 1:
        return {"within_tau_count": within[0]}
    return {f"within_tau_count_{t + 1}": row for t, row in enumerate(within)}


Names = tuple[list[str | None], list[str | None]]


def names_of(images: Any) -> Names:
    """(keys, labels as text) of the training samples of an ImageSet (None where there is none)."""
    return images.key_texts(), images.label_texts()


def copy_count_columns(
    counts: CopyCounts,
    sample_ids: np.ndarray,
    within: torch.Tensor,
    extra: dict[str, torch.Tensor] | None = None,
    names: Names | None = None,
) -> dict[str, list[Any]]:
    """One row per training sample in ``copied_ranking`` order; within (T, N) are the SPEC §5 counts,
    ``copy_count`` the nearest-credit count (docs/science.md); ``key`` and ``label`` from ``names``."""
    order = copied_ranking(counts, within[0])
    keys, labels = names or ([None] * len(sample_ids), [None] * len(sample_ids))
    columns: dict[str, list[Any]] = {
        "rank": list(range(1, len(order) + 1)),
        "sample_id": sample_ids[order.numpy()].tolist(),
        "key": [keys[i] for i in order.tolist()],
        "label": [labels[i] for i in order.tolist()],
        **{name: values.cpu()[order].tolist() for name, values in within_tau_columns(within).items()},
        "copy_count": counts.count.cpu()[order].tolist(),
        "closest_generated_distance": counts.closest.cpu()[order].tolist(),
    }
    for name, values in (extra or {}).items():
        columns[name] = values.cpu()[order].tolist()
    return columns


def generated_columns(
    distance: torch.Tensor, nearest: torch.Tensor, sample_ids: np.ndarray
) -> dict[str, list[Any]]:
    return {
        "generated_id": list(range(len(distance))),
        "nearest_train_sample_id": sample_ids[nearest.cpu().numpy()].tolist(),
        "distance": distance.cpu().tolist(),
    }


def write_copytest(out: Path, report: CopyTestReport, sample_ids: np.ndarray,
                   names: Names | None = None) -> list[Path]:  # fmt: skip
    rho = report.rho
    extra = {"d_heldout": rho.heldout_distance, "d_generated": rho.generated_distance, "rho": rho.rho}
    nearest = report.generated_nearest
    counts = copy_count_columns(report.counts, sample_ids, report.within_tau, extra, names)
    return [
        write_csv(out / "cells.csv", cell_columns(report.copying.cells)),
        write_csv(out / "copy_counts.csv", counts),
        write_csv(out / "generated.csv", generated_columns(nearest.distance, nearest.index, sample_ids)),
    ]


def write_tau_unit(
    folder: Path, result: TauResult, sample_ids: np.ndarray, names: Names | None = None
) -> None:
    """cells.csv, copy_counts.csv, generated.csv, samples.npz (uint8) and generator.pt of one tau."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = CopyCounts(result.copy_threshold, result.copy_count, result.closest)
    write_csv(folder / "cells.csv", cell_columns(result.cells))
    within = result.within_tau_count[None]  # (1, N): the count at this unit's tau
    write_csv(folder / "copy_counts.csv", copy_count_columns(counts, sample_ids, within, names=names))
    generated = generated_columns(result.generated_distance, result.generated_nearest, sample_ids)
    write_csv(folder / "generated.csv", generated)
    pixels = (result.generated.cpu().numpy() * 255.0).round().astype(np.uint8)  # (m, C, H, W)
    np.savez_compressed(folder / "samples.npz", images=pixels.transpose(0, 2, 3, 1))  # (m, H, W, C)
    torch.save(result.run.checkpoint(), folder / "generator.pt")


def sweep_columns(results: list[TauResult]) -> dict[str, list[Any]]:
    summaries = [result.summary() for result in results]
    return {name: [summary[name] for summary in summaries] for name in SWEEP_COLUMNS}


def format_top_copied(
    counts: CopyCounts, sample_ids: np.ndarray, top: int, within: torch.Tensor
) -> str:
    order = copied_ranking(counts, within)[:top]
    lines = [f"Top {len(order)} copied training samples (first tau / copy threshold {counts.threshold:.4g}):"]
    lines.append(f"{'rank':>4} {'sample_id':>10} {'<=tau':>7} {'nearest':>7} {'closest':>10}")
    for rank, index in enumerate(order.tolist(), start=1):
        near, copies, closest = int(within[index]), int(counts.count[index]), float(counts.closest[index])
        lines.append(f"{rank:>4} {int(sample_ids[index]):>10d} {near:>7d} {copies:>7d} {closest:>10.4g}")
    return "\n".join(lines)


def format_sweep(results: list[TauResult]) -> str:
    lines = [f"{'tau':>8} {'reject':>7} {'C_T':>8} {'FD':>9} {'<=tau':>7} {'copies':>7}"]
    for result in results:
        s = result.summary()
        lines.append(
            f"{s['tau']:>8.4g} {s['rejection_rate']:>7.3f} {s['c_t']:>8.3f} {s['frechet_distance']:>9.4g} "
            f"{s['within_tau_share']:>7.3f} {s['generated_copy_share']:>7.3f}"
        )
    return "\n".join(lines)
