"""A realistic ReportData built from sklearn digits (offline), for the report tests."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from app.lifecycle import JobState
from app.reports import (
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


def digits_images() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().images / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]


def vae_report(n_top: int = 12, title: str = "Audit of digits") -> ReportData:
    images = digits_images()
    rng = np.random.default_rng(0)
    n = images.shape[0]
    scores = rng.gamma(2.0, 0.4, size=n)
    scores[:3] = np.nan  # samples without an out-model yet
    rho = np.exp(0.3 * np.nan_to_num(scores) + rng.normal(0, 0.5, size=n))
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf))
    top = [
        SampleEntry(
            sample_id=int(i), rank=rank + 1, score=float(scores[i]), log_p_in=-20.0 + float(scores[i]),
            log_p_out=-20.0, image=images[i], rho=float(rho[i]),
            heldout_neighbour=Neighbour(images[(i + 7) % n], 2.5, int((i + 7) % n)),
            generated_neighbour=Neighbour(images[(i + 11) % n], 1.25, int(rank)),
        )
        for rank, i in enumerate(order[:n_top])
    ]
    finite = np.isfinite(scores)
    spearman = float(spearmanr(scores[finite], rho[finite]).statistic)
    epochs = [10, 20, 30, 40]
    return ReportData(
        job_id="3f0c6d1e-0000-4000-8000-000000000001", title=title, kind="vae_audit",
        state=JobState.SUCCEEDED,
        generated_at="2026-11-23T05:00:00Z",
        params={"dataset": {"builtin": "digits"}, "audit": {"folds": 5, "repeats": 2},
                "training": {"epochs": 40}},
        summary={"q0.5": float(np.nanquantile(scores, 0.5)), "q0.95": float(np.nanquantile(scores, 0.95))},
        scores=scores, top=top, rho=RhoScatter(score=scores, rho=rho, spearman=spearman),
        epochs=EpochQuantiles(epochs, {"0.95": [0.5, 0.9, 1.2, 1.4], "0.999": [1.0, 2.0, 2.6, 3.0]}),
        losses=LossCurves(epochs, {"train": [30.0, 25.0, 22.0, 21.0], "held-out": [31.0, 27.0, 26.0, 26.5]}),
    )


def gan_report() -> ReportData:
    images = digits_images()
    sweep = [TauRow(0.0, 0.0, -3.1, 12.0), TauRow(0.05, 0.08, -1.2, 12.8), TauRow(0.1, 0.21, 0.3, 15.5)]
    copied = [
        CopiedSample(sample_id=i, copy_count=float(9 - i), image=images[i],
                     copies=[images[i + 100], images[i + 200]], copy_distances=[0.01, 0.02])
        for i in range(4)
    ]
    return ReportData(
        job_id="gan-1", title="MR-GAN on digits", kind="gan", state=JobState.SUCCEEDED,
        generated_at="2026-11-23T05:00:00Z", params={"gan": {"tau": 0.05}},
        gan=GanSection(tau_sweep=sweep, copied=copied, tau=0.05),
    )
