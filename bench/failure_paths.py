"""The service on a bad day, measured: a hung dependency, a stop under load, worker recycling.

1. Hung dependencies: PostgreSQL or Redis accepting TCP and never answering (a loopback server
   that accepts and stays silent). Time until a login gets its 503 with the default settings
   (`REQUEST_TIMEOUT=5`; pool, connect and statement timeouts 5, 5 and 10 s), and how long
   `/api/health` and its database check take with `HEALTH_CHECK_TIMEOUT=0.5` and 2 workers.
2. Stop under load: 50 concurrent logins in flight, then SIGTERM to the master alone or to the
   whole process group, 1 and 2 workers, under hypercorn's own master and under
   `scene-packer serve`: requests dropped (a transport error or a 5xx) and seconds to exit.
3. Recycling: 3,000 keep-alive requests (8 clients) with `max_requests = 200`: errors.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import httpx

from bench.machine import spread, summary, write
from bench.serving import Server, hypercorn
from tests.support.faults import HungServer
from tests.support.server import SCENE_PACKER

RUNS = 3
LOGINS = 50
ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "scene_packer_bench_failures"
DATABASE_URL = ADMIN_DSN.rsplit("/", 1)[0] + f"/{DATABASE}"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PRODUCTION = {
    "ENVIRONMENT": "production",
    "SECRET_KEY": "bench-secret-key-that-is-long-enough-0123456789",
    "LOG_LEVEL": "INFO",
}
CREDENTIALS = {"password": "correct horse battery staple"}


def run() -> None:
    with _migrated_database():
        results: dict[str, Any] = {
            "hung": _hung_dependencies(),
            "stop": _stops(),
            "recycling": _recycling(),
        }
    write("failure_paths", results, _table(results))


@contextmanager
def _migrated_database() -> Iterator[None]:
    """A database of its own, migrated by `scene-packer migrate`, dropped afterwards."""

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(ADMIN_DSN)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
    asyncio.run(admin(f'CREATE DATABASE "{DATABASE}"'))
    try:
        subprocess.run(
            [*SCENE_PACKER, "migrate"],
            env={**os.environ, "DATABASE_URL": DATABASE_URL, "LOG_LEVEL": "WARNING"},
            check=True,
            capture_output=True,
        )
        yield
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))


# ---- 1. hung dependencies ----


@contextmanager
def _hung_server() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    hung = HungServer()
    asyncio.run_coroutine_threadsafe(hung.start(), loop).result()
    try:
        yield hung.port
    finally:
        asyncio.run_coroutine_threadsafe(hung.stop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


def _hung_dependencies() -> dict[str, Any]:
    results: dict[str, Any] = {}
    for dependency in ("database", "redis"):
        with _hung_server() as port:
            env = {**PRODUCTION, "DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL}
            if dependency == "database":
                env["DATABASE_URL"] = f"postgresql://x@127.0.0.1:{port}/x"
            else:
                env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            with hypercorn("service.asgi:app", env) as server:
                seconds, codes = [], set()
                for _ in range(RUNS + 1):  # the first one also opens the pool
                    started = time.monotonic()
                    response = httpx.post(
                        server.url + "/api/auth/login",
                        json={"username": "nobody", **CREDENTIALS},
                        timeout=60,
                    )
                    seconds.append(time.monotonic() - started)
                    codes.add(f"{response.status_code} {response.json()['error']['code']}")
            results[f"login_{dependency}"] = {**summary(seconds), "answers": sorted(codes)}
    with _hung_server() as port:
        env = {
            **PRODUCTION,
            "DATABASE_URL": f"postgresql://x@127.0.0.1:{port}/x",
            "REDIS_URL": REDIS_URL,
            "HEALTH_CHECK_TIMEOUT": "0.5",
            "HEALTH_CACHE_TTL": "0",
        }
        with hypercorn("service.asgi:app", env, workers=2) as server:
            endpoint, check = [], []
            for _ in range(10):
                started = time.monotonic()
                body = httpx.get(server.url + "/api/health", timeout=60).json()
                endpoint.append(time.monotonic() - started)
                check.append(body["checks"]["database"]["duration_ms"] / 1000)
    results["health_endpoint"] = summary(endpoint)
    results["health_database_check"] = summary(check)
    return results


# ---- 2. stop under load ----


def _stops() -> dict[str, Any]:
    results: dict[str, Any] = {}
    for supervised in (False, True):
        for workers in (1, 2):
            for target in ("master", "group"):
                runs = [_stop_once(supervised, workers, target) for _ in range(RUNS)]
                key = f"{'serve' if supervised else 'hypercorn'}_{workers}_{target}"
                results[key] = {
                    "dropped": [run["dropped"] for run in runs],
                    "exit_codes": [run["exit_code"] for run in runs],
                    "seconds_to_exit": summary([run["seconds"] for run in runs]),
                }
    return results


def _stop_once(supervised: bool, workers: int, target: str) -> dict[str, Any]:
    env = {
        **PRODUCTION,
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        "CACHE_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:8]}:",
        "LOGIN_LIMIT_PER_IP": "100000",
        "LOGIN_LIMIT_PER_USERNAME": "100000",
        "REQUEST_TIMEOUT": "60",
        "PASSWORD_HASH_THREADS": "1",
        "DRAIN_SECONDS": "1",
    }
    with hypercorn("service.asgi:app", env, workers=workers, supervised=supervised) as server:
        return asyncio.run(_logins_then_signal(server, target))


async def _logins_then_signal(server: Server, target: str) -> dict[str, Any]:
    assert server.process is not None
    username = f"bench-{uuid.uuid4().hex[:8]}"
    credentials = {"username": username, **CREDENTIALS}
    limits = httpx.Limits(max_connections=LOGINS)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
        await client.post("/api/auth/register", json=credentials)
        logins = [
            asyncio.ensure_future(client.post("/api/auth/login", json=credentials))
            for _ in range(LOGINS)
        ]
        await asyncio.sleep(0.5)
        signalled = time.monotonic()
        if target == "master":
            os.kill(server.pid, signal.SIGTERM)
        else:
            os.killpg(server.pid, signal.SIGTERM)
        answers = await asyncio.gather(*logins, return_exceptions=True)
    exit_code = await asyncio.to_thread(server.process.wait, 60)
    dropped = sum(isinstance(a, BaseException) or a.status_code >= 500 for a in answers)
    return {"dropped": dropped, "exit_code": exit_code, "seconds": time.monotonic() - signalled}


# ---- 3. recycling ----


def _recycling() -> dict[str, Any]:
    results: dict[str, Any] = {}
    config = {"max_requests": 200, "max_requests_jitter": 0}
    for supervised in (False, True):
        for workers in (1, 2):
            env = {**PRODUCTION, "DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL}
            with hypercorn(
                "service.asgi:app", env, workers=workers, config=config, supervised=supervised
            ) as server:
                errors = asyncio.run(_keep_alive_requests(server.url, 3000, 8))
            results[f"{'serve' if supervised else 'hypercorn'}_{workers}"] = errors
    return results


async def _keep_alive_requests(url: str, total: int, clients: int) -> int:
    async def client_run() -> int:
        errors = 0
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            for _ in range(total // clients):
                try:
                    errors += (await client.get("/")).status_code != 200
                except httpx.TransportError:
                    errors += 1
        return errors

    return sum(await asyncio.gather(*(client_run() for _ in range(clients))))


# ---- report ----


def _table(results: dict[str, Any]) -> str:
    hung = results["hung"]
    text = "Hung dependency (accepts TCP, never answers), default timeouts, seconds:\n\n"
    text += "| measure | median (min–max) | answers |\n| --- | --- | --- |\n"
    for key, label in (
        ("login_database", "login, PostgreSQL hung"),
        ("login_redis", "login, Redis hung"),
    ):
        text += f"| {label} | {spread(hung[key], 2)} | {', '.join(hung[key]['answers'])} |\n"
    endpoint = spread(hung["health_endpoint"], 3)
    text += f"| `/api/health`, PostgreSQL hung, 2 workers | {endpoint} | 503 |\n"
    text += (
        f"| its database check (`HEALTH_CHECK_TIMEOUT=0.5`) | "
        f"{spread(hung['health_database_check'], 3)} | timeout |\n"
    )
    text += "\nStop under 50 concurrent logins (SIGTERM, `DRAIN_SECONDS=1`), per run:\n\n"
    text += "| server | workers | signal to | dropped | exit codes | seconds to exit |\n"
    text += "| --- | --- | --- | --- | --- | --- |\n"
    for key, row in results["stop"].items():
        server, workers, target = key.split("_")
        name = "`scene-packer serve`" if server == "serve" else "plain hypercorn"
        text += (
            f"| {name} | {workers} | {target} | {row['dropped']} | {row['exit_codes']} | "
            f"{spread(row['seconds_to_exit'], 2)} |\n"
        )
    text += "\nRecycling, `max_requests = 200`, 3,000 keep-alive requests from 8 clients:\n\n"
    text += "| server | workers | failed requests |\n| --- | --- | --- |\n"
    for key, errors in results["recycling"].items():
        server, workers = key.split("_")
        name = "`scene-packer serve`" if server == "serve" else "plain hypercorn"
        text += f"| {name} | {workers} | {errors} |\n"
    return text
