"""`memaudit demo`: start the embedded service, audit the bundled digits, print the top samples.

Everything real: the API in a `memaudit serve` subprocess (SQLite DB, SQLite broker, a Celery
worker), a job submitted over HTTP, polled to success, and the scores read back over HTTP. The
default configuration is small (K=5 folds x L=2 repetitions of a small MLP VAE on 1797 8x8
digits) so that it finishes in a few minutes on 2 CPU cores; it is a demonstration, not the
paper's setting (K=L=10, 100 epochs).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from typing import Any

import httpx

from app.lifecycle import JOB_TERMINAL, JobState

DEMO_EPOCHS = 30
POLL_S = 2.0
PRINT_EVERY_S = 15.0
START_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 3600.0
SHADES = " .:-=+*#%@"


def demo_job(epochs: int) -> dict[str, Any]:
    return {
        "dataset": {"builtin": "digits"},
        "model": {"arch": "mlp", "hidden": [128, 64], "latent": 8, "likelihood": "bernoulli"},
        "training": {"epochs": epochs, "lr": 1e-3, "batch_size": 64},
        # Two units of 5 models: after the first (a whole repetition) provisional scores appear.
        "audit": {"folds": 5, "repeats": 2, "is_samples": 64, "seed": 0, "models_per_unit": 5},
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(client: httpx.Client, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not healthy after {START_TIMEOUT_S:.0f}s")


def _poll(client: httpx.Client, job_url: str) -> dict[str, Any]:
    deadline, last_key, last_print = time.monotonic() + JOB_TIMEOUT_S, None, 0.0
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(job_url).raise_for_status().json()
        progress = job["progress"]
        key = (job["state"], progress["units_done"], progress["units_total"], job["scores"]["provisional"])
        if key != last_key or time.monotonic() - last_print > PRINT_EVERY_S:
            print(f"  {job['state']:<10} units {progress['units_done']}/{progress['units_total']}"
                  f"  epoch {progress.get('epoch') or '-'}/{progress.get('epochs') or '-'}"
                  + ("  (provisional scores available)" if job["scores"]["provisional"] else ""), flush=True)
            last_key, last_print = key, time.monotonic()
        if job["state"] in JOB_TERMINAL:
            return job
        time.sleep(POLL_S)
    raise RuntimeError(f"the job did not finish within {JOB_TIMEOUT_S:.0f}s")


def _ascii_digit(png: bytes) -> list[str]:
    import io

    from PIL import Image

    pixels = list(Image.open(io.BytesIO(png)).convert("L").getdata())
    side = int(len(pixels) ** 0.5)
    return ["".join(SHADES[p * (len(SHADES) - 1) // 255] * 2 for p in pixels[r * side:(r + 1) * side])
            for r in range(side)]


def _print_top(client: httpx.Client, job: dict[str, Any], top: int) -> None:
    scores = client.get("/scores", params={"top": top, "job_id": job["id"]}).raise_for_status().json()
    quantiles = job["summary"]["quantiles"]
    print(f"\nmemorization score M (nats): median {quantiles['0.5']:.3f}, "
          f"0.95-quantile {quantiles['0.95']:.3f}, 0.999-quantile {quantiles['0.999']:.3f}")
    print(f"\n{'rank':>4} {'sample':>6} {'M':>8} {'log p in':>9} {'log p out':>9}")
    for item in scores["items"]:
        print(f"{item['rank']:>4} {item['sample_id']:>6} {item['score']:>8.3f} {item['log_p_in']:>9.2f} "
              f"{item['log_p_out']:>9.2f}")
    print("\nthe three most memorized digits:")
    pictures = [_ascii_digit(client.get(item["image_url"]).raise_for_status().content)
                for item in scores["items"][:3]]
    for rows in zip(*pictures, strict=True):
        print("   ".join(rows))


def run_demo(epochs: int | None, top: int) -> int:
    port, token = _free_port(), secrets.token_urlsafe(24)
    # A key of its own: works whether or not the caller's environment or DB already configures keys.
    keys = ",".join(filter(None, [os.environ.get("MEMAUDIT_API_KEYS", ""), f"demo:{token}"]))
    env = {**os.environ, "MEMAUDIT_PORT": str(port), "MEMAUDIT_HOST": "127.0.0.1", "MEMAUDIT_API_KEYS": keys}
    log_path = os.path.join(os.environ.get("MEMAUDIT_DATA_DIR", "./memaudit-data"), "demo-server.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab") as log_file:
        server = subprocess.Popen([sys.executable, "-m", "app", "serve"], env=env, stdout=log_file,
                                  stderr=subprocess.STDOUT)
    print(f"memaudit demo: embedded service on http://127.0.0.1:{port} (log: {log_path})")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            _wait_healthy(client, server)
            body = demo_job(epochs or DEMO_EPOCHS)
            created = client.post("/jobs", json=body).raise_for_status().json()
            print(f"job {created['id']}: auditing digits (1797 images), K=5 folds x L=2 repetitions, "
                  f"{body['training']['epochs']} epochs")
            job = _poll(client, created["url"])
            if job["state"] != JobState.SUCCEEDED:
                print(f"job {job['state']}: {job.get('error')}", file=sys.stderr)
                return 1
            _print_top(client, job, top)
            print(f"\nthe job stays in {os.environ.get('MEMAUDIT_DATA_DIR', './memaudit-data')}: run "
                  f"`memaudit serve` and GET /jobs/{job['id']}/scores to page through every sample")
        return 0
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
