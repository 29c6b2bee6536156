"""What the Celery tasks do, as plain functions of ids (tests and the CLI can call them directly).

plan_job: the worker sizes the units for its device and records them (once; for MR-GAN it also computes
the job's shared feature space). run_unit: claims one unit, trains it, saves its artifact atomically,
marks it done, publishes provisional scores. finish_job: claims the finishing step, combines every unit
into the final scores and summary, and moves the job to succeeded in the same transaction. Every step
re-reads the DB first, every write is guarded by the run's claim (workers.claims), and every task it
enqueues is sent only after its transaction commits, which makes redelivered or duplicated tasks
harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from app.db import Job, Unit, session_scope, utcnow
from app.faults import fault_point
from app.lifecycle import JOB_TERMINAL, UNIT_COMPLETE, JobState, UnitState, guarded_update
from app.services.data_identity import ImageSetCache, load_recorded
from app.services.errors import ServiceError
from app.services.job_samples import add_job_samples, job_labels
from app.services.sample_images import prepare_sample_images
from app.services.score_writer import write_scores
from app.services.specs import JobConfigs, build_configs
from app.services.tau_counts import write_tau_counts
from app.services.transitions import cancel_job, fail_job, job_state
from app.settings import get_settings
from app.tasks import FINISH_JOB, RUN_UNIT, enqueue_on_commit
from models.audit import Cancelled, plan_units, resolve_device, train_unit
from models.imageset import ImageSet
from models.units import repetition_aligned
from workers import adaptive_stop, claims, gan_runner
from workers import evidence as job_evidence
from workers.claims import UnitClaim
from workers.heartbeat import heartbeat
from workers.provenance import job_provenance, record_inputs
from workers.results import (
    artifact_path,
    combine_units,
    final_result,
    score_arrays,
    summarize,
    write_artifact,
    write_generated,
)

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0
# Image sets by content identity (app.services.data_identity), shared by the units of a job and by
# jobs on the same content; a file replaced under the data root is a new key.
_DATA_CACHE = ImageSetCache(capacity=4)
FACTS_OF = {"dataset": "train", "heldout": "heldout", "generated": "generated"}


def worker_device() -> torch.device:
    return resolve_device(get_settings().worker_device)


def _images(session: Session, job: Job, key: str) -> ImageSet:
    """The job's training / held-out / generated images: the content the job was validated for."""
    recorded = job.spec.get("facts", {}).get(FACTS_OF[key], {})
    return load_recorded(job.spec[key], recorded, session, get_settings(), job.owner, key, _DATA_CACHE)


def _job_dir(job_id: str) -> Path:
    return artifact_path(get_settings().resolved_artifacts_dir, job_id, 0).parent


def _units(session: Session, job_id: str) -> list[Unit]:
    return list(session.scalars(select(Unit).where(Unit.job_id == job_id).order_by(Unit.index)))


def plan_job(job_id: str) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.state in JOB_TERMINAL:
            return
        if job.state == JobState.CANCELLING:
            cancel_job(session, job_id)
            return
        units = _units(session, job_id) or _create_units(session, job)
        for unit in units:
            if unit.state == UnitState.PENDING:
                enqueue_on_commit(session, RUN_UNIT, job_id, unit.index)
        if units and all(unit.state in UNIT_COMPLETE for unit in units):
            enqueue_on_commit(session, FINISH_JOB, job_id)


def _create_units(session: Session, job: Job) -> list[Unit]:
    device = worker_device()
    try:
        train = _images(session, job, "dataset")  # cached for the units that run on this worker
        record_inputs(session, job, _job_dir(job.id),
                      lambda field: train if field == "dataset" else _images(session, job, field))
    except ServiceError as error:  # the dataset is gone or changed since the job was validated
        fail_job(session, job.id, f"{error.field}: {error.message}")
        return []
    if job.kind in gan_runner.GAN_KINDS:
        plan = gan_runner.plan_units(job.spec, job.kind)
        if job.kind == "mrgan" and not _prepare_mrgan(session, job, device):
            return []
    else:
        configs = build_configs(job.spec, str(device))
        channels, height, width = (int(side) for side in job.image_shape)
        plan = plan_units(configs.model, configs.audit, job.n_samples, (channels, height, width), device,
                          configs.training.batch_size)
        if configs.audit.stop_when_stable is not None:  # the stop skips whole repetitions
            plan = repetition_aligned(plan, configs.audit.folds)
    for index, model_ids in enumerate(plan):
        session.add(Unit(job_id=job.id, index=index, model_ids=[int(m) for m in model_ids]))
    if not guarded_update(
        session,
        Job,
        job.id,
        when={JobState.QUEUED},
        units_total=len(plan),
        device=str(device),
        updated_at=utcnow(),
    ):
        session.rollback()  # cancelled (or failed) while planning: no units
        return []
    try:
        session.flush()  # the units first: a twin plan fails on them before it copies the sample keys
        add_job_samples(session, job.id, train.key_texts(), train.label_texts())
        session.commit()
    except IntegrityError:
        session.rollback()  # a twin plan_job inserted them first; theirs are identical
    _prepare_images(session, job)
    return _units(session, job.id)


def _prepare_images(session: Session, job: Job) -> None:
    """Write the image route's pixel file now (a built-in, an .npz), so the API maps it instead of
    converting the set on the first image request; best effort: the API writes it when it is missing."""
    try:
        prepare_sample_images(job, session, get_settings())
    except (ServiceError, OSError, ValueError) as error:
        log.warning("job %s: sample images not prepared: %s", job.id, error)


def _prepare_mrgan(session: Session, job: Job, device: torch.device) -> bool:
    """The tau units share one feature space: compute it once, here, and store it with the artifacts.
    False when the job failed instead (a dataset that cannot be loaded)."""
    try:
        inputs = _gan_inputs(session, job)
    except ServiceError as error:
        fail_job(session, job.id, f"{error.field}: {error.message}")
        return False
    session.commit()  # no transaction stays open while the embedding is computed
    gan_runner.shared_feature_space(_job_dir(job.id), job.spec, inputs, device)
    return True


class UnitMonitor:
    """progress / should_stop callbacks for train_unit: throttled progress + heartbeat writes, and the
    stop check polled between epochs (a cancel, the job ending, or this run's claim taken over)."""

    def __init__(self, claim: UnitClaim, units_total: int, epochs: int) -> None:
        self.claim, self.units_total, self.epochs = claim, units_total, epochs
        self.lost = False  # set once a guarded write found the claim gone
        self._last_write = 0.0

    def progress(self, event: Any) -> None:
        fault_point("unit_epoch")
        now = time.monotonic()
        if self.lost or now - self._last_write < PROGRESS_EVERY_S:
            return
        self._last_write = now
        try:
            if not claims.record_progress(
                self.claim, int(getattr(event, "epoch", 0)), self.epochs, self.units_total
            ):
                self.lost = True
        except OperationalError:  # a dropped DB connection must not kill the unit; the next beat retries
            log.warning("progress write for job %s failed; continuing", self.claim.job_id, exc_info=True)

    def should_stop(self) -> bool:
        if self.lost:
            return True
        try:
            self.lost = not claims.still_owned(self.claim)
        except OperationalError:  # unknown for now: keep training, ask again after the next epoch
            log.warning("cancel check for job %s failed; continuing", self.claim.job_id, exc_info=True)
        return self.lost


def run_unit(job_id: str, index: int) -> None:
    with session_scope() as session:
        claim = claims.claim_unit(session, job_id, index)
        if claim is None:
            return
        try:
            _run_claimed(session, claim)
        except OperationalError:
            session.rollback()
            claims.release_after_db_error(claim)  # not a worker death: the attempt is given back
            raise


def _run_claimed(session: Session, claim: UnitClaim) -> None:
    job = session.get(Job, claim.job_id)
    assert job is not None
    done_before = artifact_path(get_settings().resolved_artifacts_dir, job.id, claim.index)
    if done_before.is_file():  # an earlier attempt wrote it (artifacts are atomic) but was not recorded
        _record_unit_done(claim, done_before, 0.0)
        return
    unit = session.get(Unit, claim.unit_id)
    assert unit is not None
    gan = job.kind in gan_runner.GAN_KINDS
    try:
        if gan:
            inputs = _gan_inputs(session, job)
        else:
            # (N, C, H, W) as stored: uint8 levels (a quarter of the float32 copy) or float intensities
            train = _images(session, job, "dataset").pixels
            heldout = _images(session, job, "heldout").pixels if job.spec.get("heldout") else None
    except ServiceError as error:  # the dataset is gone or changed since the job was validated
        session.rollback()
        claims.fail_unit(claim, f"{error.field}: {error.message}")
        return
    session.commit()  # end the read transaction: training holds no database connection
    if gan:
        _run_gan_unit(job, unit, claim, inputs)
    else:
        _train_and_record(job, unit, claim, build_configs(job.spec, str(worker_device())), train, heldout)


def _gan_inputs(session: Session, job: Job) -> gan_runner.GanInputs:
    """The GAN job's image sets (ServiceError naming the field when one cannot be used)."""
    generated = _images(session, job, "generated") if job.spec.get("generated") else None
    return gan_runner.GanInputs(_images(session, job, "dataset"), _images(session, job, "heldout"), generated)


def _train_and_record(
    job: Job, unit: Unit, claim: UnitClaim, configs: JobConfigs, train: np.ndarray, heldout: np.ndarray | None
) -> None:
    monitor = UnitMonitor(claim, job.units_total, configs.training.epochs)

    def work() -> Any:
        return train_unit(
            train,
            configs.model,
            configs.training,
            configs.audit,
            list(unit.model_ids),
            device=worker_device(),
            progress=monitor.progress,
            should_stop=monitor.should_stop,
            heldout=heldout,
        )

    _run_and_record(job, claim, monitor, work, write_artifact)


def _run_gan_unit(job: Job, unit: Unit, claim: UnitClaim, inputs: gan_runner.GanInputs) -> None:
    monitor = UnitMonitor(claim, job.units_total, gan_runner.unit_steps(job.spec, job.kind))
    job_dir = artifact_path(get_settings().resolved_artifacts_dir, job.id, unit.index).parent

    def work() -> Any:
        return gan_runner.compute_unit(
            job.kind,
            job.spec,
            unit.index,
            inputs,
            worker_device(),
            monitor.progress,
            monitor.should_stop,
            job_dir,
        )

    _run_and_record(job, claim, monitor, work, gan_runner.write_unit)


def _run_and_record(
    job: Job,
    claim: UnitClaim,
    monitor: UnitMonitor,
    work: Callable[[], Any],
    write: Callable[[Path, Any], None],
) -> None:
    """Run a unit's work with heartbeats; record it done, release it on cancel, fail the job on errors."""
    started = time.monotonic()
    settings = get_settings()
    try:
        with heartbeat(
            lambda: claims.beat_unit(claim), settings.heartbeat_interval_s, f"heartbeat-unit-{claim.unit_id}"
        ) as lost:
            result = work()
    except Cancelled:
        with session_scope() as session:
            claims.release_unit(session, claim, give_back_attempt=False)
            if job_state(session, job.id) == JobState.CANCELLING:
                cancel_job(session, job.id)
        return
    except OperationalError:
        raise  # a database hiccup: let Celery redeliver rather than failing the job
    except Exception as error:  # the science core refused or crashed: the job fails, with the reason
        log.exception("unit %s of job %s failed", claim.index, job.id)
        claims.fail_unit(claim, f"unit {claim.index}: {type(error).__name__}: {error}")
        return
    if lost.is_set() or monitor.lost or not claims.still_owned(claim):
        log.info(
            "unit %s of job %s: the claim was taken over; dropping this run's result", claim.index, job.id
        )
        return
    path = artifact_path(settings.resolved_artifacts_dir, job.id, claim.index)
    try:
        write(path, result)
    except OSError as error:
        claims.fail_unit(claim, f"unit {claim.index}: cannot write its artifact: {error}")
        return
    _record_unit_done(claim, path, time.monotonic() - started)


def _record_unit_done(claim: UnitClaim, path: Path, seconds: float) -> None:
    with session_scope() as session:
        complete = claims.complete_unit(session, claim, path, seconds)
        job = session.get(Job, claim.job_id)
        if complete is False and job is not None:
            _publish_provisional(session, job)
    if complete is False:
        adaptive_stop.stop_if_stable(claim.job_id, claim.index)


def _done_artifacts(session: Session, job_id: str) -> list[Path]:
    units = _units(session, job_id)
    return [Path(u.artifact_path) for u in units if u.state == UnitState.DONE and u.artifact_path]


def _final_artifacts(session: Session, job: Job) -> list[Path]:
    """The units the final result combines: all done ones, or with the adaptive stop those of the
    leading whole repetitions (a later repetition that some units finished before the stop is left out)."""
    if job.kind in gan_runner.GAN_KINDS or job.spec.get("audit", {}).get("stop_when_stable") is None:
        return _done_artifacts(session, job.id)
    return adaptive_stop.whole_repetition_artifacts(_units(session, job.id), build_configs(job.spec).audit)


def _publish_provisional(session: Session, job: Job) -> None:
    paths = _done_artifacts(session, job.id)
    if len(paths) >= job.units_total or job.kind in gan_runner.GAN_KINDS:
        return  # the finishing step writes the final set (GAN jobs have no provisional scores)
    scores = combine_units(paths, job.n_samples, build_configs(job.spec).audit)
    if bool(np.all((scores.n_in > 0) & (scores.n_out > 0))):
        write_scores(session, job.id, score_arrays(scores), units=len(paths), provisional=True)


def finish_job(job_id: str) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.state in JOB_TERMINAL:
            return
        if job.state == JobState.CANCELLING:
            cancel_job(session, job_id)
            return
        units = _units(session, job_id)
        if not units or any(unit.state not in UNIT_COMPLETE for unit in units):
            for unit in units:
                if unit.state == UnitState.PENDING:
                    enqueue_on_commit(session, RUN_UNIT, job_id, unit.index)
            return
        token = claims.claim_finish(session, job_id)
        if token is None:
            return
        paths = _final_artifacts(session, job)
        labels = job_labels(session, job_id, job.n_samples)
        session.commit()
    try:
        with heartbeat(
            lambda: claims.beat_finish(job_id, token),
            get_settings().heartbeat_interval_s,
            f"heartbeat-finish-{job_id}",
        ):
            _finish_claimed(job, token, paths, labels)
    except OperationalError:
        claims.release_finish(job_id, token)  # not a worker death: the attempt is given back
        raise


def _finish_claimed(job: Job, token: int, paths: list[Path], labels: list[str | None] | None) -> None:
    """Compute the final result (no transaction open), then write it and succeed in one transaction."""
    tau_rows: list[gan_runner.TauCounts] = []
    started = time.monotonic()
    if job.kind in gan_runner.GAN_KINDS:
        arrays, summary = gan_runner.finish(job.kind, paths)
        tau_rows, generated = gan_runner.tau_count_rows(job.kind, paths), None
    else:
        heldout_facts = job.spec.get("facts", {}).get("heldout")
        n_heldout = None if heldout_facts is None else int(heldout_facts["count"])
        final = final_result(paths, job.n_samples, build_configs(job.spec).audit, n_heldout)
        conversion = job.spec.get("facts", {}).get("train", {}).get("conversion")
        arrays = score_arrays(final.scores, final.uncertainty)
        summary, generated = summarize(final, labels, conversion), final
    _store_evidence(job, paths, arrays.score, summary, None if generated is None else generated.samples)
    with session_scope() as session:
        if not claims.lock_finish(session, job.id, token):
            _honour_cancel(session, job.id)  # cancelled, failed or taken over while this run computed
            return
        fault_point("finish")
        summary["provenance"] = job_provenance(job, _units(session, job.id), _job_dir(job.id), summary,
                                               time.monotonic() - started)
        if generated is not None:
            write_generated(paths[0].parent, generated)
        write_scores(session, job.id, arrays, units=len(paths), provisional=False, commit=False)
        if tau_rows:
            write_tau_counts(session, job.id, tau_rows)
        if not claims.succeed(session, job.id, token, summary):
            session.rollback()
            _honour_cancel(session, job.id)


def _store_evidence(job: Job, paths: list[Path], score: np.ndarray, summary: dict[str, Any],
                    generated: np.ndarray | None) -> None:
    """The flagged samples' neighbours (workers/evidence.py), before the job succeeds."""

    def load(key: str) -> ImageSet | None:
        if not job.spec.get(key):
            return None
        with session_scope() as session:
            images = _images(session, job, key)
            job_evidence.keep_display_copy(session, job.spec, job.owner, key, images)
            return images

    seconds = job_evidence.finish_evidence(job.id, paths[0].parent, lambda: job_evidence.job_evidence(
        job.spec, job.kind, score, load, paths=paths, summary=summary, generated=generated))  # fmt: skip
    if seconds is not None and isinstance(summary.get("timings"), dict):
        summary["timings"]["evidence_seconds"] = seconds


def _honour_cancel(session: Session, job_id: str) -> None:
    if job_state(session, job_id) == JobState.CANCELLING:
        cancel_job(session, job_id)
    session.commit()
