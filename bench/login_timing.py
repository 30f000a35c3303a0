"""Does the time of a failed login tell whether the username exists?

One worker of the service in production mode (pinned to core 0) on real PostgreSQL and Redis;
one client on core 1 sends wrong-password logins one at a time over one keep-alive connection,
alternating an existing username and a never-seen one (a new name each time, as an attacker
probing names would), after a warm-up. Reports the median and p90 of each side and how far the
medians differ (target: under 10 %).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from typing import Any

import httpx

from bench.compare import _prepare_database, _service_env
from bench.machine import write
from bench.serving import LOAD_CPU, hypercorn

ROUNDS = 60
WARM_UP = 5
TARGET_PERCENT = 10.0


def run() -> None:
    database_url = _prepare_database()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    with (
        hypercorn("service.asgi:app", _service_env(database_url)) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        for _ in range(WARM_UP):
            _failed_login(client, "bench")
            _failed_login(client, _unknown_name())
        existing, unknown = [], []
        for _ in range(ROUNDS):
            existing.append(_failed_login(client, "bench"))
            unknown.append(_failed_login(client, _unknown_name()))
    results = {"existing_user": _describe(existing), "unknown_user": _describe(unknown)}
    medians = results["existing_user"]["median_ms"], results["unknown_user"]["median_ms"]
    results["median_difference_percent"] = abs(medians[0] - medians[1]) / max(medians) * 100
    results["target_percent"] = TARGET_PERCENT
    write("login_timing", results, _table(results))


def _failed_login(client: httpx.Client, username: str) -> float:
    body = {"username": username, "password": "a wrong password"}
    started = time.perf_counter()
    response = client.post("/api/auth/login", json=body)
    elapsed = time.perf_counter() - started
    if response.status_code != 401:
        raise SystemExit(f"expected 401, got {response.status_code}: {response.text}")
    return elapsed * 1000


def _unknown_name() -> str:
    return "nobody-" + uuid.uuid4().hex[:12]


def _describe(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered),
        "p90_ms": ordered[int(0.9 * (len(ordered) - 1))],
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
        "logins": len(ordered),
    }


def _table(results: dict[str, Any]) -> str:
    lines = [
        "| failed login (wrong password) | logins | median ms | p90 ms | min ms | max ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in (("existing_user", "existing username"), ("unknown_user", "unknown")):
        row = results[key]
        lines.append(
            f"| {label} | {row['logins']} | {row['median_ms']:.1f} | {row['p90_ms']:.1f} "
            f"| {row['min_ms']:.1f} | {row['max_ms']:.1f} |"
        )
    verdict = "met" if results["median_difference_percent"] < TARGET_PERCENT else "missed"
    lines.append("")
    lines.append(
        f"Medians differ by {results['median_difference_percent']:.1f} % "
        f"(target under {TARGET_PERCENT:.0f} %: {verdict})."
    )
    return "\n".join(lines) + "\n"
