"""The report's nearest-neighbour evidence panel: for the top flagged samples, the image beside its nearest
other training images, its nearest held-out and generated images (and for GAN jobs the generated samples
that copy it), each with its distance as text.

The data and its rendering (pure); app/reports/evidence_build.py fills it from the job's stored evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

import numpy as np

from app.reports import svg
from app.reports.images import png_data_uri


@dataclass(frozen=True)
class EvidenceFigure:
    caption: str  # e.g. "nearest train #40 img-040"
    distance: float | None
    image: np.ndarray | None  # (H, W) or (H, W, 3) uint8


@dataclass(frozen=True)
class EvidenceRow:
    sample_id: int
    caption: str
    score: float | None
    image: np.ndarray | None
    neighbours: Sequence[EvidenceFigure] = ()
    copies: Sequence[EvidenceFigure] = ()


@dataclass(frozen=True)
class EvidencePanel:
    rows: Sequence[EvidenceRow]
    space: str
    metric: str
    copies_space: str = ""
    flagged: int = 0
    notes: Sequence[str] = field(default_factory=tuple)


def _figure(figure: EvidenceFigure, css: str = "") -> str:
    caption = escape(figure.caption)
    number = None if figure.distance is None else svg.fmt_number(figure.distance)
    distance = "" if number is None else f'<br><b class="d">d = {number}</b>'
    picture = "" if figure.image is None else f'<img src="{png_data_uri(figure.image)}" alt="{caption}">'
    return f'<figure class="{css}">{picture}<figcaption>{caption}{distance}</figcaption></figure>'


def _row(row: EvidenceRow) -> str:
    score = "" if row.score is None else f" · score {svg.fmt_number(row.score)}"
    own = _figure(EvidenceFigure(row.caption + score, None, row.image), "flagged")
    parts = own + "".join(_figure(f) for f in row.neighbours)
    parts += "".join(_figure(f, "copy") for f in row.copies)
    return f'<div class="card evidence-row"><div class="row">{parts}</div></div>'


def render_evidence(panel: EvidencePanel | None) -> str:
    """The panel's HTML section ('' without evidence)."""
    if panel is None or not panel.rows:
        return ""
    copies = (f" Copies are generated samples whose nearest training image this is, within the job's copy "
              f"threshold, with distances in {escape(panel.copies_space)}.") if panel.copies_space else ""
    intro = (f"<p>The {len(panel.rows)} highest-scored of the job's {panel.flagged} flagged samples, each "
             "beside its nearest other training images and its nearest held-out and generated images. "
             f"Distances d are {escape(panel.metric)} in {escape(panel.space)} (intensities in [0, 1], all "
             f"channels); a near-duplicate has d close to 0.{copies}</p>")
    body = "".join(_row(row) for row in panel.rows)
    return (f'<section id="evidence"><h2>Nearest-neighbour evidence</h2>{intro}'
            f'<div class="evidence">{body}</div></section>')


EVIDENCE_STYLE = """
.evidence{display:flex;flex-direction:column;gap:8px}.evidence-row{width:auto}
.evidence figure.flagged img{outline:3px solid #d1495b}.evidence figure.copy img{outline:2px solid #1f6feb}
.evidence b.d{color:#1b1f24;font-size:12px;font-variant-numeric:tabular-nums}
"""
