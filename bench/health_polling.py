"""`/api/health` under 200 concurrent pollers on real PostgreSQL and Redis.

Reports requests per second and p99 from wrk, and the database probes per second that the
polling caused (from `health_check_duration_seconds_count{check="database"}`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from bench.machine import summary, write
from bench.serving import hypercorn, wrk

RUNS = 5
SECONDS = 10
CONNECTIONS = 200
ENV = {
    "DATABASE_URL": os.environ.get(
        "BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    ),
    "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "LOG_LEVEL": "WARNING",
}


def _probes(base_url: str) -> float:
    for line in httpx.get(base_url + "/metrics").text.splitlines():
        if line.startswith('health_check_duration_seconds_count{check="database"}'):
            return float(line.split()[-1])
    return 0.0


def run() -> None:
    runs: dict[str, list[float]] = {"rps": [], "p50_ms": [], "p99_ms": [], "probes_per_s": []}
    non_2xx = 0.0
    with hypercorn("service.asgi:app", ENV) as server:
        base_url = server.url
        wrk(base_url + "/api/health", connections=CONNECTIONS, seconds=3)  # warm-up
        for _ in range(RUNS):
            before, started = _probes(base_url), time.monotonic()
            result = wrk(base_url + "/api/health", connections=CONNECTIONS, seconds=SECONDS)
            elapsed = time.monotonic() - started
            runs["probes_per_s"].append((_probes(base_url) - before) / elapsed)
            for key in ("rps", "p50_ms", "p99_ms"):
                runs[key].append(result[key])
            non_2xx += result["non_2xx"]
    results: dict[str, Any] = {key: summary(values) for key, values in runs.items()}
    results["non_2xx_responses"] = non_2xx
    table = "| measure | median | min–max |\n| --- | --- | --- |\n"
    for key, label in (
        ("rps", "requests/s"),
        ("p50_ms", "p50 latency ms"),
        ("p99_ms", "p99 latency ms"),
        ("probes_per_s", "database probes/s"),
    ):
        row = results[key]
        table += f"| {label} | {row['median']:.2f} | {row['min']:.2f}–{row['max']:.2f} |\n"
    table += f"\nNon-2xx responses over all runs: {int(non_2xx)}.\n"
    write("health", results, table)
