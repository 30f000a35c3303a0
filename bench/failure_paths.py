"""The service on a bad day, measured: a hung dependency, a stop under load, worker recycling.

1. Hung dependencies: PostgreSQL or Redis accepting TCP and never answering (a loopback server
   that accepts and stays silent). Time until a login gets its 503 with the default settings
   (`REQUEST_TIMEOUT=5`; pool, connect and statement timeouts 5, 5 and 10 s), and how long
   `/api/health` and its database check take with `HEALTH_CHECK_TIMEOUT=0.5` and 2 workers.
2. Stop under load: 50 concurrent logins in flight, then SIGTERM to the master alone or to the
   whole process group, 1 and 2 workers, under hypercorn's own master and under
   `scene-packer serve`: requests dropped (a transport error or a 5xx) and seconds to exit.
3. Recycling: 3,000 keep-alive requests (8 clients) with `max_requests = 200`: errors.
4. Links that go dark: a pooled PostgreSQL connection that stops answering mid-query
   (`REQUEST_TIMEOUT=3`), and Redis going silent under a signed-in read (`GET /api/auth/me`
   with a session cookie), each through a loopback proxy that stops passing bytes: the answer
   and its time against REQUEST_TIMEOUT. And a stop while an HTTP/2 client holds three
   streams it gives no flow-control window: seconds to exit, exit code.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import h2.config
import h2.connection
import h2.settings
import httpx

from bench.machine import spread, summary, write
from bench.serving import Server, hypercorn
from service.auth.sessions import SESSION_COOKIE_NAME
from tests.support.faults import HungServer, TcpProxy
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
            "dark": _dark_links(),
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
def _background_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop in a thread of its own, for the fault servers beside a blocking client."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


def _on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


@contextmanager
def _hung_server() -> Iterator[int]:
    with _background_loop() as loop:
        hung = HungServer()
        _on(loop, hung.start())
        try:
            yield hung.port
        finally:
            _on(loop, hung.stop())


@contextmanager
def _proxy(port: int) -> Iterator[TcpProxy]:
    with _background_loop() as loop:
        proxy = TcpProxy(port)
        _on(loop, proxy.start())
        try:
            yield proxy
        finally:
            _on(loop, proxy.cut())


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
    # The logins queue for 60 s at most; serve refuses a graceful_timeout that cannot wait for them.
    config = {"graceful_timeout": 70}
    with hypercorn(
        "service.asgi:app", env, workers=workers, config=config, supervised=supervised
    ) as server:
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


# ---- 4. links that go dark ----


def _dark_links() -> dict[str, Any]:
    return {
        "pooled_database": _dark_pooled_database(),
        "redis_signed_in_read": _dark_redis_signed_in_read(),
        "stop_h2_zero_window": [_stop_with_a_client_that_reads_nothing() for _ in range(RUNS)],
    }


@contextmanager
def _proxied(url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy in front of the service at `url`, and `url` through it."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with _proxy(port) as proxy:
        yield proxy, url.replace(f":{port}/", f":{proxy.port}/")


def _dark_pooled_database() -> dict[str, Any]:
    """Each run: a login through a fresh pooled connection, the link goes dark, the next login
    meets the hung pooled connection; then the link is back."""
    timeout = 3.0
    with _proxied(DATABASE_URL) as (proxy, via):
        env = {
            **PRODUCTION,
            "DATABASE_URL": via,
            "REDIS_URL": REDIS_URL,
            "CACHE_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:8]}:",
            "REQUEST_TIMEOUT": str(timeout),
            "LOGIN_LIMIT_PER_IP": "100000",
            "LOGIN_LIMIT_PER_USERNAME": "100000",
            "DB_POOL_SIZE": "1",
            "DB_MAX_OVERFLOW": "0",
        }
        with (
            hypercorn("service.asgi:app", env) as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
        ):
            credentials = {"username": f"bench-{uuid.uuid4().hex[:8]}", **CREDENTIALS}
            client.post("/api/auth/register", json=credentials)
            seconds, codes = [], set()
            for _ in range(RUNS * 2):
                proxy.hung = False
                client.post("/api/auth/login", json=credentials)  # the pool's one connection
                proxy.hang()
                started = time.monotonic()
                response = client.post("/api/auth/login", json=credentials)
                seconds.append(time.monotonic() - started)
                codes.add(f"{response.status_code} {response.json()['error']['code']}")
    return {**summary(seconds), "request_timeout": timeout, "answers": sorted(codes)}


def _dark_redis_signed_in_read() -> dict[str, Any]:
    """A signed-in user's reads while Redis has gone silent on every open connection."""
    with _proxied(REDIS_URL) as (proxy, via):
        env = {
            **PRODUCTION,
            "DATABASE_URL": DATABASE_URL,
            "REDIS_URL": via,
            "CACHE_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:8]}:",
        }
        with (
            hypercorn("service.asgi:app", env) as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
        ):
            credentials = {"username": f"bench-{uuid.uuid4().hex[:8]}", **CREDENTIALS}
            client.post("/api/auth/register", json=credentials)
            # The production cookie is Secure, which a client sends over HTTPS only.
            client.post("/api/auth/login", json=credentials)
            cookie = {"Cookie": f"{SESSION_COOKIE_NAME}={client.cookies[SESSION_COOKIE_NAME]}"}
            seconds, codes = [], set()
            for _ in range(RUNS * 2):
                proxy.hung = False
                client.get("/api/auth/me", headers=cookie)
                proxy.hang()
                started = time.monotonic()
                response = client.get("/api/auth/me", headers=cookie)
                seconds.append(time.monotonic() - started)
                code = response.json().get("error", {}).get("code", "")
                codes.add(f"{response.status_code} {code}".strip())
    return {**summary(seconds), "request_timeout": 5.0, "answers": sorted(codes)}


def _stop_with_a_client_that_reads_nothing() -> dict[str, Any]:
    """`scene-packer serve`, 1 worker, default graceful_timeout (REQUEST_TIMEOUT + 5 s): SIGTERM
    while an HTTP/2 client holds three streams with a zero flow-control window."""
    env = {**PRODUCTION, "DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL}
    with hypercorn("service.asgi:app", env, supervised=True) as server:
        assert server.process is not None
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            connection.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
            )
            connection.initiate_connection()
            for _ in range(3):
                connection.send_headers(
                    connection.get_next_available_stream_id(),
                    [(":method", "GET"), (":path", "/openapi.json"), (":scheme", "http"),
                     (":authority", f"{host}:{port}")],
                    end_stream=True,
                )  # fmt: skip
            sock.sendall(connection.data_to_send())
            time.sleep(1)
            signalled = time.monotonic()
            os.kill(server.pid, signal.SIGTERM)
            exit_code = server.process.wait(120)
            return {"exit_code": exit_code, "seconds": time.monotonic() - signalled}


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
    dark = results["dark"]
    text += "\nLinks that go dark (a proxy that stops passing bytes), seconds:\n\n"
    text += "| case | `REQUEST_TIMEOUT` | answer time, median (min–max) | answers |\n"
    text += "| --- | --- | --- | --- |\n"
    for key, label in (
        ("pooled_database", "login on a pooled PostgreSQL connection gone dark"),
        ("redis_signed_in_read", "signed-in read (`/api/auth/me`), Redis gone dark"),
    ):
        row = dark[key]
        text += (
            f"| {label} | {row['request_timeout']:g} | {spread(row, 3)} | "
            f"{', '.join(row['answers'])} |\n"
        )
    stops = dark["stop_h2_zero_window"]
    seconds = ", ".join(f"{run['seconds']:.2f}" for run in stops)
    codes = ", ".join(str(run["exit_code"]) for run in stops)
    text += (
        f"\nStop with an HTTP/2 client holding 3 zero-window streams (`scene-packer serve`, "
        f"1 worker, graceful_timeout 10 s): seconds to exit {seconds}; exit codes {codes}.\n"
    )
    return text
