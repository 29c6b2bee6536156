"""The HTML report: pure rendering checks, then a real headless Chromium renders it."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.lifecycle import JobState
from app.reports import ReportData, render_report
from app.reports.svg import nice_ticks
from tests.deploy.chromium import (
    chromium_or_skip,
    console_messages,
    probe_copy,
    probe_result,
    run_chromium,
)
from tests.deploy.report_data import gan_report, vae_report

DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def vae_html() -> str:
    return render_report(vae_report())


def test_rendering_is_pure_and_self_contained(vae_html: str) -> None:
    assert render_report(vae_report()) == vae_html
    assert "<script" not in vae_html.lower()
    text = DATA_URI.sub("", vae_html).replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert not re.search(r"(https?:)?//[a-z0-9]", text, flags=re.IGNORECASE)
    assert "href=" not in text and "url(" not in text and "src=" not in text
    assert "Content-Security-Policy" in vae_html


def test_every_image_is_an_inline_png(vae_html: str) -> None:
    payloads = DATA_URI.findall(vae_html)
    # 12 cards x (training image + nearest held-out + nearest generated)
    assert len(payloads) == 36
    assert len(payloads) == vae_html.count("<img ")
    for payload in payloads[:3]:
        picture = Image.open(io.BytesIO(base64.b64decode(payload)))
        assert picture.format == "PNG" and picture.size[0] >= 64


def test_histogram_marks_the_095_quantile_of_finite_scores(vae_html: str) -> None:
    scores = vae_report().scores
    assert scores is not None
    expected = float(np.quantile(scores[np.isfinite(scores)], 0.95))
    assert f"0.95 quantile = {expected:.4g}" in vae_html
    above = int(np.sum(scores[np.isfinite(scores)] > expected))
    assert f"{above} lie above the 0.95 quantile" in vae_html
    assert "3 samples have no score yet" in vae_html


def test_sections_for_rho_epochs_and_gan() -> None:
    report = vae_report()
    html = render_report(report)
    assert report.rho is not None and report.rho.spearman is not None
    assert f"<b>{report.rho.spearman:.4g}</b>" in html
    assert "Quantiles of M over training" in html and "Loss curves" in html
    assert "q0.999" in html
    gan_html = render_report(gan_report())
    assert "C_T versus tau" in gan_html and "Most-copied training images" in gan_html
    assert gan_html.count("generated samples within τ") == 4
    assert "Histogram of M" not in gan_html  # no scores: no empty chart


def test_user_text_is_escaped() -> None:
    hostile = render_report(vae_report(title='<script>alert("x")</script>'))
    assert "<script" not in hostile and "&lt;script&gt;" in hostile


def test_empty_report_still_renders() -> None:
    html = render_report(ReportData(job_id="j", title="queued job", kind="vae_audit", state=JobState.QUEUED,
                                    generated_at="2026-01-01T00:00:00Z", provisional=True))
    assert "queued job" in html and "Provisional scores" in html


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (-3.2, 17.9), (0.013, 0.0171), (5.0, 5000.0)])
def test_nice_ticks_cover_the_range_with_round_steps(low: float, high: float) -> None:
    ticks = nice_ticks(low, high)
    assert 2 <= len(ticks) <= 11
    assert all(low - 1e-12 <= t <= high + 1e-12 for t in ticks)
    steps = np.diff(ticks)
    assert np.allclose(steps, steps[0])
    mantissa = steps[0] / 10 ** np.floor(np.log10(steps[0]))
    assert any(np.isclose(mantissa, m) for m in (1, 2, 2.5, 5))


@pytest.mark.parametrize("kind", ["vae", "gan"])
def test_report_renders_in_headless_chromium(kind: str, tmp_path: Path) -> None:
    binary = chromium_or_skip()
    html = render_report(vae_report() if kind == "vae" else gan_report())
    page = tmp_path / "report.html"
    page.write_text(html)
    screenshot = tmp_path / f"report-{kind}.png"
    shot = run_chromium(binary, page, tmp_path / "profile-shot", f"--screenshot={screenshot}",
                        "--window-size=1200,2400")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert not console_messages(shot.stderr), console_messages(shot.stderr)
    picture = Image.open(screenshot).convert("L")
    assert picture.size == (1200, 2400)
    assert np.asarray(picture).std() > 10, "the screenshot is blank"

    probed = run_chromium(binary, probe_copy(html, tmp_path / "probe.html"), tmp_path / "profile-probe",
                          "--dump-dom", "--virtual-time-budget=5000")
    assert probed.returncode == 0, probed.stderr[-2000:]
    assert not console_messages(probed.stderr), console_messages(probed.stderr)
    result = probe_result(probed.stdout)
    assert result["images"] == html.count("<img ") > 0
    assert result["loaded"] == result["images"], result
    assert result["charts"] == html.count('<svg class="chart"') > 0


def _class_report() -> ReportData:
    """Digits scores (planted: class 7 memorized more) summarised per label by models.per_class."""
    from app.reports import ClassRow
    from models.per_class import high_threshold, per_class
    from tests.deploy.report_data import digits_images

    count = len(digits_images())
    rng = np.random.default_rng(1)
    labels = [str(i % 10) for i in range(count)]
    scores = rng.normal(0.0, 0.5, size=count) + np.array([1.5 if label == "7" else 0.0 for label in labels])
    threshold = high_threshold(scores)
    rows = [ClassRow(label=r["label"], count=r["count"], median=r["median"], q95=r["q95"],
                     n_above_threshold=r["n_above_threshold"]) for r in per_class(scores, labels, threshold)]
    return ReportData(job_id="j", title="per class", kind="vae_audit", state=JobState.SUCCEEDED,
                      generated_at="2026-12-02T00:00:00Z", classes=rows, class_threshold=threshold)


def test_per_class_section_lists_every_label_with_its_counts() -> None:
    data = _class_report()
    html = render_report(data)
    assert "Memorization per class" in html and html.count('<svg class="chart"') == 1
    assert [row.label for row in data.classes] == [str(i) for i in range(10)]  # numeric order
    seven = data.classes[7]
    assert seven.n_above_threshold == max(row.n_above_threshold for row in data.classes) > 0
    assert f"<td>7</td><td class=\"num\">{seven.count}</td>" in html
    assert html.count('<rect class="bar"') == 10


def test_per_class_plot_renders_in_headless_chromium(tmp_path: Path) -> None:
    """Chromium draws one bar per class: count the blue columns of the screenshot."""
    binary = chromium_or_skip()
    html = render_report(_class_report())
    page = tmp_path / "classes.html"
    page.write_text(html)
    screenshot = tmp_path / "classes.png"
    shot = run_chromium(binary, page, tmp_path / "profile", f"--screenshot={screenshot}",
                        "--window-size=900,900")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert not console_messages(shot.stderr), console_messages(shot.stderr)
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    blue = (np.abs(pixels - np.array([0x1F, 0x6F, 0xEB])).sum(axis=2) < 60)  # svg .bar fill
    columns = blue.any(axis=0)
    runs = int(np.sum(columns[1:] & ~columns[:-1]) + columns[0])
    assert runs == 10, runs
    probed = run_chromium(binary, probe_copy(html, tmp_path / "probe.html"), tmp_path / "profile-probe",
                          "--dump-dom", "--virtual-time-budget=5000")
    assert probe_result(probed.stdout)["charts"] == 1
