"""What `memaudit audit` writes: the per-sample score table, summary.json and the printed top list."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.audit import AuditResult
from models.data import ImageSet
from models.nn_compare import NearestNeighbourComparison, RankCorrelation

TableFormat = Literal["csv", "parquet"]
VERSION_FIELDS = ("python", "torch", "numpy", "memaudit")
NN_COLUMNS = ("d_heldout", "d_model", "rho")
INTERVAL_COLUMNS = ("score_se", "score_lo", "score_hi")  # SPEC §7, NaN (empty/null) when L = 1


def score_columns(
    result: AuditResult, nn: NearestNeighbourComparison | None, train: ImageSet | None = None
) -> dict[str, np.ndarray]:
    """One row per training sample, in sample-id order, with its ``key`` and ``label`` (empty if none)."""
    scores = result.scores
    count = len(scores.M)
    columns: dict[str, np.ndarray] = {
        "sample_id": np.arange(count, dtype=np.int64),
        "key": np.array(train.key_texts() if train is not None else [None] * count, dtype=object),
        "label": np.array(train.label_texts() if train is not None else [None] * count, dtype=object),
        "score": scores.M,
        "log_p_in": scores.U,
        "log_p_out": scores.V,
        "score_se": result.score_se,
        "score_lo": result.score_lo,
        "score_hi": result.score_hi,
    }
    if nn is not None:
        columns.update(d_heldout=nn.d_heldout, d_model=nn.d_model, rho=nn.rho)
    return columns


def write_scores(out_dir: Path, columns: dict[str, np.ndarray], table_format: TableFormat) -> Path:
    if table_format == "parquet":
        import pyarrow as pa  # only needed for this format
        import pyarrow.parquet as pq

        path = out_dir / "scores.parquet"
        arrays = {name: pa.array(values.tolist(), type=pa.string()) if values.dtype == object else values
                  for name, values in columns.items()}  # fmt: skip
        pq.write_table(pa.table(arrays), path)
        return path
    path = out_dir / "scores.csv"
    names = list(columns)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in zip(*(columns[name].tolist() for name in names), strict=True):
            writer.writerow(row)  # floats as repr: the shortest text that reads back exactly
    return path


def build_summary(
    *,
    result: AuditResult,
    train: ImageSet,
    heldout: ImageSet | None,
    nn: NearestNeighbourComparison | None,
    correlation: RankCorrelation | None,
    timings: dict[str, float],
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "config": result.config,
        "dataset": train.describe(),
        "heldout": None if heldout is None else heldout.describe(),
        "quantiles": result.quantiles,
        "highly_memorized_threshold": result.quantiles.get("0.95"),
        **_per_class(result, train),
        "model_parameters": result.model_parameters,
        **_uncertainty_summary(result),
        "timings": {**result.timings, **timings},
        "device": result.device,
        "environment": result.environment,
        "versions": versions(),
        "loss_curves": _loss_curves(result),
    }
    if len(result.eval_epochs):
        summary["epoch_quantiles"] = {
            "epochs": result.eval_epochs.tolist(),
            **{key: result.epoch_quantiles[:, i].tolist() for i, key in enumerate(result.quantiles)},
        }
    if nn is not None and correlation is not None:
        summary["nearest_neighbours"] = {
            "metric": "euclidean",
            "downscale": nn.downscale,
            "reference_size": nn.reference_size,
            "spearman_rho_vs_score": correlation.statistic,
            "spearman_pvalue": correlation.pvalue,
            "spearman_count": correlation.count,
            "rho_above_1": int(np.sum(nn.rho > 1.0)),
        }
    return summary


def _per_class(result: AuditResult, train: ImageSet) -> dict[str, Any]:
    """models.per_class over the training labels (none without labels)."""
    from models.per_class import high_threshold, per_class

    if train.labels is None:
        return {}
    score = result.scores.M
    return {"per_class": per_class(score, train.label_texts(), high_threshold(score))}


def _uncertainty_summary(result: AuditResult) -> dict[str, Any]:
    """SPEC §7: bootstrap settings, confidently memorized samples, ranking stability, repetitions used
    (models.uncertainty.Uncertainty.summary; the service's job summary has the same keys)."""
    return result.uncertainty.summary(int(result.folds_of.shape[0]))


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    path = out_dir / "summary.json"
    path.write_text(json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")
    return path


def format_top(columns: dict[str, np.ndarray], top: int) -> str:
    """The ``top`` highest-scoring samples as an aligned text table (NaN scores last)."""
    score = columns["score"]
    order = np.argsort(np.where(np.isnan(score), -np.inf, score), kind="stable")[::-1][:top]
    names = ["sample_id", "score", "score_lo", "score_hi", "log_p_in", "log_p_out"]
    names += [c for c in NN_COLUMNS if c in columns]
    keyed = "key" in columns and any(key is not None for key in columns["key"].tolist())
    header = "rank " + " ".join(f"{name:>12}" for name in names) + ("  key" if keyed else "")
    lines = [f"Top {len(order)} most memorized samples (score M = log_p_in - log_p_out, nats):", header]
    for rank, index in enumerate(order, start=1):
        cells = [f"{int(columns['sample_id'][index]):>12d}"]
        cells += [f"{float(columns[name][index]):>12.4f}" for name in names[1:]]
        suffix = f"  {columns['key'][index]}" if keyed else ""
        lines.append(f"{rank:>4} " + " ".join(cells) + suffix)
    return "\n".join(lines)


def versions() -> dict[str, str]:
    """The summary's short ``versions`` (the provenance block's ``software`` has them and more)."""
    from app.provenance import software

    return {name: str(value) for name, value in software().items() if name in VERSION_FIELDS}


def _loss_curves(result: AuditResult) -> dict[str, Any]:
    # Mean over models first (the curve to plot), then every model's own curve.
    return {
        "train_mean": result.train_loss.mean(axis=0).tolist(),
        "heldout_fold_mean": result.heldout_loss.mean(axis=0).tolist(),
        "model_ids": result.model_ids.tolist(),
        "train": result.train_loss.tolist(),
        "heldout_fold": result.heldout_loss.tolist(),
    }


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null: summary.json stays strict JSON."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
