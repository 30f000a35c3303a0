"""The signed-in read (`GET /api/auth/me` with the cookie a real login gave) against the original
design, at 1 and 64 connections, with 1 and 2 workers each (`BENCH_WORKERS`, default both).

Each server pinned to core 0 (with 2 workers, both on core 0: the ratio is per core), wrk on core
1, real PostgreSQL and Redis, production settings, `LOG_LEVEL=INFO`; 5 rounds of 5 s interleaved
after a warm-up. The service also runs with request observability off, for its share of the CPU
on this request (issue 33, target 3).
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Any

from bench.compare import (
    _drain,
    _prepare_database,
    _service_env,
    _signed_in_script,
    _summarise,
)
from bench.machine import summary, write
from bench.serving import gunicorn, hypercorn, wrk

ROUNDS = 5
SECONDS = 5
CONCURRENCY = (1, 64)
SERVERS = ("service", "service-off", "flask")


def run() -> None:
    database_url = _prepare_database()
    common = _service_env(database_url)
    worker_counts = [int(n) for n in os.environ.get("BENCH_WORKERS", "1,2").split(",")]
    results: dict[str, Any] = {}
    for workers in worker_counts:
        with ExitStack() as stack:
            servers = {
                "service": stack.enter_context(
                    hypercorn("service.asgi:app", common, workers=workers)
                ),
                "service-off": stack.enter_context(
                    hypercorn(
                        "service.asgi:app",
                        {**common, "REQUEST_OBSERVABILITY": "false"},
                        workers=workers,
                    )
                ),
                "flask": stack.enter_context(
                    gunicorn("bench.reference_flask.app:app", common, workers=workers)
                ),
            }
            scripts = {
                name: stack.enter_context(_signed_in_script(server.url))
                for name, server in servers.items()
            }
            for connections in CONCURRENCY:
                key = f"workers_{workers}_c{connections}"
                results[key] = _measure(servers, scripts, connections)
                print(key, _line(results[key]), flush=True)
    write("signed_in", results, _table(results))


def _measure(servers: dict[str, Any], scripts: dict[str, Any], connections: int) -> dict[str, Any]:
    path = "/api/auth/me"
    for name in SERVERS:
        wrk(servers[name].url + path, connections=connections, seconds=2, script=scripts[name])
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SERVERS}
    for _ in range(ROUNDS):
        for name in SERVERS:
            runs[name].append(
                wrk(servers[name].url + path, connections=connections, seconds=SECONDS,
                    script=scripts[name], server=servers[name])
            )  # fmt: skip
            _drain(servers[name].url)
    service, flask, off = runs["service"], runs["flask"], runs["service-off"]
    return {
        **{name: _summarise(runs[name]) for name in SERVERS},
        "ratio_to_flask": summary(
            [s["rps"] / f["rps"] for s, f in zip(service, flask, strict=True)]
        ),
        "observability_cpu_percent": summary(
            [
                (a["cpu_us_per_request"] / b["cpu_us_per_request"] - 1) * 100
                for a, b in zip(service, off, strict=True)
            ]
        ),
    }


def _line(result: dict[str, Any]) -> str:
    return (
        f"ratio {result['ratio_to_flask']['median']:.2f}x, service "
        f"{result['service']['rps']['median']:.0f} req/s "
        f"{result['service']['cpu_us_per_request']['median']:.0f} us, flask "
        f"{result['flask']['rps']['median']:.0f} req/s "
        f"{result['flask']['cpu_us_per_request']['median']:.0f} us, observability "
        f"{result['observability_cpu_percent']['median']:+.1f} %"
    )


def _table(results: dict[str, Any]) -> str:
    lines = [
        "| workers | connections | server | req/s | CPU µs/req | p99 ms | service ÷ flask |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, result in results.items():
        workers, connections = key.removeprefix("workers_").split("_c")
        for name in SERVERS:
            row = result[name]
            ratio = f"{result['ratio_to_flask']['median']:.2f}×" if name == "service" else ""
            lines.append(
                f"| {workers} | {connections} | {name} | {row['rps']['median']:.0f} | "
                f"{row['cpu_us_per_request']['median']:.0f} | {row['p99_ms']['median']:.2f} | "
                f"{ratio} |"
            )
        lines.append(
            f"| {workers} | {connections} | observability's CPU share | | "
            f"{result['observability_cpu_percent']['median']:+.1f} % | | |"
        )
    return "\n".join(lines) + "\n"
