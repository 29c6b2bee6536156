"""Benchmark: the HTML report of a 60k-sample job, and the finishing step's neighbour evidence at 60k.

Fashion-MNIST train (60000 x 784) as the job's dataset, Fashion-MNIST test (10000) as its held-out set,
scores and labels inserted directly (no training), on the embedded SQLite database. Measures:

1. the finishing step's work for the report: ``compute_evidence`` (exact chunked search, pixels, 784
   dims: the flagged samples against all 60000 training and 10000 held-out images) and keeping the
   display copy of the plain-array training set (``keep_pixel_file``);
2. ``build_report_data`` + ``render_report`` for that job, first call in a fresh process (cold: nothing
   cached) and then warm, with the number of bytes of HTML;
3. for the ratio, what the report did before per request as its first step: load the training and
   held-out sets whole as float (``load_dataset_spec(...).images``), before any neighbour search.

    .venv/bin/python -m bench.bench_report [--samples 60000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np


def _seed(samples: int, heldout_count: int) -> str:
    from app.db import Job, session_scope
    from app.lifecycle import JobState
    from app.services.data_identity import dataset_identity
    from app.services.job_samples import add_job_samples
    from app.services.score_writer import ScoreArrays, write_scores
    from app.settings import get_settings

    settings = get_settings()
    dataset, heldout = {"builtin": "fashion-mnist"}, {"builtin": "fashion-mnist:test"}
    job_id = str(uuid.uuid4())
    rng = np.random.default_rng(0)
    score = rng.gamma(2.0, 0.5, size=samples)
    with session_scope() as session:
        facts = {"train": {"identity": dataset_identity(dataset, session, settings, "local", "dataset"),
                           "count": samples, "image_shape": [1, 28, 28]},
                 "heldout": {"identity": dataset_identity(heldout, session, settings, "local", "heldout"),
                             "count": heldout_count, "image_shape": [1, 28, 28]}}  # fmt: skip
        session.add(Job(id=job_id, owner="local", kind="vae_audit", state=JobState.RUNNING,
                        spec={"kind": "vae_audit", "dataset": dataset, "heldout": heldout, "facts": facts},
                        request_hash=uuid.uuid4().hex, n_samples=samples, image_shape=[1, 28, 28],
                        units_total=1, units_done=1, progress={},
                        summary={"n_samples": samples,
                                 "quantiles": {"0.95": float(np.quantile(score, 0.95))}}))  # fmt: skip
        session.flush()
        labels = [str(i % 10) for i in range(samples)]
        add_job_samples(session, job_id, [f"fashion-{i:05d}" for i in range(samples)], labels)
    arrays = ScoreArrays(score=score, log_p_in=-300.0 + score, log_p_out=np.full(samples, -300.0),
                         n_in=np.full(samples, 2), n_out=np.full(samples, 1))  # fmt: skip
    with session_scope() as session:
        assert write_scores(session, job_id, arrays, units=1, provisional=False)
        session.get(Job, job_id).state = JobState.SUCCEEDED  # type: ignore[union-attr]
    return job_id


def _finish_step(job_id: str) -> tuple[float, float, int]:
    """What the finishing step adds: evidence (seconds), the display copy (seconds), flagged count."""
    from sqlalchemy import select

    from app.db import Job, SampleScore, session_scope
    from app.services.evidence import evidence_file
    from app.services.pixel_files import keep_pixel_file
    from app.settings import get_settings
    from models.builtin_datasets import load_builtin
    from models.evidence import compute_evidence
    from workers.evidence import write_evidence

    settings = get_settings()
    train, heldout = load_builtin("fashion-mnist"), load_builtin("fashion-mnist:test")
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        query = select(SampleScore.score).where(SampleScore.job_id == job_id).order_by(SampleScore.sample_id)
        score = np.array(list(session.scalars(query)), dtype=np.float64)
        identity = job.spec["facts"]["train"]["identity"]
        heldout_identity = job.spec["facts"]["heldout"]["identity"]
    started = time.perf_counter()
    evidence = compute_evidence(score, train.pixels, heldout=heldout.pixels)
    evidence_s = time.perf_counter() - started
    write_evidence(evidence_file(settings, job_id), evidence)
    started = time.perf_counter()
    keep_pixel_file(settings, identity, train)
    keep_pixel_file(settings, heldout_identity, heldout)
    return evidence_s, time.perf_counter() - started, len(evidence.sample_ids)


def _report(job_id: str) -> tuple[float, int]:
    from app.db import Job, session_scope
    from app.reports import render_report
    from app.reports.build import build_report_data
    from app.settings import get_settings

    started = time.perf_counter()
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        html = render_report(build_report_data(session, get_settings(), job))
    seconds = time.perf_counter() - started
    assert '<section id="evidence">' in html
    return seconds, len(html)


def _old_first_step(job_id: str) -> float:
    from app.db import Job, session_scope
    from app.services.datasets import load_dataset_spec
    from app.settings import get_settings

    started = time.perf_counter()
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        for field in ("dataset", "heldout"):
            assert load_dataset_spec(job.spec[field], session, get_settings(), "local", field).images.size
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from app.migrate import upgrade_to_head
    from tests.service.harness import environment

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'memaudit.db'}"
        upgrade_to_head(url)
        with environment({"MEMAUDIT_DATABASE_URL": url, "MEMAUDIT_DATA_DIR": folder}):
            job_id = _seed(args.samples, 10000)
            evidence_s, records_s, flagged = _finish_step(job_id)
            print(f"finishing step, {flagged} flagged samples x {args.samples} training + 10000 held-out "
                  f"images (pixels, 784 dims): evidence {evidence_s:.2f} s, display copies {records_s:.2f} s")
            cold, size = _report(job_id)
            warm = sorted(_report(job_id)[0] for _ in range(args.repeats))
            median = warm[len(warm) // 2]
            print(f"report of a {args.samples}-sample job: cold {cold:.3f} s, warm median {median:.3f} s "
                  f"(min {warm[0]:.3f}, max {warm[-1]:.3f}), {size / 1e6:.2f} MB")
            old = _old_first_step(job_id)
            print(f"before: loading both sets whole as float, the old report's first step alone: {old:.2f} s "
                  f"({old / median:.1f}x the whole warm report now)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
