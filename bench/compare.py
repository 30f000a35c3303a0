"""Observability overhead and the async rewrite against the original design, in one run.

Four servers, each one worker pinned to core 0, wrk on core 1, all on loopback:
- `ceiling`: a bare Quart app (bench/ceiling_app.py) with the service's trivial `GET /`;
- `service`: the service, production settings, request observability on;
- `service-off`: the same with `REQUEST_OBSERVABILITY=false`;
- `flask`: the original design (bench/reference_flask), gunicorn with one sync worker.
Part 1 (`GET /`, 64 connections) and part 2 (`/api/health`, a login and a signed-in
`GET /api/auth/me` with the session cookie each server's login gave, at 1, 16 and 64
connections, service against flask) repeat every measurement 5 times, interleaved A/B/A/B, after a
warm-up, on real PostgreSQL (a `scene_packer_bench` database, migrated) and Redis.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from argon2 import PasswordHasher

from bench.machine import spread, summary, write
from bench.serving import ROOT, Server, gunicorn, hypercorn, wrk

ROUNDS = 5
TRIVIAL_SERVERS = ("ceiling", "service", "service-off", "service+accesslog")
TRIVIAL_ROUNDS = 9  # the trivial endpoint's differences are small: more rounds
SECONDS = 6
COMPARE_SECONDS = 5
LOGIN_SECONDS = 10  # a login costs an argon2 hash (tens of ms): longer runs for enough samples
CONCURRENCY = (1, 16, 64)
ADMIN_DSN = os.environ.get("BENCH_POSTGRES_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "scene_packer_bench"
PASSWORD = "bench-password-123"


def run() -> None:
    database_url = _prepare_database()
    common = _service_env(database_url)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            f'wrk.body = \'{{"username": "bench", "password": "{PASSWORD}"}}\'\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    login_script = Path(script.name)
    results: dict[str, Any] = {}
    try:
        with ExitStack() as stack:
            servers = {
                "ceiling": stack.enter_context(
                    hypercorn("bench.ceiling_app:app", {}, ready_path="/")
                ),
                "service": stack.enter_context(hypercorn("service.asgi:app", common)),
                "service-off": stack.enter_context(
                    hypercorn("service.asgi:app", {**common, "REQUEST_OBSERVABILITY": "false"})
                ),
                "flask": stack.enter_context(gunicorn("bench.reference_flask.app:app", common)),
            }
            results["trivial"] = _trivial(servers)
            print(_table({"trivial": results["trivial"], "versus_flask": {}}), flush=True)
            results["versus_flask"] = _versus_flask(servers, login_script)
    finally:
        login_script.unlink()
    write("compare", results, _table(results))


def run_overhead() -> None:
    """Part 1 alone (ceiling, observability on and off), written to results/overhead.*."""
    database_url = _prepare_database()
    common = _service_env(database_url)
    with ExitStack() as stack:
        servers = {
            "ceiling": stack.enter_context(hypercorn("bench.ceiling_app:app", {}, ready_path="/")),
            "service": stack.enter_context(hypercorn("service.asgi:app", common)),
            "service-off": stack.enter_context(
                hypercorn("service.asgi:app", {**common, "REQUEST_OBSERVABILITY": "false"})
            ),
            # What hypercorn's own access log (off in hypercorn.toml) would add per request.
            "service+accesslog": stack.enter_context(
                hypercorn("service.asgi:app", common, config={"accesslog": "-"})
            ),
        }
        results = {"trivial": _trivial(servers), "versus_flask": {}}
    write("overhead", results, _table(results).split("\n\nAgainst")[0] + "\n")


def _service_env(database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "ENVIRONMENT": "production",
        "SECRET_KEY": "bench-secret-key-bench-secret-key-0123456789",
        "LOG_LEVEL": "INFO",
        "LOGIN_LIMIT_PER_IP": "1000000000",
        "LOGIN_LIMIT_PER_USERNAME": "1000000000",
    }


def _trivial(servers: dict[str, Server]) -> dict[str, Any]:
    names = [name for name in TRIVIAL_SERVERS if name in servers]
    for name in names:
        wrk(servers[name].url + "/", connections=64, seconds=3)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for _ in range(TRIVIAL_ROUNDS):
        for name in names:
            server = servers[name]
            runs[name].append(wrk(server.url + "/", connections=64, seconds=SECONDS, server=server))
    out: dict[str, Any] = {name: _summarise(runs[name]) for name in names}
    on, off = runs["service"], runs["service-off"]
    out["rps_loss_percent"] = summary(
        [(1 - a["rps"] / b["rps"]) * 100 for a, b in zip(on, off, strict=True)]
    )
    out["p99_increase_percent"] = summary(
        [(a["p99_ms"] / b["p99_ms"] - 1) * 100 for a, b in zip(on, off, strict=True)]
    )
    out["cpu_increase_percent"] = summary(
        [
            (a["cpu_us_per_request"] / b["cpu_us_per_request"] - 1) * 100
            for a, b in zip(on, off, strict=True)
        ]
    )
    out["of_ceiling_percent"] = summary(
        [a["rps"] / c["rps"] * 100 for a, c in zip(on, runs["ceiling"], strict=True)]
    )
    if "service+accesslog" in runs:
        out["accesslog_cpu_us"] = summary(
            [
                a["cpu_us_per_request"] - b["cpu_us_per_request"]
                for a, b in zip(runs["service+accesslog"], on, strict=True)
            ]
        )
    return out


def _versus_flask(servers: dict[str, Server], login_script: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        me_scripts = {
            name: stack.enter_context(_signed_in_script(servers[name].url))
            for name in ("service", "flask")
        }
        for endpoint, path, scripts in (
            ("health", "/api/health", {"service": None, "flask": None}),
            ("me", "/api/auth/me", me_scripts),
            ("login", "/api/auth/login", {"service": login_script, "flask": login_script}),
        ):
            for connections in CONCURRENCY:
                out[f"{endpoint}_{connections}"] = _service_against_flask(
                    servers, endpoint, path, connections, scripts
                )
    return out


@contextmanager
def _signed_in_script(base_url: str) -> Iterator[Path]:
    """A wrk script sending the session cookie a login on `base_url` gave."""
    response = httpx.post(
        base_url + "/api/auth/login", json={"username": "bench", "password": PASSWORD}
    )
    response.raise_for_status()
    cookie = "; ".join(f"{name}={value}" for name, value in response.cookies.items())
    httpx.get(base_url + "/api/auth/me", headers={"Cookie": cookie}).raise_for_status()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.headers["Cookie"] = "{cookie}"\n')
    try:
        yield Path(script.name)
    finally:
        Path(script.name).unlink()


def _service_against_flask(
    servers: dict[str, Server],
    endpoint: str,
    path: str,
    connections: int,
    scripts: Mapping[str, Path | None],
) -> dict[str, Any]:
    for name in ("service", "flask"):
        script = scripts[name]
        wrk(servers[name].url + path, connections=connections, seconds=2, script=script)
    runs: dict[str, list[dict[str, float]]] = {"service": [], "flask": []}
    for _ in range(ROUNDS):
        for name in ("service", "flask"):
            script = scripts[name]
            seconds = LOGIN_SECONDS if endpoint == "login" else COMPARE_SECONDS
            runs[name].append(
                wrk(servers[name].url + path, connections=connections,
                    seconds=seconds, script=script, server=servers[name])
            )  # fmt: skip
            _drain(servers[name].url)
            print(endpoint, connections, name, runs[name][-1], flush=True)
    ratios = [
        s["rps"] / f["rps"] if f["rps"] else float("nan")
        for s, f in zip(runs["service"], runs["flask"], strict=True)
    ]
    return {
        "service": _summarise(runs["service"]),
        "flask": _summarise(runs["flask"]),
        "throughput_ratio": summary(ratios),
    }


def _drain(base_url: str) -> None:
    """Wait until requests queued by the last run (wrk stops, the server's queue does not) are
    served, so they do not eat into the next measurement: until `GET /` answers promptly."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        started = time.monotonic()
        httpx.get(base_url + "/", timeout=120)
        if time.monotonic() - started < 0.05:
            return


def _summarise(runs: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "rps": summary([run["rps"] for run in runs]),
        "p99_ms": summary([run.get("p99_ms", float("nan")) for run in runs]),
        "cpu_us_per_request": summary(
            [run.get("cpu_us_per_request", float("nan")) for run in runs]
        ),
        "non_2xx": sum(run["non_2xx"] for run in runs),
    }


def _table(results: dict[str, Any]) -> str:
    trivial = results["trivial"]
    lines = [
        f"Trivial endpoint `GET /`, 64 connections, {TRIVIAL_ROUNDS} × {SECONDS} s interleaved:",
        "",
        "| server | requests/s median (min–max) | p99 ms median (min–max) "
        "| server CPU µs per request median (min–max) |",
        "| --- | --- | --- | --- |",
    ]
    for name in [name for name in TRIVIAL_SERVERS if name in trivial]:
        row = trivial[name]
        lines.append(
            f"| {name} | {spread(row['rps'], 0)} | {spread(row['p99_ms'], 1)} "
            f"| {spread(row['cpu_us_per_request'], 0)} |"
        )
    lines += [
        "",
        f"Observability on vs off: {spread(trivial['rps_loss_percent'], 1)} % fewer requests/s, "
        f"{spread(trivial['p99_increase_percent'], 1)} % higher p99, "
        f"{spread(trivial['cpu_increase_percent'], 1)} % more server CPU per request; "
        "the service reaches "
        f"{spread(trivial['of_ceiling_percent'], 1)} % of the bare-Quart ceiling.",
    ]
    if "accesslog_cpu_us" in trivial:
        lines += [
            "",
            "hypercorn's access log (off in hypercorn.toml) would add "
            f"{spread(trivial['accesslog_cpu_us'], 0)} µs of server CPU per request "
            "(service+accesslog − service).",
        ]
    lines += [
        "",
        "Against the original design (Flask, gunicorn sync), one worker each, interleaved "
        "5 × 5 s (health, a signed-in `GET /api/auth/me`) and 5 × 10 s (login):",
        "",
        "| endpoint | connections | service req/s | flask req/s | ratio median (min–max) "
        "| service p99 ms | flask p99 ms | service CPU µs/request | flask CPU µs/request |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, row in results["versus_flask"].items():
        endpoint, connections = key.rsplit("_", 1)
        lines.append(
            f"| {endpoint} | {connections} | {row['service']['rps']['median']:.0f} "
            f"| {row['flask']['rps']['median']:.0f} | {spread(row['throughput_ratio'], 2)} "
            f"| {row['service']['p99_ms']['median']:.1f} | {row['flask']['p99_ms']['median']:.1f} "
            f"| {row['service']['cpu_us_per_request']['median']:.0f} "
            f"| {row['flask']['cpu_us_per_request']['median']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _prepare_database() -> str:
    async def prepare() -> None:
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
            if not exists:
                await admin.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await admin.close()

    asyncio.run(prepare())
    base = ADMIN_DSN.rsplit("/", 1)[0]
    url = f"{base}/{DATABASE}".replace("postgresql://", "postgresql+asyncpg://", 1)
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT, env={**os.environ, "DATABASE_URL": url}, check=True, capture_output=True,
    )  # fmt: skip

    async def add_user() -> None:
        connection = await asyncpg.connect(f"{base}/{DATABASE}")
        try:
            await connection.execute(
                "INSERT INTO users (username, password_hash) VALUES ('bench', $1) "
                "ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash",
                PasswordHasher().hash(PASSWORD),
            )
        finally:
            await connection.close()

    asyncio.run(add_user())
    return url
