"""GET /jobs/{id}/report on the embedded service: a seeded VAE job and a seeded MR-GAN job."""

from __future__ import annotations

import json

import numpy as np
from sqlalchemy import update

from app.db import Job, SampleScore, session_scope
from app.settings import get_settings
from tests.deploy.conftest import OTHER_KEY, EmbeddedApp

SUMMARY = {
    "n_samples": 300, "n_models": 6, "quantiles": {"0.5": 0.9, "0.95": 2.1, "0.999": 3.0},
    "epochs": [{"epoch": 1, "0.5": 0.2, "0.95": 0.8, "0.999": 1.1}, {"epoch": 2, "0.5": 0.4, "0.95": 1.3,
                                                                     "0.999": 2.0}],
    "train_loss": [40.0, 35.0], "heldout_loss": [41.0, 38.0],
}


def test_vae_report_from_the_database(embedded_app: EmbeddedApp) -> None:
    job_id = embedded_app.seed_job(300, summary=SUMMARY)
    response = embedded_app.client.get(f"/jobs/{job_id}/report")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "Histogram of M" in html and "0.95 quantile" in html
    assert html.count('<div class="card">') == 24  # the top 24, with their digits images
    assert html.count("<img ") == 24
    assert "Quantiles of M over training" in html and "Loss curves" in html
    assert "M quantile 0.95" in html and "Memorization score versus" not in html  # no held-out set
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    foreign = embedded_app.client.get(f"/jobs/{job_id}/report", headers=other)
    assert foreign.status_code == 404


def test_vae_report_shows_intervals_confident_samples_and_stability(embedded_app: EmbeddedApp) -> None:
    stability = [{"repetition": 2, "overlap": 0.5}, {"repetition": 3, "overlap": 0.8}]
    summary = {**SUMMARY, "highly_memorized_threshold": 2.0, "confidently_memorized": 7, "repeats_used": 3,
               "repeats_requested": 5, "stability": stability, "stability_top_k": 10}
    job_id = embedded_app.seed_job(300, summary=summary)
    with session_scope() as session:
        session.execute(update(SampleScore).where(SampleScore.job_id == job_id).values(
            score_lo=SampleScore.score - 0.5, score_hi=SampleScore.score + 0.5, score_se=0.3))
    top = embedded_app.client.get("/scores", params={"job_id": job_id, "top": 24}).json()["items"]
    confident = [item["sample_id"] for item in top if item["confident"]]
    assert 0 < len(confident) < 24
    assert all((item["score_lo"] > 2.0) == item["confident"] for item in top)
    html = embedded_app.client.get(f"/jobs/{job_id}/report").text
    section = html[html.index('<section id="uncertainty">'):]
    section = section[:section.index("</section>")]
    assert "the adaptive stop kept 3 of 5" in section
    assert "<b>7</b> samples are confidently memorized" in section
    assert section.count("<tr") == 1 + 24 and section.count("✓ confidently memorized") == len(confident)
    for item in top:
        opening = '<tr class="confident">' if item["confident"] else "<tr>"
        assert f'{opening}<td class="num">{item["rank"]}</td><td>#{item["sample_id"]}</td>' in section
    assert "Ranking stability" in section and "<polyline" in section


def _seed_mrgan(app: EmbeddedApp) -> str:
    units = [
        {"tau": 0.1, "rejection_rate": 0.3, "c_t": -0.5, "frechet_distance": 14.0, "copy_threshold": 0.05},
        {"tau": 0.0, "rejection_rate": 0.0, "c_t": -2.5, "frechet_distance": 12.0, "copy_threshold": 0.05},
    ]
    job_id = app.seed_job(200, summary={"kind": "mrgan", "scores_from_unit": 1, "units": units,
                                        "n_samples": 200, "n_copied": 3})
    counts = {7: 5.0, 3: 2.0, 11: 1.0}
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(kind="mrgan"))
        for sample_id, count in counts.items():
            session.execute(update(SampleScore).where(SampleScore.job_id == job_id,
                                                      SampleScore.sample_id == sample_id)
                            .values(within_tau_count=count, nearest_copy_count=count - 1))
    # The scoring unit's artifact: 8 generated images, the first three copy training sample 7.
    folder = get_settings().resolved_artifacts_dir / job_id
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(folder / "unit-0001.npz", summary_json=np.array(json.dumps(units[1])),
             generated=rng.random((8, 1, 8, 8), dtype=np.float32),
             generated_nearest=np.array([7, 7, 7, 3, 3, 11, 0, 1]),
             generated_distance=np.array([0.03, 0.01, 0.02, 0.04, 0.2, 0.01, 0.5, 0.6]))
    return job_id


def test_mrgan_report_shows_the_tau_sweep_and_copies(embedded_app: EmbeddedApp) -> None:
    job_id = _seed_mrgan(embedded_app)
    html = embedded_app.client.get(f"/jobs/{job_id}/report").text
    assert "Histogram of M" not in html  # GAN scores are copy counts, not M
    rows = html[html.index("<th>τ</th>"):html.index("</table>", html.index("<th>τ</th>"))]
    assert rows.index(">0<") < rows.index(">0.1<") and "-2.5" in rows and "14" in rows
    assert "C_T versus tau" in html and "Most-copied training images" in html
    cards = html.split('<div class="card">')[1:]
    assert len(cards) == 3 and "train #7" in cards[0] and "5 generated samples within τ" in cards[0]
    assert "4 with it as nearest" in cards[0]  # the nearest-credit count, second
    assert cards[0].count("<img ") == 1 + 3 and "copy 1, d=0.01" in cards[0]  # closest copy first
    assert cards[1].count("<img ") == 1 + 1  # sample 3: one copy within the threshold (0.04), not 0.2
