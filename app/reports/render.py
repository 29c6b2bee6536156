"""Render a :class:`ReportData` into one self-contained HTML page (pure: same data, same bytes).

No scripts and no external URLs: charts are inline SVG, images are base64 PNG data URIs, and a
Content-Security-Policy forbids anything else, so a report stays readable offline and in an
artifact store, and cannot phone home.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

import numpy as np

from app.reports import svg
from app.reports.evidence import EVIDENCE_STYLE, render_evidence
from app.reports.images import png_data_uri
from app.reports.model import (
    CopiedSample,
    GanSection,
    Image,
    Neighbour,
    ReportData,
    SampleEntry,
)

HIGH_QUANTILE = 0.95  # SPEC §1.5: "highly memorized" = above the 0.95 quantile of M
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;
 background:#f6f8fa}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:12px 16px;margin:16px 0}
.meta{color:#57606a}.banner{background:#fff8c5;border:1px solid #d4a72c;padding:8px 12px;border-radius:6px}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #eaeef2;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #d0d7de;border-radius:6px;padding:6px;background:#fff;font-size:12px;width:max-content}
.card .row{display:flex;gap:6px}.card figure{margin:0;text-align:center;width:100px}
.card img{display:block;width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#000}
.card figcaption{color:#57606a;font-size:11px;overflow-wrap:anywhere}
svg.chart{max-width:100%;height:auto;font-size:11px}svg .axis,svg .tick{stroke:#57606a}
svg .grid{stroke:#eaeef2}svg .bar{fill:#1f6feb}svg .dot{fill:#1f6feb;fill-opacity:.45}
svg .marker{stroke:#d1495b;stroke-width:2;stroke-dasharray:4 3}svg .marker-label{fill:#d1495b}
svg .label{font-size:12px;fill:#1b1f24}
"""


def render_report(data: ReportData) -> str:
    sections = [
        _summary_section(data),
        _histogram_section(data),
        _classes_section(data),
        _top_section(data.top),
        render_evidence(data.evidence),
        _rho_section(data),
        _epochs_section(data),
        _gan_section(data.gan),
        _params_section(data.params),
    ]
    header = (f"<h1>{escape(data.title)}</h1><p class=\"meta\">job <code>{escape(data.job_id)}</code> · "
              f"{escape(data.kind)} · state <b>{escape(data.state)}</b> · "
              f"generated {escape(data.generated_at)}</p>")
    notes = "".join(f'<p class="banner">{escape(note)}</p>' for note in _notes(data))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(data.title)}</title><style>{STYLE}{EVIDENCE_STYLE}</style></head>"
        f"<body><main>{header}{notes}{''.join(s for s in sections if s)}</main></body></html>\n"
    )


def _notes(data: ReportData) -> list[str]:
    notes = list(data.notes)
    if data.provisional:
        notes.insert(0, "Provisional scores: not every model of the audit has finished; values will change.")
    return notes


def _fmt(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else svg.fmt_number(value)


def _section(heading: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(heading)}</h2>{body}</section>'


def _key_value_table(rows: Iterable[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{escape(k)}</th><td class=\"num\">{escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _finite_scores(data: ReportData) -> np.ndarray:
    if data.scores is None:
        return np.empty(0)
    scores = np.asarray(data.scores, dtype=np.float64)
    return scores[np.isfinite(scores)]


def _summary_section(data: ReportData) -> str:
    if not data.summary:
        return ""
    return _section("Summary", _key_value_table((k, _fmt(v)) for k, v in data.summary.items()), "summary")


def _histogram_section(data: ReportData) -> str:
    scores = _finite_scores(data)
    if scores.size == 0:
        return ""
    threshold = float(np.quantile(scores, HIGH_QUANTILE))
    above = int(np.count_nonzero(scores > threshold))
    chart = svg.histogram(scores, xlabel="memorization score M (nats)", title="Histogram of M",
                          marker=threshold, marker_label=f"0.95 quantile = {svg.fmt_number(threshold)}")
    undefined = 0 if data.scores is None else int(np.asarray(data.scores).size - scores.size)
    caption = (f"<p>{scores.size} samples with a finite M; {above} lie above the 0.95 quantile "
               f"({svg.fmt_number(threshold)} nats) and count as highly memorized."
               + (f" {undefined} samples have no score yet (no in- or out-model)." if undefined else "")
               + "</p>")
    return _section("Distribution of the memorization score M", chart + caption, "histogram")


def _classes_section(data: ReportData) -> str:
    if not data.classes:
        return ""
    rows = "".join(
        f"<tr><td>{escape(row.label)}</td><td class=\"num\">{row.count}</td><td class=\"num\">"
        f"{_fmt(row.median)}</td><td class=\"num\">{_fmt(row.q95)}</td><td class=\"num\">"
        f"{row.n_above_threshold}</td></tr>" for row in data.classes)  # fmt: skip
    table = ("<table><tr><th>label</th><th>samples</th><th>median M</th><th>0.95 quantile of M</th>"
             f"<th>above the threshold</th></tr>{rows}</table>")  # fmt: skip
    chart = svg.class_ranges([r.label for r in data.classes], [r.median for r in data.classes],
                             [r.q95 for r in data.classes], [r.n_above_threshold for r in data.classes],
                             threshold=data.class_threshold, ylabel="memorization score M (nats)",
                             title="Memorization per class")  # fmt: skip
    threshold = "" if data.class_threshold is None else f" ({svg.fmt_number(data.class_threshold)} nats)"
    caption = (f"<p>Per class: how many samples lie above the job's 0.95 quantile of M{threshold}, and "
               "where the class's median and 0.95 quantile of M sit.</p>")
    return _section("Memorization per class", chart + caption + table, "classes")


def _figure(image: Image | None, caption: str) -> str:
    if image is None:
        return f"<figure><figcaption>{escape(caption)} (no image)</figcaption></figure>"
    return (f'<figure><img src="{png_data_uri(image)}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _neighbour_figure(neighbour: Neighbour | None, label: str) -> str:
    if neighbour is None:
        return ""
    return _figure(neighbour.image, f"{label} #{neighbour.index}, d={svg.fmt_number(neighbour.distance)}")


def _sample_card(entry: SampleEntry) -> str:
    name = f"train #{entry.sample_id}" + (f" {entry.key}" if entry.key else "") + (
        f" [{entry.label}]" if entry.label is not None else "")
    figures = (_figure(entry.image, name)
               + _neighbour_figure(entry.heldout_neighbour, "nearest held-out")
               + _neighbour_figure(entry.generated_neighbour, "nearest generated"))
    facts = (f"rank {entry.rank} · M = {_fmt(entry.score)}<br>log p in {_fmt(entry.log_p_in)} · "
             f"out {_fmt(entry.log_p_out)}" + (f"<br>ρ = {_fmt(entry.rho)}" if entry.rho is not None else ""))
    return f'<div class="card"><div class="row">{figures}</div><div>{facts}</div></div>'


def _top_section(top: Sequence[SampleEntry]) -> str:
    if not top:
        return ""
    intro = ("<p>Training samples with the highest M: far likelier under models trained with them than "
             "under models that never saw them. Distances are to the nearest neighbour in that set.</p>")
    cards = "".join(_sample_card(entry) for entry in top)
    heading = f"The {len(top)} most-memorized training samples"
    return _section(heading, intro + f'<div class="grid">{cards}</div>', "top")


def _rho_section(data: ReportData) -> str:
    if data.rho is None:
        return ""
    chart = svg.scatter(data.rho.score, data.rho.rho, xlabel="memorization score M (nats)",
                        ylabel="ρ = d(held-out) / d(generated)", title="M versus rho", log_y=True)
    spearman = _fmt(data.rho.spearman)
    caption = (f"<p>Spearman rank correlation between M and ρ: <b>{spearman}</b>. ρ &gt; 1 means the model "
               "reproduces the sample more closely than fresh data does (log scale).</p>")
    return _section("Memorization score versus nearest-neighbour ratio ρ", chart + caption, "rho")


def _epochs_section(data: ReportData) -> str:
    parts = []
    if data.epochs is not None and data.epochs.epochs:
        series = {f"q{label}": values for label, values in data.epochs.quantiles.items()}
        parts.append(svg.line_chart(data.epochs.epochs, series, xlabel="epoch", ylabel="M (nats)",
                                    title="Quantiles of M over training"))
    if data.losses is not None and data.losses.epochs:
        parts.append(svg.line_chart(data.losses.epochs, data.losses.series, xlabel="epoch",
                                    ylabel=data.losses.ylabel, title="Loss curves"))
    return _section("Training dynamics", "".join(parts), "epochs") if parts else ""


def _copied_card(sample: CopiedSample) -> str:
    figures = _figure(sample.image, f"train #{sample.sample_id}")
    distances = list(sample.copy_distances) + [math.nan] * (len(sample.copies) - len(sample.copy_distances))
    for number, (copy, distance) in enumerate(zip(sample.copies, distances, strict=True)):
        figures += _figure(copy, f"copy {number + 1}, d={_fmt(distance)}")
    return (f'<div class="card"><div class="row">{figures}</div>'
            f"<div>{_fmt(sample.copy_count)} generated samples within τ</div></div>")


def _gan_section(gan: GanSection | None) -> str:
    if gan is None:
        return ""
    parts = []
    if gan.tau_sweep:
        rows = "".join(
            f"<tr><td class=\"num\">{_fmt(r.tau)}</td><td class=\"num\">{_fmt(r.rejection_rate)}</td>"
            f"<td class=\"num\">{_fmt(r.c_t)}</td><td class=\"num\">{_fmt(r.frechet)}</td></tr>"
            for r in gan.tau_sweep)
        parts.append("<table><tr><th>τ</th><th>rejection rate</th><th>C<sub>T</sub></th>"
                     f"<th>Fréchet distance</th></tr>{rows}</table>")
        taus = [r.tau for r in gan.tau_sweep]
        parts.append(svg.line_chart(taus, {"C_T": [_nan(r.c_t) for r in gan.tau_sweep]}, xlabel="τ",
                                    ylabel="C_T (≪ 0: copying)", title="C_T versus tau"))
        parts.append(svg.line_chart(taus, {"Fréchet distance": [_nan(r.frechet) for r in gan.tau_sweep]},
                                    xlabel="τ", ylabel="Fréchet distance", title="Quality versus tau"))
    if gan.copied:
        cards = "".join(_copied_card(sample) for sample in gan.copied)
        parts.append(f"<h3>Most-copied training images</h3><div class=\"grid\">{cards}</div>")
    heading = "Memorization-rejection GAN" + (f" (τ = {_fmt(gan.tau)})" if gan.tau is not None else "")
    return _section(heading, "".join(parts), "gan") if parts else ""


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(flatten(value, name + "."))
        else:
            rows.append((name, str(value)))
    return rows


def _params_section(params: Mapping[str, Any]) -> str:
    if not params:
        return ""
    return _section("Parameters", _key_value_table(flatten(params)), "params")
