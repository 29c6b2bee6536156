"""The adaptive stop in the service (SPEC §7, ``audit.stop_when_stable``).

With the stop on, a job's units are repetition-aligned (``models.units.repetition_aligned``: no unit
mixes two repetitions) and queued in model-id order, so repetitions finish roughly one after another.
After a unit is recorded done, its worker looks at the leading whole repetitions 1..l (every one of their
K models done); when that prefix just grew (the unit belongs to it) and l >= 3, it computes the top-k
overlaps from those units' artifacts (``models.uncertainty.stable_repetitions``, the rule ``memaudit
audit`` applies) with no transaction open. Once the rule fires, ``workers.claims.skip_remaining`` moves
every pending and running unit to ``skipped`` in one transaction; the finishing step then combines the
leading whole repetitions only (``assemble`` keeps the first l at which the rule fires, so a repetition
that finished while the decision was made changes nothing), and the summary's ``repeats_used`` says l.

Two workers completing repetitions at the same moment may both decide to stop: the guarded UPDATEs let
the first skip the units and the second find none (it changes nothing and enqueues nothing).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from sqlalchemy import select

from app.db import Job, Unit, session_scope
from app.lifecycle import JobState, UnitState
from app.services.gan_specs import GAN_KINDS
from app.services.specs import build_configs
from models.audit import fold_assignment, load_unit
from models.config import AuditConfig
from models.uncertainty import stable_repetitions
from models.units import complete_repetitions
from workers import claims

log = logging.getLogger(__name__)
MIN_REPETITIONS = 3  # the rule needs overlap_l and overlap_{l-1}, so l >= 3


def _repetitions(unit: Unit, folds: int) -> set[int]:
    return {int(m) // folds for m in unit.model_ids}


def _whole_prefix(units: list[Unit], audit: AuditConfig) -> int:
    done = {int(m) for unit in units if unit.state == UnitState.DONE for m in unit.model_ids}
    return complete_repetitions(done, audit.folds, audit.repeats)


def _prefix_units(units: list[Unit], audit: AuditConfig) -> tuple[int, list[Unit]]:
    """The leading whole repetitions and the done units lying entirely inside them. Units planned by
    ``repetition_aligned`` never straddle two repetitions; one that does (a job planned before it) is left
    out together with the repetition it would leave incomplete, until the set is whole again."""
    chosen = [unit for unit in units if unit.state == UnitState.DONE and unit.artifact_path]
    while True:
        prefix = _whole_prefix(chosen, audit)
        inside = [unit for unit in chosen if max(_repetitions(unit, audit.folds)) < prefix]
        if len(inside) == len(chosen) or not inside:
            return (prefix, inside) if inside else (0, [])
        chosen = inside


def whole_repetition_artifacts(units: list[Unit], audit: AuditConfig) -> list[Path]:
    """Artifacts of the done units of the leading whole repetitions (what the finishing step combines)."""
    return [Path(str(unit.artifact_path)) for unit in _prefix_units(units, audit)[1]]


def _stable(paths: list[Path], n_samples: int, audit: AuditConfig) -> int | None:
    assert audit.stop_when_stable is not None
    results = [load_unit(path) for path in paths]
    model_ids = np.concatenate([r.model_ids for r in results])  # (u,)
    loglik = np.concatenate([r.loglik for r in results])  # (u, N)
    order = np.argsort(model_ids)
    folds_of = fold_assignment(n_samples, audit.folds, audit.repeats, audit.seed)  # (L, N)
    return stable_repetitions(folds_of, model_ids[order], loglik[order], audit.stop_when_stable)


def stop_if_stable(job_id: str, unit_index: int) -> int:
    """Called after unit ``unit_index`` was recorded done; returns how many units this call skipped."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.kind in GAN_KINDS or job.state != JobState.RUNNING or job.units_skipped:
            return 0
        if job.spec.get("audit", {}).get("stop_when_stable") is None:
            return 0
        audit = build_configs(job.spec).audit
        units = list(session.scalars(select(Unit).where(Unit.job_id == job_id).order_by(Unit.index)))
        prefix, inside = _prefix_units(units, audit)
        if prefix < MIN_REPETITIONS or prefix >= audit.repeats:
            return 0  # too few repetitions yet, or nothing left to skip
        if all(unit.index != unit_index for unit in inside):
            return 0  # this unit did not extend the whole prefix: the rule's input is unchanged
        paths, n_samples = [Path(str(unit.artifact_path)) for unit in inside], job.n_samples
    repeats = _stable(paths, n_samples, audit)  # no transaction is open while artifacts are read
    if repeats is None:
        return 0
    with session_scope() as session:
        skipped = claims.skip_remaining(session, job_id)
    if skipped:
        log.info("job %s: ranking stable after %d repetitions; %d unit(s) skipped", job_id, repeats, skipped)
    return skipped
