"""What the Celery tasks do, as plain functions of ids (tests and the CLI can call them directly).

plan_job: the worker sizes the units for its device and records them (once). run_unit: trains one
unit, saves its artifact atomically, marks it done, publishes provisional scores. finish_job:
combines every unit into the final scores and summary. Each step re-reads the DB first and is a
no-op when its work is already done, which makes redelivered or duplicated tasks harmless.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
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
from app.services.datasets import load_dataset_spec
from app.services.errors import ServiceError
from app.services.score_writer import write_scores
from app.services.specs import JobConfigs, build_configs
from app.settings import get_settings
from app.webhooks import notify_on_commit
from models.audit import Cancelled, plan_units, resolve_device, train_unit
from models.imageset import ImageSet
from workers import gan_runner, state
from workers.celery_app import FINISH_JOB, RUN_UNIT, enqueue
from workers.heartbeat import heartbeat
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
_DATA_CACHE: OrderedDict[str, ImageSet] = OrderedDict()


def worker_device() -> torch.device:
    return resolve_device(get_settings().worker_device)


def _images(session: Session, job: Job, key: str) -> ImageSet:
    """The job's training or held-out images, cached per process (units of a job share them)."""
    cache_key = json.dumps([job.owner, job.spec[key]], sort_keys=True)
    if cache_key not in _DATA_CACHE:
        _DATA_CACHE[cache_key] = load_dataset_spec(job.spec[key], session, get_settings(), job.owner, key)
        while len(_DATA_CACHE) > 4:
            _DATA_CACHE.popitem(last=False)
    return _DATA_CACHE[cache_key]


def _units(session: Session, job_id: str) -> list[Unit]:
    return list(session.scalars(select(Unit).where(Unit.job_id == job_id).order_by(Unit.index)))


def plan_job(job_id: str) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.state in state.TERMINAL_STATES:
            return
        if job.state == "cancelling":
            state.mark_cancelled(session, job_id)
            return
        units = _units(session, job_id) or _create_units(session, job)
        pending = [unit.index for unit in units if unit.state != "done"]
    for index in pending:
        enqueue(RUN_UNIT, job_id, index)
    if not pending:
        enqueue(FINISH_JOB, job_id)


def _create_units(session: Session, job: Job) -> list[Unit]:
    device = worker_device()
    if job.kind in gan_runner.GAN_KINDS:
        plan = gan_runner.plan_units(job.spec, job.kind)
    else:
        configs = build_configs(job.spec, str(device))
        channels, height, width = (int(side) for side in job.image_shape)
        plan = plan_units(configs.model, configs.audit, job.n_samples, (channels, height, width), device,
                          configs.training.batch_size)
    for index, model_ids in enumerate(plan):
        session.add(Unit(job_id=job.id, index=index, model_ids=[int(m) for m in model_ids]))
    job.units_total, job.device = len(plan), str(device)
    job.progress = {**job.progress, "units_done": 0, "units_total": len(plan)}
    try:
        session.commit()
    except IntegrityError:
        session.rollback()  # a twin plan_job inserted them first; theirs are identical
    return _units(session, job.id)


class UnitMonitor:
    """progress / should_stop callbacks for train_unit: throttled progress + heartbeat writes,
    and the cooperative cancel check (polled between epochs)."""

    def __init__(self, job_id: str, unit: Unit, units_total: int, epochs: int) -> None:
        self.job_id, self.unit_id, self.unit_index = job_id, unit.id, unit.index
        self.units_total, self.epochs = units_total, epochs
        self._last_write = 0.0

    def progress(self, event: Any) -> None:
        fault_point("unit_epoch")
        now = time.monotonic()
        if now - self._last_write < PROGRESS_EVERY_S:
            return
        self._last_write = now
        try:
            self._write_progress(int(getattr(event, "epoch", 0)))
        except OperationalError:  # a dropped DB connection must not kill the unit; the next beat retries
            log.warning("progress write for job %s failed; continuing", self.job_id, exc_info=True)

    def _write_progress(self, epoch: int) -> None:
        with session_scope() as session:
            job, unit = session.get(Job, self.job_id), session.get(Unit, self.unit_id)
            if job is None or unit is None:
                return
            unit.epoch, unit.heartbeat_at = epoch, utcnow()
            done = state.count_done_units(session, self.job_id)
            fraction = (done + epoch / max(self.epochs, 1)) / max(self.units_total, 1)
            job.progress = {"units_done": done, "units_total": self.units_total, "unit": self.unit_index,
                            "epoch": epoch, "epochs": self.epochs, "fraction": round(min(fraction, 1.0), 4)}
            job.updated_at = utcnow()

    def should_stop(self) -> bool:
        try:
            with session_scope() as session:
                return state.cancel_requested(session, self.job_id)
        except OperationalError:  # unknown for now: keep training, ask again after the next epoch
            log.warning("cancel check for job %s failed; continuing", self.job_id, exc_info=True)
            return False


def _claim_unit(session: Session, job_id: str, index: int) -> tuple[Job, Unit] | None:
    """Mark the unit running (or decide there is nothing to do); commits."""
    job = session.get(Job, job_id)
    unit = session.scalar(select(Unit).where(Unit.job_id == job_id, Unit.index == index))
    if job is None or unit is None or job.state in state.TERMINAL_STATES:
        return None
    if job.state == "cancelling":
        state.mark_cancelled(session, job_id)
        return None
    if unit.state == "done" and unit.artifact_path and Path(unit.artifact_path).is_file():
        return None
    if unit.attempts >= get_settings().max_unit_attempts:
        message = f"unit {index} was started {unit.attempts} times and never finished (its worker died)"
        state.mark_failed(session, job_id, message)
        return None
    unit.state, unit.attempts, unit.error = "running", unit.attempts + 1, None
    unit.started_at = unit.heartbeat_at = utcnow()
    state.mark_running(session, job_id)
    session.commit()
    return job, unit


def run_unit(job_id: str, index: int) -> None:
    with session_scope() as session:
        claimed = _claim_unit(session, job_id, index)
        if claimed is None:
            _finish_if_complete(session, job_id)
            return
        job, unit = claimed
        done_before = artifact_path(get_settings().resolved_artifacts_dir, job_id, index)
        if done_before.is_file():  # an earlier attempt wrote it (artifacts are atomic) but was not recorded
            _record_unit_done(job_id, unit.id, done_before, 0.0)
            return
        gan_inputs = None
        if job.kind in gan_runner.GAN_KINDS:
            gan_inputs = _gan_inputs(session, job)
            if gan_inputs is None:
                return
        else:
            configs = build_configs(job.spec, str(worker_device()))
            try:
                # (N, C, H, W) as stored: uint8 levels (a quarter of the float32 copy) or float intensities
                train = _images(session, job, "dataset").pixels
                heldout = _images(session, job, "heldout").pixels if job.spec.get("heldout") else None
            except ServiceError as error:
                state.mark_failed(session, job_id, f"{error.field}: {error.message}")
                return
    if gan_inputs is not None:
        _run_gan_unit(job, unit, gan_inputs)
        return
    _train_and_record(job, unit, configs, train, heldout)


def _gan_inputs(session: Session, job: Job) -> gan_runner.GanInputs | None:
    """The GAN job's image sets; None (the job marked failed) when one cannot be loaded."""
    try:
        generated = _images(session, job, "generated") if job.spec.get("generated") else None
        train, heldout = _images(session, job, "dataset"), _images(session, job, "heldout")
        return gan_runner.GanInputs(train, heldout, generated)
    except ServiceError as error:
        state.mark_failed(session, job.id, f"{error.field}: {error.message}")
        return None


def _train_and_record(
    job: Job, unit: Unit, configs: JobConfigs, train: np.ndarray, heldout: np.ndarray | None
) -> None:
    monitor = UnitMonitor(job.id, unit, job.units_total, configs.training.epochs)

    def work() -> Any:
        return train_unit(train, configs.model, configs.training, configs.audit, list(unit.model_ids),
                          device=worker_device(), progress=monitor.progress,
                          should_stop=monitor.should_stop, heldout=heldout)

    _run_and_record(job, unit, work, write_artifact)


def _run_gan_unit(job: Job, unit: Unit, inputs: gan_runner.GanInputs) -> None:
    monitor = UnitMonitor(job.id, unit, job.units_total, gan_runner.unit_steps(job.spec, job.kind))

    def work() -> Any:
        return gan_runner.compute_unit(job.kind, job.spec, unit.index, inputs, worker_device(),
                                       monitor.progress, monitor.should_stop)

    _run_and_record(job, unit, work, gan_runner.write_unit)


def _run_and_record(
    job: Job, unit: Unit, work: Callable[[], Any], write: Callable[[Path, Any], None]
) -> None:
    """Run a unit's work with heartbeats; record it done, reset it on cancel, fail the job on errors."""
    started = time.monotonic()
    try:
        with heartbeat(unit.id, get_settings().heartbeat_interval_s):
            result = work()
    except Cancelled:
        with session_scope() as session:
            _reset_unit(session, unit.id)
            if state.cancel_requested(session, job.id):
                state.mark_cancelled(session, job.id)
        return
    except OperationalError:
        raise  # a database hiccup: let Celery redeliver rather than failing the job
    except Exception as error:  # the science core refused or crashed: the job fails, with the reason
        log.exception("unit %s of job %s failed", unit.index, job.id)
        with session_scope() as session:
            state.mark_failed(session, job.id, f"unit {unit.index}: {type(error).__name__}: {error}")
        return
    path = artifact_path(get_settings().resolved_artifacts_dir, job.id, unit.index)
    try:
        write(path, result)
    except OSError as error:
        with session_scope() as session:
            state.mark_failed(session, job.id, f"unit {unit.index}: cannot write its artifact: {error}")
        return
    _record_unit_done(job.id, unit.id, path, time.monotonic() - started)


def release_after_db_error(job_id: str, index: int) -> None:
    """A transient DB error is not a worker death: give the attempt back before Celery retries.
    Best effort: if the DB is still down the attempt stays counted (still bounded)."""
    try:
        with session_scope() as session:
            unit = session.scalar(select(Unit).where(Unit.job_id == job_id, Unit.index == index))
            if unit is not None and unit.state == "running":
                unit.state, unit.attempts = "pending", max(unit.attempts - 1, 0)
    except OperationalError:
        log.warning("could not release unit %s of job %s after a DB error", index, job_id, exc_info=True)


def _reset_unit(session: Session, unit_id: int) -> None:
    unit = session.get(Unit, unit_id)
    if unit is not None and unit.state != "done":
        unit.state = "pending"


def _record_unit_done(job_id: str, unit_id: int, path: Path, seconds: float) -> None:
    with session_scope() as session:
        unit = session.get(Unit, unit_id)
        job = session.get(Job, job_id)
        if unit is None or job is None:
            return
        unit.state, unit.artifact_path, unit.finished_at = "done", str(path), utcnow()
        unit.seconds = round(seconds, 3)
        session.flush()
        job.units_done = state.count_done_units(session, job_id)
        job.progress = {**job.progress, "units_done": job.units_done, "units_total": job.units_total}
        session.commit()
        _publish_provisional(session, job)
        _finish_if_complete(session, job_id)


def _done_artifacts(session: Session, job_id: str) -> list[Path]:
    return [Path(u.artifact_path) for u in _units(session, job_id) if u.state == "done" and u.artifact_path]


def _publish_provisional(session: Session, job: Job) -> None:
    paths = _done_artifacts(session, job.id)
    if len(paths) >= job.units_total or job.kind in gan_runner.GAN_KINDS:
        return  # the finishing step writes the final set (GAN jobs have no provisional scores)
    scores = combine_units(paths, job.n_samples, build_configs(job.spec).audit)
    if bool(np.all((scores.n_in > 0) & (scores.n_out > 0))):
        write_scores(session, job.id, score_arrays(scores), units=len(paths), provisional=True)


def _finish_if_complete(session: Session, job_id: str) -> None:
    job = session.get(Job, job_id)
    if job is None or job.state in state.TERMINAL_STATES or job.units_total == 0:
        return
    if state.count_done_units(session, job_id) >= job.units_total:
        enqueue(FINISH_JOB, job_id)


def finish_job(job_id: str) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.state in state.TERMINAL_STATES:
            return
        if job.state == "cancelling":
            state.mark_cancelled(session, job_id)
            return
        units = _units(session, job_id)
        missing = [u.index for u in units if u.state != "done"]
        if not units or missing:
            for index in missing:
                enqueue(RUN_UNIT, job_id, index)
            return
        if not _count_finish_attempt(session, job):
            return
        paths = _done_artifacts(session, job_id)
        if job.kind in gan_runner.GAN_KINDS:
            arrays, summary = gan_runner.finish(job.kind, paths)
            write_scores(session, job_id, arrays, units=len(units), provisional=False)
            _mark_succeeded(session, job_id, summary)
            return
        heldout_facts = job.spec.get("facts", {}).get("heldout")
        n_heldout = None if heldout_facts is None else int(heldout_facts["count"])
        final = final_result(paths, job.n_samples, build_configs(job.spec).audit, n_heldout)
        fault_point("finish")
        write_generated(paths[0].parent, final)
        write_scores(session, job_id, score_arrays(final.scores), units=len(units), provisional=False)
        _mark_succeeded(session, job_id, summarize(final))


def _count_finish_attempt(session: Session, job: Job) -> bool:
    """The finishing step gets a bounded number of starts, like a unit (it too can kill its worker,
    e.g. out of memory on a huge N). Commits; False when the job was failed instead."""
    attempts = int((job.progress or {}).get("finish_attempts", 0))
    if attempts >= get_settings().max_unit_attempts:
        message = f"the finishing step was started {attempts} times and never finished (its worker died)"
        state.mark_failed(session, job.id, message)
        return False
    job.progress = {**(job.progress or {}), "finish_attempts": attempts + 1}
    session.commit()
    return True


def release_finish_attempt(job_id: str) -> None:
    """A transient DB error is not a worker death: give the finishing step's attempt back (best effort)."""
    try:
        with session_scope() as session:
            job = session.get(Job, job_id)
            if job is not None and job.state not in state.TERMINAL_STATES:
                attempts = int((job.progress or {}).get("finish_attempts", 0))
                job.progress = {**(job.progress or {}), "finish_attempts": max(attempts - 1, 0)}
    except OperationalError:
        log.warning("could not release the finishing attempt of job %s", job_id, exc_info=True)


def _mark_succeeded(session: Session, job_id: str, summary: dict[str, Any]) -> None:
    job = session.get(Job, job_id)
    if job is None or job.state in state.TERMINAL_STATES:
        return
    now, previous = utcnow(), job.state
    job.state, job.summary, job.finished_at, job.updated_at = "succeeded", summary, now, now
    job.progress = {"units_done": job.units_total, "units_total": job.units_total, "fraction": 1.0}
    notify_on_commit(session, job_id, previous)
    session.commit()
