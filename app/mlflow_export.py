"""`memaudit export-mlflow`: one MLflow run per audit job, fetched through the REST API.

The run gets the job spec as params (flattened, ``model.latent``), the summary as metrics (M quantiles,
counts, per class ``class.<label>.median|q95|count|n_above_threshold``; per-epoch quantiles and loss curves
as stepped metrics), tags naming the job and server (and the memaudit version and source revision), the
provenance block's inputs, software and seeds as ``provenance.*`` params, and three artifacts: the HTML
report, the scores as Parquet (with the samples' ``key`` and ``label`` columns) and provenance.json.
Needs the optional extra ``mlflow`` (mlflow-skinny); the tracking URI is anything MLflow accepts
(``file:/path/mlruns``, ``http://...``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from memaudit_client import MemauditClient

PARAM_VALUE_LIMIT = 500  # MLflow's historical limit; longer values (lists of widths) are cut


class MlflowUnavailable(RuntimeError):
    pass


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def job_params(job: Mapping[str, Any]) -> dict[str, str]:
    spec = {key: value for key, value in (job.get("spec") or {}).items() if value is not None}
    return {key: str(value)[:PARAM_VALUE_LIMIT] for key, value in _flatten(spec)}


def provenance_params(job: Mapping[str, Any]) -> dict[str, str]:
    """The provenance block's comparable facts as params (``provenance.inputs.dataset.content_sha256``,
    ``provenance.software.torch``, ``provenance.seeds.audit.seed``); the whole block is an artifact."""
    block = (job.get("summary") or {}).get("provenance") or {}
    params = {}
    for section in ("software", "inputs", "seeds"):
        for key, value in _flatten(block.get(section) or {}, f"provenance.{section}."):
            if value is not None:
                params[key] = str(value)[:PARAM_VALUE_LIMIT]
    return params


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value \
        and abs(value) != float("inf")


def job_metrics(job: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """(name, value, step) for the summary: final values at step 0, curves at their epoch."""
    summary = job.get("summary") or {}
    metrics = [(f"M_q{q}", float(v), 0) for q, v in (summary.get("quantiles") or {}).items() if _finite(v)]
    for name in ("mean", "n_samples", "n_models", "n_non_finite", "n_highly_memorized",
                 "highly_memorized_threshold"):
        if _finite(summary.get(name)):
            metrics.append((name if name != "mean" else "M_mean", float(summary[name]), 0))
    for row in summary.get("epochs") or []:
        metrics.extend((f"epoch_M_q{q}", float(v), int(row["epoch"]))
                       for q, v in row.items() if q != "epoch" and _finite(v))
    for name in ("train_loss", "heldout_loss"):
        metrics.extend((name, float(v), epoch) for epoch, v in enumerate(summary.get(name) or [], 1)
                       if _finite(v))
    for row in summary.get("per_class") or []:  # the per-class view (models.per_class)
        label = metric_name(str(row.get("label")))
        fields = ("count", "median", "q95", "n_above_threshold")
        metrics.extend((f"class.{label}.{field}", float(row[field]), 0)
                       for field in fields if _finite(row.get(field)))
    return metrics


def metric_name(text: str) -> str:
    """A label as the part of a metric name MLflow accepts (alphanumerics, _ - . space /)."""
    return "".join(char if char.isalnum() or char in "_-. /" else "_" for char in text)[:200] or "_"


def export_job(client: MemauditClient, job_id: str, *, tracking_uri: str | None = None,
               experiment: str = "memaudit", run_name: str | None = None) -> str:
    """Log the job to MLflow and return the run id."""
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError as error:
        raise MlflowUnavailable("MLflow is not installed: pip install 'memaudit[mlflow]'") from error
    if tracking_uri is not None and tracking_uri.startswith("file:"):
        # MLflow 3 refuses file stores unless opted in; naming a file: URI is that opt-in.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    job = client.get_job(job_id)
    tracking = MlflowClient(tracking_uri=tracking_uri)
    found = tracking.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else tracking.create_experiment(experiment)
    tags = {"memaudit.job_id": job["id"], "memaudit.server": client.base_url, "memaudit.state": job["state"],
            "memaudit.kind": str(job.get("kind"))}
    run = tracking.create_run(experiment_id, run_name=run_name or f"memaudit-{job['id'][:8]}", tags=tags)
    run_id: str = run.info.run_id
    try:
        now_ms = int(time.time() * 1000)
        tracking.log_batch(
            run_id,
            metrics=[Metric(name, value, now_ms, step) for name, value, step in job_metrics(job)],
            params=[Param(key, value) for key, value in job_params(job).items()],
            tags=[RunTag("memaudit.provisional", str((job.get("scores") or {}).get("provisional", False)))],
        )
        provenance = (job.get("summary") or {}).get("provenance")
        if provenance is not None:  # its own batch: MLflow takes at most 100 params per batch
            software = provenance.get("software") or {}
            tracking.log_batch(run_id, params=[Param(k, v) for k, v in provenance_params(job).items()],
                               tags=[RunTag("memaudit.version", str(software.get("memaudit"))),
                                     RunTag("memaudit.revision", str(software.get("revision")))])  # fmt: skip
            tracking.log_dict(run_id, provenance, "provenance.json")
        if (job.get("scores") or {}).get("available"):
            with tempfile.TemporaryDirectory(prefix="memaudit-mlflow-") as folder:
                report = client.download_report(job_id, Path(folder) / "report.html")
                scores = client.export_scores(job_id, Path(folder) / "scores.parquet", fmt="parquet")
                tracking.log_artifact(run_id, str(report))
                tracking.log_artifact(run_id, str(scores))
    except BaseException:
        tracking.set_terminated(run_id, status="FAILED")
        raise
    tracking.set_terminated(run_id, status="FINISHED")
    return run_id
