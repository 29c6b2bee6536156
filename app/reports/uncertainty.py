"""The report's SPEC §7 section: the bootstrap interval of M for the top samples, the confidently
memorized ones marked, and the ranking-stability curve (top-k overlap against repetitions, L >= 2).

``uncertainty_view`` reads it from the final scores and the job summary (workers/results.py writes
``stability``, ``repeats_used``, ``confidently_memorized``); ``render_uncertainty`` turns it into HTML.
Both are hooked into app.reports.build / app.reports.render with one line each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from sqlalchemy.orm import Session

from app.db import Job
from app.reports import svg
from app.services.scores import top_scores

INTERVAL_ROWS = 24


@dataclass(frozen=True)
class IntervalRow:
    sample_id: int
    rank: int
    score: float
    score_lo: float | None
    score_hi: float | None
    score_se: float | None
    confident: bool
    key: str | None = None


@dataclass(frozen=True)
class UncertaintyView:
    rows: Sequence[IntervalRow]
    threshold: float | None  # the 0.95 quantile of M ("confidently memorized": score_lo above it)
    confidently_memorized: int | None  # None when L = 1
    stability: Sequence[tuple[int, float]]  # (repetition l, overlap_l), l = 2..L used
    top_k: int | None
    repeats_used: int | None
    repeats_requested: int | None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def uncertainty_view(session: Session, job: Job, top: int = INTERVAL_ROWS) -> UncertaintyView | None:
    """None for provisional scores or a job without SPEC §7 fields (finished before they existed)."""
    summary = job.summary or {}
    if job.scores_provisional or "repeats_used" not in summary:
        return None
    threshold = _number(summary.get("highly_memorized_threshold"))
    rows = []
    for number, scored in enumerate(top_scores(session, job.id, top)):
        row = scored.row
        if row.score is None:
            continue
        confident = row.score_lo is not None and threshold is not None and row.score_lo > threshold
        rows.append(IntervalRow(row.sample_id, row.rank or number + 1, float(row.score), row.score_lo,
                                row.score_hi, row.score_se, confident, scored.key))  # fmt: skip
    stability = [(int(point["repetition"]), float(point["overlap"]))
                 for point in summary.get("stability") or []]
    return UncertaintyView(
        rows=rows, threshold=threshold, confidently_memorized=summary.get("confidently_memorized"),
        stability=stability, top_k=summary.get("stability_top_k"), repeats_used=summary.get("repeats_used"),
        repeats_requested=summary.get("repeats_requested"),
    )  # fmt: skip


def _fmt(value: float | None) -> str:
    return "–" if value is None else svg.fmt_number(value)


def _interval_table(view: UncertaintyView) -> str:
    head = "<tr><th>rank</th><th>sample</th><th>M</th><th>90% interval</th><th>SE</th><th></th></tr>"
    return f"<table>{head}{''.join(_interval_row(row) for row in view.rows)}</table>"


def _interval_row(row: IntervalRow) -> str:
    name = f"#{row.sample_id}" + (f" {escape(row.key)}" if row.key else "")
    mark = "<b>✓ confidently memorized</b>" if row.confident else ""
    opening = '<tr class="confident">' if row.confident else "<tr>"
    return (f'{opening}<td class="num">{row.rank}</td><td>{name}</td><td class="num">{_fmt(row.score)}</td>'
            f'<td class="num">[{_fmt(row.score_lo)}, {_fmt(row.score_hi)}]</td>'
            f'<td class="num">{_fmt(row.score_se)}</td><td>{mark}</td></tr>')


def render_uncertainty(view: UncertaintyView | None) -> str:
    """The section's HTML ('' when there is nothing to show)."""
    if view is None or not view.rows:
        return ""
    used, requested = view.repeats_used, view.repeats_requested
    parts = []
    if used is not None and used < 2:
        parts.append("<p>One repetition (L = 1): the score's uncertainty is undefined; audit with "
                     "<code>audit.repeats</code> ≥ 2 to get intervals.</p>")
    else:
        stop = f" (the adaptive stop kept {used} of {requested})" if used != requested else ""
        parts.append(
            f"<p>Bootstrap over the {used} repetitions{stop}: the 90% interval of M for the top samples. "
            f"<b>{view.confidently_memorized}</b> samples are confidently memorized (the lower end of their "
            f"interval lies above the 0.95 quantile of M, {_fmt(view.threshold)} nats).</p>"
        )
    parts.append(_interval_table(view))
    if len(view.stability) >= 1:
        reps = [float(rep) for rep, _ in view.stability]
        chart = svg.line_chart(reps, {f"top-{view.top_k} overlap": [o for _, o in view.stability]},
                               xlabel="repetitions used l", ylabel="overlap of top-k with l - 1",
                               title="Ranking stability")  # fmt: skip
        parts.append(f"<figure>{chart}</figure>")
    return f'<section id="uncertainty"><h2>Uncertainty of M</h2>{"".join(parts)}</section>'
