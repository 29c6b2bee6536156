"""The plain data a report is rendered from.

The renderer is a pure function of :class:`ReportData`; the service fills one from the database and
artifacts (app.reports.build), tests build one by hand. Images are numpy arrays, (H, W) or (H, W, C),
either uint8 or floats in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # app.reports.evidence renders with app.reports.images, which imports this module
    from app.reports.evidence import EvidencePanel

Image = np.ndarray


@dataclass(frozen=True)
class Neighbour:
    """The closest image of another set (held-out or generated) to a training sample."""

    image: Image | None
    distance: float
    index: int


@dataclass(frozen=True)
class SampleEntry:
    """One of the most-memorized training samples."""

    sample_id: int
    rank: int
    score: float
    log_p_in: float | None
    log_p_out: float | None
    image: Image | None
    rho: float | None = None
    heldout_neighbour: Neighbour | None = None
    generated_neighbour: Neighbour | None = None
    key: str | None = None  # the user's id of the sample
    label: str | None = None


@dataclass(frozen=True)
class ClassRow:
    """Memorization within one class (models.per_class): count, median and 0.95 quantile of M, above."""

    label: str
    count: int
    median: float | None
    q95: float | None
    n_above_threshold: int


@dataclass(frozen=True)
class RhoScatter:
    """M against rho = d_H / d_S per training sample (SPEC §3), with their Spearman correlation."""

    score: np.ndarray  # (n,)
    rho: np.ndarray  # (n,)
    spearman: float | None


@dataclass(frozen=True)
class EpochQuantiles:
    """Quantiles of M recomputed every few epochs (SPEC §1.6): label ("0.95") -> value per epoch."""

    epochs: Sequence[int]
    quantiles: Mapping[str, Sequence[float]]


@dataclass(frozen=True)
class LossCurves:
    """Per-epoch training curves, e.g. {"train": [...], "held-out": [...]} averaged over the models."""

    epochs: Sequence[int]
    series: Mapping[str, Sequence[float]]
    ylabel: str = "loss (nats per sample)"


@dataclass(frozen=True)
class TauRow:
    """One memorization-rejection GAN run of a tau sweep (SPEC §5)."""

    tau: float
    rejection_rate: float | None
    c_t: float | None
    frechet: float | None


@dataclass(frozen=True)
class CopiedSample:
    """A training image the GAN reproduces: how many generated samples fall within tau, and some of them."""

    sample_id: int
    copy_count: float
    image: Image | None
    copies: Sequence[Image] = ()
    copy_distances: Sequence[float] = ()


@dataclass(frozen=True)
class GanSection:
    tau_sweep: Sequence[TauRow]
    copied: Sequence[CopiedSample]
    tau: float | None = None


@dataclass(frozen=True)
class ReportData:
    job_id: str
    title: str
    kind: str  # "vae_audit" | "gan" | ...
    state: str
    generated_at: str  # ISO timestamp, given by the caller so rendering stays pure
    params: Mapping[str, Any] = field(default_factory=dict)  # the job spec, shown flattened
    summary: Mapping[str, float] = field(default_factory=dict)
    scores: np.ndarray | None = None  # (n,) M per training sample; NaN where undefined
    provisional: bool = False
    top: Sequence[SampleEntry] = ()
    rho: RhoScatter | None = None
    epochs: EpochQuantiles | None = None
    losses: LossCurves | None = None
    gan: GanSection | None = None
    notes: Sequence[str] = ()
    classes: Sequence[ClassRow] = ()  # per label, when the training set has labels
    class_threshold: float | None = None
    evidence: EvidencePanel | None = None  # nearest-neighbour evidence of the top flagged samples
