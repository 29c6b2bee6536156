"""End to end over real HTTP: `memaudit submit/status/wait/scores/export/report/export-mlflow` against a
live embedded server (uvicorn + SQLite + a real Celery worker process)."""

from __future__ import annotations

import csv
import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from memaudit_client import MemauditClient, MemauditError, WaitTimeout

from app.cli import main
from app.lifecycle import JobState
from app.webhooks import verify
from tests.deploy.chromium import chromium_or_skip, console_messages, probe_copy, probe_result, run_chromium
from tests.deploy.conftest import WEBHOOK_SECRET, LiveServer
from tests.deploy.receiver import Receiver, running_receiver
from tests.service.jobdata import digits_subset

N_TRAIN, N_HELDOUT = 60, 30
TRAIN_KEYS = [f"digit-{i:03d}" for i in range(N_TRAIN)]
TRAIN_LABELS = [("even", "odd", "prime")[i % 3] for i in range(N_TRAIN)]


def _cli(server: LiveServer, capsys: pytest.CaptureFixture[str], *args: str,
         api_key: str | None = None) -> tuple[int, str, str]:
    code = main([*args, "--server", server.url, "--api-key", api_key or server.api_key])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with running_receiver() as state:
        yield state


@pytest.fixture(scope="module")
def finished_job(live_server: LiveServer, receiver: Receiver,
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One small audit with a held-out set, submitted through the CLI (a file upload + a spec file)."""
    folder = tmp_path_factory.mktemp("submit")
    np.savez_compressed(folder / "train.npz", images=digits_subset(N_TRAIN), keys=np.array(TRAIN_KEYS),
                        labels=np.array(TRAIN_LABELS))  # fmt: skip
    np.savez_compressed(folder / "heldout.npz", images=digits_subset(N_HELDOUT, offset=500))
    spec = {"model": {"arch": "mlp", "hidden": [32], "latent": 4},
            "training": {"epochs": 2, "batch_size": 32},
            "audit": {"folds": 3, "repeats": 1, "is_samples": 8, "seed": 3, "models_per_unit": 3,
                      "n_generated": N_HELDOUT},
            "webhook_url": receiver.url}
    (folder / "spec.json").write_text(json.dumps(spec))
    code = main(["submit", str(folder / "train.npz"), "--heldout", str(folder / "heldout.npz"),
                 "--spec", str(folder / "spec.json"), "--eval-every", "1", "--wait", "--timeout", "240",
                 "--server", live_server.url, "--api-key", live_server.api_key])
    assert code == 0
    with MemauditClient(live_server.url, live_server.api_key) as client:
        jobs = client.list_jobs(limit=1)
        assert jobs and jobs[0]["state"] == JobState.SUCCEEDED, jobs
        return client.get_job(jobs[0]["id"])


def test_submit_applied_flags_over_the_spec_file(finished_job: dict[str, Any]) -> None:
    spec = finished_job["spec"]
    assert spec["audit"]["eval_every"] == 1 and spec["audit"]["folds"] == 3
    assert "id" in spec["dataset"] and "id" in spec["heldout"]
    assert finished_job["n_samples"] == N_TRAIN


def test_webhooks_announce_each_state_signed(finished_job: dict[str, Any], receiver: Receiver) -> None:
    receiver.wait_for(2)
    events = [json.loads(body) for _, _, body in receiver.requests]
    assert [(e["job"]["previous_state"], e["job"]["state"]) for e in events] == [
        (JobState.QUEUED, JobState.RUNNING), (JobState.RUNNING, JobState.SUCCEEDED)]
    assert all(e["job"]["id"] == finished_job["id"] for e in events)
    assert events[-1]["job"]["summary"]["quantiles"] == finished_job["summary"]["quantiles"]
    for _, headers, body in receiver.requests:
        assert verify(WEBHOOK_SECRET, body, headers["X-Memaudit-Signature"])


def test_status_and_scores(live_server: LiveServer, finished_job: dict[str, Any],
                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(live_server, capsys, "status", finished_job["id"], "--once")
    assert code == 0 and JobState.SUCCEEDED in out and "scores final" in out
    code, out, _ = _cli(live_server, capsys, "scores", finished_job["id"], "--top", "5")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split("\t")[:3] == ["rank", "sample_id", "score"]
    assert lines[0].split("\t")[-2:] == ["key", "label"]
    first = lines[1].split("\t")
    assert first[-2] == TRAIN_KEYS[int(first[1])] and first[-1] == TRAIN_LABELS[int(first[1])]
    ranks = [int(line.split("\t")[0]) for line in lines[1:]]
    assert ranks == [1, 2, 3, 4, 5]
    scores = [float(line.split("\t")[2]) for line in lines[1:]]
    assert scores == sorted(scores, reverse=True)


def test_exports_match_paged_scores(live_server: LiveServer, finished_job: dict[str, Any], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with MemauditClient(live_server.url, live_server.api_key) as client:
        rows = client.iter_scores(finished_job["id"], page_size=7)
        paged = {row["sample_id"]: row["score"] for row in rows}
    assert len(paged) == N_TRAIN
    code, _, _ = _cli(live_server, capsys, "export", finished_job["id"], "--format", "csv",
                      "--out", str(tmp_path / "s.csv"))
    assert code == 0
    with (tmp_path / "s.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {int(r["sample_id"]): float(r["score"]) for r in rows} == paged
    code, _, _ = _cli(live_server, capsys, "export", finished_job["id"], "--format", "parquet",
                      "--out", str(tmp_path / "s.parquet"))
    table = pq.read_table(tmp_path / "s.parquet")
    assert code == 0 and dict(zip(table.column("sample_id").to_pylist(), table.column("score").to_pylist(),
                                  strict=True)) == paged


def test_report_of_a_real_job_renders_in_chromium(live_server: LiveServer, finished_job: dict[str, Any],
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    code, _, _ = _cli(live_server, capsys, "report", finished_job["id"], "--out", str(out))
    html = out.read_text()
    assert code == 0
    assert "Histogram of M" in html and "Quantiles of M over training" in html and "Loss curves" in html
    assert "nearest held-out" in html and "nearest generated" in html and "Spearman" in html
    binary = chromium_or_skip()
    probed = run_chromium(binary, probe_copy(html, tmp_path / "probe.html"), tmp_path / "profile",
                          "--dump-dom", "--virtual-time-budget=5000")
    assert not console_messages(probed.stderr), console_messages(probed.stderr)
    result = probe_result(probed.stdout)
    assert result["images"] == result["loaded"] == html.count("<img ") >= 3 * 24


def test_export_mlflow_logs_params_metrics_and_artifacts(
    live_server: LiveServer, finished_job: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    code, out, err = _cli(live_server, capsys, "export-mlflow", finished_job["id"], "--tracking-uri", uri)
    assert code == 0, err
    run = MlflowClient(tracking_uri=uri).get_run(out.strip())
    assert run.info.status == "FINISHED"
    assert run.data.tags["memaudit.job_id"] == finished_job["id"]
    assert run.data.params["audit.folds"] == "3" and run.data.params["model.latent"] == "4"
    quantiles = finished_job["summary"]["quantiles"]
    assert run.data.metrics["M_q0.95"] == pytest.approx(quantiles["0.95"])
    history = MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "epoch_M_q0.95")
    assert sorted(m.step for m in history) == [1, 2]
    artifacts = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run.info.run_id)}
    assert artifacts == {"report.html", "scores.parquet", "provenance.json"}
    provenance = finished_job["summary"]["provenance"]
    dataset = provenance["inputs"]["dataset"]
    assert run.data.params["provenance.inputs.dataset.file_sha256"] == dataset["file_sha256"]
    assert run.data.params["provenance.inputs.heldout.content_sha256"] == provenance["inputs"]["heldout"][
        "content_sha256"]
    assert run.data.params["provenance.software.torch"] == provenance["software"]["torch"]
    assert run.data.params["provenance.seeds.audit.seed"] == "3"
    assert run.data.tags["memaudit.revision"] == str(provenance["software"]["revision"])
    logged = json.loads(Path(MlflowClient(tracking_uri=uri).download_artifacts(
        run.info.run_id, "provenance.json", str(tmp_path))).read_text())
    assert logged == provenance
    per_class = {row["label"]: row for row in finished_job["summary"]["per_class"]}
    assert set(per_class) == set(TRAIN_LABELS)
    assert run.data.metrics["class.odd.count"] == per_class["odd"]["count"] == N_TRAIN // 3
    assert run.data.metrics["class.prime.median"] == pytest.approx(per_class["prime"]["median"])
    tracking = MlflowClient(tracking_uri=uri)
    table = pq.read_table(tracking.download_artifacts(run.info.run_id, "scores.parquet", str(tmp_path)))
    assert table.column("key").to_pylist() == TRAIN_KEYS
    assert table.column("label").to_pylist() == TRAIN_LABELS


def test_server_errors_are_one_line_and_exit_1(live_server: LiveServer, capsys: pytest.CaptureFixture[str],
                                               finished_job: dict[str, Any]) -> None:
    code, _, err = _cli(live_server, capsys, "status", "no-such-job")
    assert code == 1 and err.count("\n") == 1 and "404" in err and "job_id" in err
    code, _, err = _cli(live_server, capsys, "status", finished_job["id"], api_key="deploy-other-key")
    assert code == 1 and "404" in err  # another owner's job is invisible
    code, _, err = _cli(live_server, capsys, "scores", api_key="wrong-key")
    assert code == 1 and err.count("\n") == 1 and "401" in err
    code, _, err = _cli(live_server, capsys, "submit", "builtin:digits", "--folds", "1")
    assert code == 1 and err.count("\n") == 1 and "422" in err and "audit.folds" in err
    code = main(["status", "x", "--server", "http://127.0.0.1:9"])
    assert code == 1 and "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_wait_times_out_then_cancel(live_server: LiveServer, finished_job: dict[str, Any], receiver: Receiver,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with MemauditClient(live_server.url, live_server.api_key) as client:
        job = client.create_job({"dataset": {"builtin": "digits"}, "training": {"epochs": 500},
                                 "audit": {"folds": 2, "repeats": 1, "is_samples": 4},
                                 "webhook_url": receiver.url})
        with pytest.raises(WaitTimeout):
            client.wait(job["id"], timeout=0.5, poll_interval=0.1)
        code, out, _ = _cli(live_server, capsys, "cancel", job["id"])
        assert code == 0 and (JobState.CANCELLED in out or JobState.CANCELLING in out)
        final = client.wait(job["id"], timeout=120, poll_interval=0.2)
        assert final["state"] == JobState.CANCELLED
        with pytest.raises(MemauditError) as error:
            client.cancel_job(job["id"])
        assert error.value.status_code == 409

    def states() -> list[str]:
        events = [json.loads(body)["job"] for _, _, body in receiver.requests]
        return [e["state"] for e in events if e["id"] == job["id"]]

    deadline = time.monotonic() + 10  # the delivery trails the commit that the poll saw
    while JobState.CANCELLED not in states() and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = states()
    assert seen[-1] == JobState.CANCELLED, seen
    assert set(seen) <= {JobState.RUNNING, JobState.CANCELLING, JobState.CANCELLED}, seen


def test_status_draws_a_progress_bar_on_a_terminal(
    live_server: LiveServer, finished_job: dict[str, Any]
) -> None:
    command = [sys.executable, "-m", "app", "status", finished_job["id"], "--server", live_server.url,
               "--api-key", live_server.api_key]
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, close_fds=True)
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=60) == 0
    finally:
        os.close(leader)
    text = output.decode(errors="replace")
    assert "100%|" in text and "█" in text, text  # tqdm's bar, drawn only because stderr is a TTY
    assert f"{finished_job['id']}  succeeded" in text


def test_diff_compares_a_served_job_with_a_saved_one(
    live_server: LiveServer, finished_job: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "job.json"
    changed = json.loads(json.dumps(finished_job))
    changed["summary"]["provenance"]["config"]["training"]["epochs"] = 3
    saved.write_text(json.dumps(changed))
    code, out, _ = _cli(live_server, capsys, "diff", f"job:{finished_job['id']}", str(saved))
    assert code == 1 and out.strip().splitlines() == ["config.training.epochs: 2 -> 3"]
    code, _, err = _cli(live_server, capsys, "diff", "job:no-such-job", str(saved))
    assert code == 2 and "job:no-such-job" in err and "404" in err
