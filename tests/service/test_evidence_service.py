"""Neighbour evidence through the service (SQLite, a real worker): computed by the finishing step, read by
GET /jobs/{id}/samples/{sid}/neighbours and the image routes it links to."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.service.harness import Stack
from tests.service.jobdata import digits_subset, npz_bytes, tiny_job

pytestmark = [pytest.mark.service, pytest.mark.timeout(400)]
PAIR_A, PAIR_B, UNIQUE, HELDOUT_TWIN = 10, 40, 55, 3


def _submit(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    response = stack.client.post("/jobs", json=body)
    assert response.status_code == 202, response.text
    job = stack.wait_for_state(response.headers["Location"])
    assert job["state"] == "succeeded", job
    return job


def _png(stack: Stack, url: str) -> np.ndarray:
    response = stack.client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png", url
    return np.asarray(Image.open(io.BytesIO(response.content)))


@pytest.fixture(scope="module")
def vae_job(sqlite_stack: Stack) -> dict[str, Any]:
    """62 digits with keys: 40 is 10 with one pixel one level brighter, 55 is a blank white image (unique);
    held-out image 3 is 55 one level darker everywhere. At most 100 samples: every one is flagged."""
    train = digits_subset(62)
    train[PAIR_B] = train[PAIR_A]
    train[PAIR_B, 4, 4] = min(int(train[PAIR_A, 4, 4]) + 1, 255) if train[PAIR_A, 4, 4] < 255 else 254
    train[UNIQUE] = 255
    heldout = digits_subset(30, offset=100)
    heldout[HELDOUT_TWIN] = 254
    keys = np.array([f"img-{i:03d}" for i in range(62)])
    planted = npz_bytes(train, keys=keys)
    upload = sqlite_stack.client.post("/datasets", files={"file": ("planted.npz", planted)})
    assert upload.status_code == 201, upload.text
    np.save(sqlite_stack.data_root / "evidence_heldout.npy", heldout, allow_pickle=False)
    body = tiny_job({"id": upload.json()["id"]}, batch_size=16)
    return _submit(sqlite_stack, {**body, "heldout": {"path": "evidence_heldout.npy"}})


def test_planted_pair_and_unique_image_get_their_neighbours(
    sqlite_stack: Stack, vae_job: dict[str, Any]
) -> None:
    job_id = vae_job["id"]
    a = sqlite_stack.client.get(f"/jobs/{job_id}/samples/{PAIR_A}/neighbours")
    assert a.status_code == 200, a.text
    a_body = a.json()
    assert a_body["space"] == "pixels" and a_body["metric"] == "euclidean" and a_body["key"] == "img-010"
    assert a_body["train"][0]["index"] == PAIR_B and len(a_body["train"]) == 3
    nearest = a_body["train"][0]
    assert nearest["key"] == "img-040" and nearest["role"] == "train"
    assert nearest["distance"] == pytest.approx(1 / 255, rel=1e-4)  # one pixel, one level of 255
    assert nearest["image_url"] == f"/jobs/{job_id}/samples/{PAIR_B}/image.png"
    distances = [n["distance"] for n in a_body["train"]]
    assert distances == sorted(distances) and distances[1] > 100 * distances[0]
    b = sqlite_stack.client.get(f"/jobs/{job_id}/samples/{PAIR_B}/neighbours").json()
    assert b["train"][0]["index"] == PAIR_A and b["train"][0]["distance"] == pytest.approx(1 / 255, rel=1e-4)

    unique = sqlite_stack.client.get(f"/jobs/{job_id}/samples/{UNIQUE}/neighbours").json()
    assert PAIR_A not in [n["index"] for n in unique["train"]] and unique["train"][0]["distance"] > 2.0
    assert unique["heldout"]["index"] == HELDOUT_TWIN and unique["heldout"]["role"] == "heldout"
    assert unique["heldout"]["distance"] == pytest.approx(8 / 255, rel=1e-4)  # 64 pixels, one level each
    held = _png(sqlite_stack, unique["heldout"]["image_url"])
    assert held.shape == (8, 8) and (held == 254).all()
    assert (_png(sqlite_stack, unique["image_url"]) == 255).all()
    generated = unique["generated"]  # the fold models' pooled samples
    assert generated is not None and generated["image_url"].startswith(f"/jobs/{job_id}/generated/")
    assert _png(sqlite_stack, generated["image_url"]).shape == (8, 8)
    assert unique["copies"] == [] and unique["copy_threshold"] is None


def test_404s_name_the_problem(sqlite_stack: Stack, vae_job: dict[str, Any]) -> None:
    job_id = vae_job["id"]
    outside = sqlite_stack.client.get(f"/jobs/{job_id}/samples/62/neighbours")
    assert outside.status_code == 404 and "samples 0..61" in outside.text
    unknown = sqlite_stack.client.get("/jobs/no-such-job/samples/0/neighbours")
    assert unknown.status_code == 404
    missing = sqlite_stack.client.get(f"/jobs/{job_id}/heldout/30/image.png")
    assert missing.status_code == 404 and "held-out images 0..29" in missing.text
    too_far = sqlite_stack.client.get(f"/jobs/{job_id}/generated/100000/image.png")
    assert too_far.status_code == 404 and "generated samples 0.." in too_far.text
    queued = sqlite_stack.client.post("/jobs", json=tiny_job({"builtin": "digits"}, epochs=3))
    assert queued.status_code == 202
    early = sqlite_stack.client.get(f"{queued.headers['Location']}/samples/0/neighbours")
    assert early.status_code == 404 and "neighbours are computed when it succeeds" in early.text
    sqlite_stack.client.post(f"{queued.headers['Location']}/cancel")


def test_copy_test_shows_the_generated_samples_that_copy_each_image(sqlite_stack: Stack) -> None:
    root = sqlite_stack.data_root
    train, test = digits_subset(300), digits_subset(200, offset=300)
    copies = np.concatenate([np.repeat(train[:30], 3, axis=0), digits_subset(110, offset=500)])  # (200, 8, 8)
    for name, images in (("ev_train.npy", train), ("ev_test.npy", test), ("ev_copies.npy", copies)):
        np.save(root / name, images, allow_pickle=False)
    job = _submit(sqlite_stack, {
        "kind": "copy_test", "dataset": {"path": "ev_train.npy"}, "heldout": {"path": "ev_test.npy"},
        "generated": {"path": "ev_copies.npy"}, "copy_test": {"cells": 2},
    })  # fmt: skip
    seven = sqlite_stack.client.get(f"/jobs/{job['id']}/samples/7/neighbours").json()
    assert [c["index"] for c in seven["copies"]] == [21, 22, 23]  # np.repeat: sample i -> 3i, 3i+1, 3i+2
    assert all(c["distance"] == 0.0 and c["role"] == "generated" for c in seven["copies"])
    assert seven["copies_space"] == "pixels, euclidean" and seven["copy_threshold"] > 0
    assert (_png(sqlite_stack, seven["copies"][0]["image_url"]) == train[7]).all()
    assert seven["heldout"] is not None and seven["generated"] is None
    report = sqlite_stack.client.get(f"/jobs/{job['id']}/report").text
    rows = report[report.index('<section id="evidence">'):].split('<div class="card evidence-row">')[1:]
    seventh = next(row for row in rows if "train #7 · score" in row)  # copied images tie: id order
    assert [f"copy: generated #{g}" in seventh for g in (21, 22, 23)] == [True] * 3
    assert seventh.count('<figure class="copy"><img ') == 3 and seventh.count("d = 0</b>") == 3
    lowest = sqlite_stack.client.get(f"/jobs/{job['id']}/scores", params={"sort": "score_asc", "limit": 1})
    sample_id = lowest.json()["items"][0]["sample_id"]
    unflagged = sqlite_stack.client.get(f"/jobs/{job['id']}/samples/{sample_id}/neighbours")
    assert unflagged.status_code == 404 and "not among the 100 flagged samples" in unflagged.text


PANEL_PROBE = """<script>
window.addEventListener("load", function () {
  var panel = document.getElementById("evidence");
  var box = panel.getBoundingClientRect();
  var images = Array.prototype.slice.call(panel.querySelectorAll("img"));
  var sizes = images.map(function (i) {
    var r = i.getBoundingClientRect();
    return Math.round(r.width) + "x" + Math.round(r.height) + (i.complete && i.naturalWidth > 0 ? "" : "!");
  });
  var first = images[0].getBoundingClientRect();
  var distances = Array.prototype.slice.call(panel.querySelectorAll("b.d")).map(function (b) {
    return b.textContent + "@" + getComputedStyle(b).fontSize;
  });
  document.body.setAttribute("data-panel", JSON.stringify({top: box.top + window.scrollY,
    height: box.height, visible: getComputedStyle(panel).display !== "none", sizes: sizes,
    first: [first.left, first.top + window.scrollY, first.width, first.height], distances: distances}));
});
</script>"""


def test_report_shows_the_evidence_panel_readably_in_chromium(
    sqlite_stack: Stack, vae_job: dict[str, Any], tmp_path: Path
) -> None:
    """Real headless Chromium: the panel is laid out, its images decode at 96x96 CSS pixels, every
    distance is text of a readable size, and the screenshot shows the flagged image where the DOM says."""
    from tests.deploy.chromium import chromium_or_skip, console_messages, run_chromium

    binary = chromium_or_skip()
    html = sqlite_stack.client.get(f"/jobs/{vae_job['id']}/report").text
    assert '<section id="evidence">' in html and "Nearest-neighbour evidence" in html
    top = sqlite_stack.client.get("/scores", params={"job_id": vae_job["id"], "top": 1}).json()["items"][0]
    first_row = sqlite_stack.client.get(f"/jobs/{vae_job['id']}/samples/{top['sample_id']}/neighbours").json()
    assert first_row["flagged_rank"] == 1
    page = tmp_path / "report.html"
    page.write_text(html)
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';", 1)
                     .replace("</body>", PANEL_PROBE + "</body>", 1))  # fmt: skip
    dumped = run_chromium(binary, probe, tmp_path / "profile-probe", "--dump-dom", "--window-size=1200,900",
                          "--virtual-time-budget=5000")  # fmt: skip
    assert dumped.returncode == 0 and not console_messages(dumped.stderr), dumped.stderr[-2000:]
    match = re.search(r'data-panel="([^"]*)"', dumped.stdout)
    assert match, "the page never fired its load event"
    panel = json.loads(match.group(1).replace("&quot;", '"'))
    assert panel["visible"] and panel["height"] > 200
    assert len(panel["sizes"]) >= 12 * 4 and set(panel["sizes"]) == {"96x96"}, panel["sizes"]  # all decoded
    texts = [d.split("@") for d in panel["distances"]]
    assert all(text.startswith("d = ") and float(size.removesuffix("px")) >= 11 for text, size in texts)
    shown = [float(text.removeprefix("d = ")) for text, _ in texts]
    expected = [n["distance"] for n in first_row["train"]] + [first_row["heldout"]["distance"]]
    assert shown[:4] == pytest.approx(expected, rel=1e-2)  # the first row: 3 training, then held-out

    shot_path = tmp_path / "report.png"
    height = int(panel["top"] + panel["height"]) + 50
    shot = run_chromium(binary, page, tmp_path / "profile-shot", f"--screenshot={shot_path}",
                        f"--window-size=1200,{height}")  # fmt: skip
    assert shot.returncode == 0 and not console_messages(shot.stderr), shot.stderr[-2000:]
    pixels = np.asarray(Image.open(shot_path).convert("RGB")).astype(int)
    left, top, width, size = (round(v) for v in panel["first"])
    first = pixels[top:top + size, left:left + width]
    assert first.shape[:2] == (96, 96) and first.std() > 20, "the flagged image is not drawn where laid out"
    ring = pixels[top - 3:top - 1, left:left + width]  # the red outline of the flagged image
    assert (np.abs(ring - np.array([0xD1, 0x49, 0x5B])).sum(axis=2) < 60).mean() > 0.8


def test_mrgan_copies_are_in_its_cosine_feature_space(sqlite_stack: Stack) -> None:
    job = _submit(sqlite_stack, {
        "kind": "mrgan", "dataset": {"builtin": "digits:train"}, "heldout": {"builtin": "digits:test"},
        "mrgan": {"taus": [0.0], "tau_quantiles": [], "steps": 20, "width": 32, "n_generated": 300,
                  "cells": 2},
    })  # fmt: skip
    top = sqlite_stack.client.get("/scores", params={"job_id": job["id"], "top": 1}).json()["items"][0]
    found = sqlite_stack.client.get(f"/jobs/{job['id']}/samples/{top['sample_id']}/neighbours").json()
    assert found["copies_space"] == "pixels, cosine" and found["space"] == "pixels"
    threshold = job["summary"]["units"][0]["copy_threshold"]
    assert found["copy_threshold"] == pytest.approx(threshold)
    assert len(found["copies"]) == min(8, int(top["nearest_copy_count"]))  # copies credit the nearest
    assert all(c["distance"] <= threshold for c in found["copies"])
    for copy in found["copies"][:1]:
        assert _png(sqlite_stack, copy["image_url"]).shape == (8, 8)


def test_the_report_keeps_showing_the_jobs_held_out_images_after_the_file_changes(
    sqlite_stack: Stack, vae_job: dict[str, Any]
) -> None:
    """The finishing step kept a display copy named by the recorded content identity (last in this module:
    it replaces the held-out file)."""
    copies = list((sqlite_stack.data_dir / "stores" / "pixels").glob("*.npy"))
    assert len(copies) >= 2  # the uploaded training set and the held-out file
    replaced = digits_subset(30, offset=400)
    np.save(sqlite_stack.data_root / "evidence_heldout.npy", replaced, allow_pickle=False)
    held = _png(sqlite_stack, f"/jobs/{vae_job['id']}/heldout/{HELDOUT_TWIN}/image.png")
    assert (held == 254).all()
