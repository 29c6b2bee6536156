"""Self-contained HTML reports of an audit: inline SVG charts and base64 PNG images, no scripts."""

from app.reports.model import (
    ClassRow,
    CopiedSample,
    EpochQuantiles,
    GanSection,
    LossCurves,
    Neighbour,
    ReportData,
    RhoScatter,
    SampleEntry,
    TauRow,
)
from app.reports.render import render_report

__all__ = [
    "ClassRow",
    "CopiedSample",
    "EpochQuantiles",
    "GanSection",
    "LossCurves",
    "Neighbour",
    "ReportData",
    "RhoScatter",
    "SampleEntry",
    "TauRow",
    "render_report",
]
