"""Commands against a running memaudit server: submit, status, wait, cancel, scores, export, report,
export-mlflow. Built on memaudit_client; server errors become one line on stderr and exit code 1.

The server is ``--server`` or $MEMAUDIT_URL (default http://127.0.0.1:8000); the key ``--api-key``
or $MEMAUDIT_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from memaudit_client import JobState, MemauditClient, MemauditError, WaitTimeout

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130
Handler = Callable[[MemauditClient, argparse.Namespace], int]

# CLI flag -> (spec section, field); the field names are the API's (= models.config's).
KNOBS: dict[str, tuple[str, str, type]] = {
    "arch": ("model", "arch", str),
    "latent": ("model", "latent", int),
    "likelihood": ("model", "likelihood", str),
    "base_filters": ("model", "base_filters", int),
    "epochs": ("training", "epochs", int),
    "lr": ("training", "lr", float),
    "batch_size": ("training", "batch_size", int),
    "weight_decay": ("training", "weight_decay", float),
    "folds": ("audit", "folds", int),
    "repeats": ("audit", "repeats", int),
    "is_samples": ("audit", "is_samples", int),
    "eval_every": ("audit", "eval_every", int),
    "seed": ("audit", "seed", int),
    "eval_noise": ("audit", "eval_noise", str),
    "models_per_unit": ("audit", "models_per_unit", int),
    "n_generated": ("audit", "n_generated", int),
}


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the remote sub-commands."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("server")
    group.add_argument("--server", default=None, help="base URL (default $MEMAUDIT_URL or http://127.0.0.1:8000)")
    group.add_argument("--api-key", default=None, help="API key (default $MEMAUDIT_API_KEY)")
    _add_submit(subparsers, common)
    status = _command(subparsers, common, "status", _status,
                      "state and progress of a job (a live bar on a terminal)")
    status.add_argument("job_id", metavar="JOB")
    status.add_argument("--once", action="store_true", help="print one line even on a terminal")
    status.add_argument("--json", action="store_true", help="print the job resource as JSON")
    wait = _command(subparsers, common, "wait", _wait,
                    "block until a job finishes; exit 0 only if it succeeded")
    wait.add_argument("job_id", metavar="JOB")
    wait.add_argument("--timeout", type=float, default=24 * 3600.0, help="seconds (default 24 h)")
    cancel = _command(subparsers, common, "cancel", _cancel, "ask a queued or running job to stop")
    cancel.add_argument("job_id", metavar="JOB")
    scores = _command(subparsers, common, "scores", _scores, "the most-memorized samples of a job")
    scores.add_argument("job_id", metavar="JOB", nargs="?", help="default: your latest finished job")
    scores.add_argument("--top", type=int, default=20, help="how many (default 20)")
    scores.add_argument("--json", action="store_true")
    export = _command(subparsers, common, "export", _export,
                      "download every score of a job as CSV or Parquet")
    export.add_argument("job_id", metavar="JOB")
    export.add_argument("--format", choices=("csv", "parquet"), default="csv", dest="fmt")
    export.add_argument("--out", type=Path, required=True)
    report = _command(subparsers, common, "report", _report, "download a job's self-contained HTML report")
    report.add_argument("job_id", metavar="JOB")
    report.add_argument("--out", type=Path, default=Path("report.html"))
    mlflow = _command(subparsers, common, "export-mlflow", _export_mlflow,
                      "log a job's params, metrics, report and scores to MLflow (extra: mlflow)")
    mlflow.add_argument("job_id", metavar="JOB")
    mlflow.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI")
    mlflow.add_argument("--experiment", default="memaudit", help="experiment name (default memaudit)")
    mlflow.add_argument("--run-name", default=None)


def _command(
    subparsers: argparse._SubParsersAction[Any], common: argparse.ArgumentParser, name: str,
    handler: Handler, summary: str,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(name, parents=[common], help=summary,
                                                            description=summary)
    parser.set_defaults(func=lambda args: _run(handler, args))
    return parser


def _add_submit(subparsers: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    submit = _command(subparsers, common, "submit", _submit, "start an audit on the server")
    submit.add_argument("dataset", metavar="DATASET", nargs="?",
                        help="a local .npz/.npy (uploaded), builtin:NAME, server:PATH (under the data root) "
                             "or id:DATASET_ID; may come from --spec instead")
    submit.add_argument("--heldout", help="held-out set, same forms as DATASET")
    submit.add_argument("--spec", type=Path, help="JSON file with the POST /jobs body; flags override it")
    submit.add_argument("--idempotency-key", help="same key + same body returns the same job")
    submit.add_argument("--webhook-url", help="POSTed (signed) on every state change of the job")
    submit.add_argument("--hidden", help="MLP widths, comma-separated")
    for flag, (_section, _field, kind) in KNOBS.items():
        submit.add_argument("--" + flag.replace("_", "-"), dest=flag, type=kind, default=None)
    submit.add_argument("--wait", action="store_true", help="then wait for the job like `memaudit wait`")
    submit.add_argument("--timeout", type=float, default=24 * 3600.0, help="with --wait: seconds")


def _run(handler: Handler, args: argparse.Namespace) -> int:
    try:
        with MemauditClient(args.server, args.api_key) as client:
            return handler(client, args)
    except MemauditError as error:
        return _fail(f"server said {error}")
    except httpx.TransportError as error:
        server = args.server or os.environ.get("MEMAUDIT_URL") or "http://127.0.0.1:8000"
        return _fail(f"cannot reach {server}: {error}")
    except WaitTimeout as error:
        return _fail(str(error))
    except (OSError, ValueError) as error:
        return _fail(str(error))
    except KeyboardInterrupt:  # the job keeps running on the server; only this command stops
        print("memaudit: interrupted (the job continues on the server)", file=sys.stderr)
        return EXIT_INTERRUPTED


def _fail(message: str) -> int:
    print(f"memaudit: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_ERROR


# ---- submit ----

def _dataset_ref(client: MemauditClient, text: str) -> dict[str, str]:
    prefix, sep, rest = text.partition(":")
    field = {"builtin": "builtin", "server": "path", "id": "id"}.get(prefix) if sep else None
    if field is not None:
        return {field: rest}
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"dataset: {text} is not a local file; use builtin:NAME, server:PATH or id:ID")
    return {"id": str(client.upload_dataset(path)["id"])}


def build_spec(client: MemauditClient, args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(args.spec.read_text()) if args.spec else {}
    if not isinstance(spec, dict):
        raise ValueError(f"spec: {args.spec} must hold a JSON object")
    if args.dataset:
        spec["dataset"] = _dataset_ref(client, args.dataset)
    if args.heldout:
        spec["heldout"] = _dataset_ref(client, args.heldout)
    if "dataset" not in spec:
        raise ValueError("dataset: give DATASET or a --spec with a dataset")
    if args.webhook_url:
        spec["webhook_url"] = args.webhook_url
    if args.hidden:
        spec.setdefault("model", {})["hidden"] = [int(width) for width in args.hidden.split(",")]
    for flag, (section, field, _kind) in KNOBS.items():
        value = getattr(args, flag)
        if value is not None:
            spec.setdefault(section, {})[field] = value
    return spec


def _submit(client: MemauditClient, args: argparse.Namespace) -> int:
    job = client.create_job(build_spec(client, args), idempotency_key=args.idempotency_key)
    print(job["id"])
    if args.wait:
        return _wait_for(client, job["id"], args.timeout)
    return EXIT_OK


# ---- status / wait / cancel ----

def describe(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    parts = [f"{job['id']}  {job['state']}"]
    if progress.get("units_total"):
        parts.append(f"units {progress.get('units_done', 0)}/{progress['units_total']}")
    if progress.get("units_skipped"):
        parts.append(f"{progress['units_skipped']} skipped (stable ranking)")
    if progress.get("epoch") is not None and progress.get("epochs"):
        parts.append(f"epoch {progress['epoch']}/{progress['epochs']}")
    fraction = _fraction(job)
    if fraction is not None:
        parts.append(f"{100 * fraction:.0f}%")
    if job.get("error"):
        parts.append(f"error: {job['error']}")
    scores = job.get("scores") or {}
    if scores.get("available"):
        parts.append("scores provisional" if scores.get("provisional") else "scores final")
    return "  ".join(parts)


def _fraction(job: dict[str, Any]) -> float | None:
    progress = job.get("progress") or {}
    if progress.get("fraction") is not None:
        return float(progress["fraction"])
    if progress.get("units_total"):
        return float(progress.get("units_done", 0)) / float(progress["units_total"])
    return None


def _status(client: MemauditClient, args: argparse.Namespace) -> int:
    job = client.get_job(args.job_id)
    if args.json:
        print(json.dumps(job, indent=2))
    elif args.once or not sys.stderr.isatty():
        print(describe(job))
    else:
        try:
            job = _watch(client, args.job_id, timeout=7 * 24 * 3600.0)
        except KeyboardInterrupt:
            return EXIT_OK
        print(describe(job))
    return EXIT_OK


def _watch(client: MemauditClient, job_id: str, timeout: float) -> dict[str, Any]:
    """Poll until final, drawing a percentage bar on stderr when it is a terminal."""
    from tqdm import tqdm

    # A terminal that reports no size (a fresh pty) would make tqdm hide the bar: fall back to 80x24.
    size = shutil.get_terminal_size()
    with tqdm(total=100, disable=not sys.stderr.isatty(), unit="%", ncols=size.columns, nrows=size.lines,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]") as bar:

        def show(job: dict[str, Any]) -> None:
            bar.set_description_str(f"{job_id[:8]} {job['state']}")
            fraction = _fraction(job)
            if fraction is not None:
                bar.update(max(0.0, 100 * fraction - bar.n))

        return client.wait(job_id, timeout=timeout, poll_interval=1.0, max_interval=10.0, on_update=show)


def _wait_for(client: MemauditClient, job_id: str, timeout: float) -> int:
    job = _watch(client, job_id, timeout)
    if job["state"] == JobState.SUCCEEDED:
        print(describe(job))
        return EXIT_OK
    return _fail(f"job {describe(job)}")


def _wait(client: MemauditClient, args: argparse.Namespace) -> int:
    return _wait_for(client, args.job_id, args.timeout)


def _cancel(client: MemauditClient, args: argparse.Namespace) -> int:
    print(describe(client.cancel_job(args.job_id)))
    return EXIT_OK


# ---- results ----

def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _scores(client: MemauditClient, args: argparse.Namespace) -> int:
    rows = client.top_scores(args.top, job_id=args.job_id)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    columns = score_columns(rows)
    print("\t".join(columns))
    for row in rows:
        print("\t".join(_flag(row.get(column)) if column == "confident" else _number(row.get(column))
                        for column in columns))  # fmt: skip
    return EXIT_OK


def score_columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """The printed columns: M with its 90% interval and the confident mark (SPEC §7) for audits; the
    SPEC §5 within-tau count first, then the nearest-credit count, for GAN jobs."""
    if any(row.get("within_tau_count") is not None or row.get("nearest_copy_count") is not None
           for row in rows):  # fmt: skip
        return ("rank", "sample_id", "within_tau_count", "nearest_copy_count", "rho", "key", "label")
    return ("rank", "sample_id", "score", "score_lo", "score_hi", "confident", "log_p_in", "log_p_out",
            "key", "label")


def _flag(value: Any) -> str:
    return "*" if value else "-"


def _export(client: MemauditClient, args: argparse.Namespace) -> int:
    path = client.export_scores(args.job_id, args.out, fmt=args.fmt)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return EXIT_OK


def _report(client: MemauditClient, args: argparse.Namespace) -> int:
    path = client.download_report(args.job_id, args.out)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return EXIT_OK


def _export_mlflow(client: MemauditClient, args: argparse.Namespace) -> int:
    from app.mlflow_export import MlflowUnavailable, export_job

    try:
        run_id = export_job(client, args.job_id, tracking_uri=args.tracking_uri, experiment=args.experiment,
                            run_name=args.run_name)
    except MlflowUnavailable as error:
        return _fail(str(error))
    print(run_id)
    return EXIT_OK
