"""Benchmark: concurrent load and a memory soak against the real API (uvicorn) on PostgreSQL.

- load: ``--clients`` (50) concurrent clients for ``--seconds`` (60) s against ``GET /scores?top=100``
  (the caller's latest finished job: a 1M-score job) and ``GET /jobs/{id}``; requests/s, p50/p99
  latency per route, error count.
- soak: ``--soak-seconds`` (600) s of mixed traffic (top-k, job, job list, score pages with cursors,
  sample detail, health) from the same clients; the API process's RSS at the start (after warm-up),
  every minute, and at the end.

PostgreSQL is MEMAUDIT_TEST_DATABASE_URL's or a private one; the API runs as one uvicorn process
(``--api-workers``) and the clients are one asyncio process on the same machine, so on a small box the
figures are a floor set by shared CPU, not the API's ceiling. Prints JSON and a Markdown table.

    .venv/bin/python -m bench.bench_load [--rows 1000000] [--clients 50] [--seconds 60] [--soak-seconds 600]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.migrate import upgrade_to_head
from bench.bench_topk import ingest
from tests.service.harness import wait_for_http
from tests.service.local_services import free_port, private_postgres

REPO = Path(__file__).resolve().parents[1]
KEY = "bench-key"


@dataclass
class Tally:
    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def summary(self, seconds: float) -> dict[str, Any]:
        routes = {}
        for route, values in sorted(self.latencies_ms.items()):
            array = np.asarray(values)
            routes[route] = {
                "requests": int(array.size),
                "rps": round(array.size / seconds, 1),
                "p50_ms": round(float(np.percentile(array, 50)), 2),
                "p99_ms": round(float(np.percentile(array, 99)), 2),
            }
        total = sum(len(values) for values in self.latencies_ms.values())
        return {
            "seconds": round(seconds, 1),
            "requests": total,
            "rps": round(total / seconds, 1),
            "errors": dict(self.errors),
            "error_count": sum(self.errors.values()),
            "routes": routes,
        }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


async def _timed(client: httpx.AsyncClient, tally: Tally, route: str, url: str) -> httpx.Response | None:
    started = time.perf_counter()
    try:
        response = await client.get(url)
    except httpx.HTTPError as error:
        tally.errors[f"{route}: {type(error).__name__}"] += 1
        return None
    if response.status_code != 200:
        tally.errors[f"{route}: {response.status_code}"] += 1
        return response
    tally.latencies_ms[route].append((time.perf_counter() - started) * 1e3)
    return response


async def _load_client(
    client: httpx.AsyncClient, job_id: str, deadline: float, tally: Tally, seed: int
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        if rng.random() < 0.5:
            await _timed(client, tally, "GET /scores?top=100", "/scores?top=100")
        else:
            await _timed(client, tally, "GET /jobs/{id}", f"/jobs/{job_id}")


async def _soak_client(
    client: httpx.AsyncClient, job_id: str, rows: int, deadline: float, tally: Tally, seed: int
) -> None:
    rng = random.Random(seed)
    cursor: str | None = None
    while time.monotonic() < deadline:
        pick = rng.random()
        if pick < 0.3:
            await _timed(client, tally, "GET /scores?top=100", "/scores?top=100")
        elif pick < 0.5:
            await _timed(client, tally, "GET /jobs/{id}", f"/jobs/{job_id}")
        elif pick < 0.6:
            await _timed(client, tally, "GET /jobs", "/jobs?limit=20")
        elif pick < 0.85:
            url = f"/jobs/{job_id}/scores?limit=200" + (f"&cursor={cursor}" if cursor else "")
            response = await _timed(client, tally, "GET /jobs/{id}/scores (keyset)", url)
            cursor = (
                response.json()["next_cursor"]
                if response is not None and response.status_code == 200
                else None
            )
        elif pick < 0.97:
            url = f"/jobs/{job_id}/samples/{rng.randrange(rows)}"
            await _timed(client, tally, "GET /jobs/{id}/samples/{n}", url)
        else:
            await _timed(client, tally, "GET /health", "/health")


async def drive(
    base: str, clients: int, seconds: float, job_id: str, rows: int, soak: bool, api_pid: int
) -> tuple[dict[str, Any], list[tuple[float, float]]]:
    tally, rss, cpu_before = Tally(), [(0.0, rss_mb(api_pid))], cpu_seconds(api_pid)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as client:
        started = time.monotonic()
        deadline = started + seconds
        tasks = [
            asyncio.create_task(
                _soak_client(client, job_id, rows, deadline, tally, seed)
                if soak
                else _load_client(client, job_id, deadline, tally, seed)
            )
            for seed in range(clients)
        ]
        while not all(task.done() for task in tasks):
            await asyncio.sleep(1.0)
            elapsed = time.monotonic() - started
            if soak and elapsed - rss[-1][0] >= 60:
                rss.append((round(elapsed, 1), rss_mb(api_pid)))
        await asyncio.gather(*tasks)
        rss.append((round(time.monotonic() - started, 1), rss_mb(api_pid)))
    summary = tally.summary(time.monotonic() - started)
    # CPU the API spent per answered request: a figure that does not depend on how busy the box was.
    summary["api_cpu_ms_per_request"] = round(
        (cpu_seconds(api_pid) - cpu_before) * 1e3 / max(summary["requests"], 1), 2
    )
    summary["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    return summary, rss


def start_api(env: dict[str, str], port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.api.main:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
        "--timeout-keep-alive",  # as behind a load balancer: the 5 s default races busy keep-alive clients
        "75",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    wait_for_http(f"http://127.0.0.1:{port}/health", timeout_s=60)
    return process


def _own_job(url: str, job_id: str) -> None:
    from sqlalchemy import update

    from app.db import Job, make_engine

    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(owner="bench", progress={"units_done": 1, "units_total": 1}, units_total=1, units_done=1)
        )
    engine.dispose()


def run(args: argparse.Namespace) -> dict[str, Any]:
    with ExitStack() as stack:
        url = os.environ.get("MEMAUDIT_TEST_DATABASE_URL") or stack.enter_context(private_postgres())
        upgrade_to_head(url)
        job_id, ingest_s = ingest(url, args.rows)
        _own_job(url, job_id)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="memaudit-load-")))
        env = {
            "MEMAUDIT_DATABASE_URL": url,
            "MEMAUDIT_DATA_DIR": str(tmp),
            "MEMAUDIT_API_KEYS": f"bench:{KEY}",
            "MEMAUDIT_BROKER_URL": f"sqla+sqlite:///{tmp / 'broker.db'}",
        }
        port = free_port()
        api = start_api(env, port, args.api_workers, tmp / "api.log")
        stack.callback(api.wait, 30)
        stack.callback(api.terminate)
        base = f"http://127.0.0.1:{port}"
        asyncio.run(drive(base, 4, 3, job_id, args.rows, soak=False, api_pid=api.pid))  # warm-up
        report: dict[str, Any] = {
            "machine": f"{platform.node()} {os.cpu_count()} CPU, {platform.platform()}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "rows": args.rows,
            "ingest_seconds": round(ingest_s, 2),
            "clients": args.clients,
            "api_workers": args.api_workers,
        }
        if args.seconds > 0:
            report["load"], _ = asyncio.run(
                drive(base, args.clients, args.seconds, job_id, args.rows, False, api.pid)
            )
        if args.soak_seconds > 0:
            summary, rss = asyncio.run(
                drive(base, args.clients, args.soak_seconds, job_id, args.rows, True, api.pid)
            )
            report["soak"] = {**summary, "rss_mb": rss}
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"{report['date']} · {report['machine']} · {report['rows']:,} scores "
        f"(ingest {report['ingest_seconds']} s)"
        f" · {report['clients']} clients · {report['api_workers']} uvicorn worker(s)",
        "",
        "| phase | route | requests | req/s | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for phase in ("load", "soak"):
        if phase not in report:
            continue
        for route, row in report[phase]["routes"].items():
            lines.append(
                f"| {phase} | `{route}` | {row['requests']} | {row['rps']} | {row['p50_ms']} | "
                f"{row['p99_ms']} |"
            )
        lines.append(
            f"| {phase} | **all** ({report[phase]['seconds']} s) | {report[phase]['requests']} | "
            f"{report[phase]['rps']} | | |"
        )
        lines.append(
            f"\n{phase}: errors = {report[phase]['error_count']} {report[phase]['errors'] or ''}; "
            f"API CPU per request {report[phase]['api_cpu_ms_per_request']} ms; "
            f"load average at the end {report[phase]['load_average_1m_at_end']}\n"
        )
    if "soak" in report:
        trace = ", ".join(f"{t:.0f}s: {mb} MB" for t, mb in report["soak"]["rss_mb"])
        lines.append(f"API RSS during the soak: {trace}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--soak-seconds", type=float, default=600)
    parser.add_argument("--api-workers", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = run(args)
    print(json.dumps(report, indent=2))
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
