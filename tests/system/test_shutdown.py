"""`scene-packer serve` under a stop and under recycling: real processes, real signals, real
PostgreSQL and Redis. Nothing in flight is dropped, every worker runs its own shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.settings
import httpx
import psutil
import pytest

from service.observability import exposition
from tests.support.backends import REDIS_URL
from tests.support.metrics_helpers import parse, value
from tests.support.server import PRODUCTION_ENV, Server, is_live, running_server
from tests.support.waiting import until, wait_until

LOGINS = 50  # at most: fewer where the machine hashes too slowly to finish them in the drain
GRACEFUL_TIMEOUT = 60  # hypercorn's wait for requests in flight, in the stop-under-load test
LOGIN_DEADLINE = 50  # REQUEST_TIMEOUT there: below graceful_timeout, as serve requires
HANG_GUARD = 120  # seconds: only catches a hang


def _env(tmp_path: Path, postgres_url: str, **extra: str) -> dict[str, str]:
    return {
        **PRODUCTION_ENV,
        "DATABASE_URL": postgres_url,
        "REDIS_URL": REDIS_URL,
        "CACHE_KEY_PREFIX": f"test-{uuid.uuid4().hex[:8]}:",
        "METRICS_DIR": str(tmp_path / "metrics"),
        "LOGIN_LIMIT_PER_IP": "100000",
        "LOGIN_LIMIT_PER_USERNAME": "100000",
        # One hashing thread: the logins queue up, so many are in flight when the signal lands.
        "PASSWORD_HASH_THREADS": "1",
        **extra,
    }


def _in_progress(server: Server, method: str) -> float:
    """The server's `http_requests_in_progress` for `method` (asked on a separate connection)."""
    samples = parse(httpx.get(server.base_url + "/metrics", timeout=HANG_GUARD).text)
    return value(samples, "http_requests_in_progress", method=method)


async def _until_in_flight(server: Server, count: int) -> None:
    """Until the server reports `count` POSTs in progress."""
    await until(
        lambda: _in_progress(server, "POST") >= count,
        HANG_GUARD,
        f"fewer than {count} requests ever in flight",
    )


def _archived(tmp_path: Path) -> dict[Any, float]:
    """What the stopped server's workers left: every worker folded into the archive."""
    (run,) = (tmp_path / "metrics").glob("run-*")
    assert sorted(path.name for path in run.glob("worker-*.json")) == []
    archive = exposition.from_json((run / "archive.json").read_bytes())
    return parse(exposition.render(archive).decode())


def _logins_counted(samples: dict[Any, float]) -> float:
    return sum(
        count
        for (name, labels), count in samples.items()
        if name == "http_requests_total" and ("endpoint", "/api/auth/login") in labels
    )


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("target", ["master", "group"])
async def test_a_stop_under_load_answers_every_request_in_flight(
    tmp_path: Path, postgres_url: str, workers: int, target: str
) -> None:
    """Keep-alive clients each log in, then send one more request on the same client. As many
    clients as one hashing thread can serve in a quarter of the drain, measured on this machine
    now: the test is of the stop, not of how fast the machine hashes (at most 50)."""
    # The last login waits longer than the default deadline (5 s); the stop waits for it.
    env = _env(
        tmp_path, postgres_url, DRAIN_SECONDS="1", REQUEST_TIMEOUT=str(GRACEFUL_TIMEOUT - 10)
    )
    config = {"workers": workers, "graceful_timeout": GRACEFUL_TIMEOUT}
    with running_server(tmp_path, env, config=config, supervised=True) as server:
        username = f"alice-{uuid.uuid4().hex[:8]}"
        credentials = {"username": username, "password": "correct horse battery"}

        async def login_then_more() -> tuple[int | str, int | str]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=HANG_GUARD) as client:
                try:
                    first: int | str = (
                        await client.post("/api/auth/login", json=credentials)
                    ).status_code
                except httpx.TransportError as error:
                    return type(error).__name__, "not sent"
                try:
                    then: int | str = (await client.get("/")).status_code
                except httpx.ConnectError:
                    then = "refused"  # after the drain: never accepted, so never dropped
                except httpx.TransportError as error:
                    then = type(error).__name__
                return first, then

        async with httpx.AsyncClient(base_url=server.base_url, timeout=HANG_GUARD) as client:
            assert (await client.post("/api/auth/register", json=credentials)).status_code == 201
            started = time.monotonic()
            for _ in range(3):
                assert (await client.post("/api/auth/login", json=credentials)).status_code == 200
            per_login = (time.monotonic() - started) / 3
        logins = max(5, min(LOGINS, int(GRACEFUL_TIMEOUT / 4 / per_login)))
        clients = [asyncio.ensure_future(login_then_more()) for _ in range(logins)]
        await _until_in_flight(server, logins // 5)  # most still queue for the hash
        if target == "master":
            os.kill(server.process.pid, signal.SIGTERM)
        else:  # systemd's default KillMode, Ctrl+C in a terminal
            os.killpg(server.process.pid, signal.SIGTERM)
        outcomes = await asyncio.gather(*clients)
        exit_code = await asyncio.to_thread(server.process.wait, HANG_GUARD)

    assert [first for first, _ in outcomes if first != 200] == []
    # A request that follows on a kept-alive connection is served, or (once the drain is over)
    # refused on a new one: the answers while stopping carry `Connection: close`.
    assert [then for _, then in outcomes if then not in (200, "refused")] == []
    assert exit_code == 0
    events = server.events()
    draining = [e for e in events if e["event"] == "service_draining"]
    assert [e["reason"] for e in draining] == ["sigterm"] * workers
    assert sum(e["in_flight_requests"] for e in draining) > 0  # the signal did land under load
    stopped = [e for e in events if e["event"] == "service_stopped"]
    assert [e["reason"] for e in stopped] == ["sigterm"] * workers
    (master,) = [e for e in events if e["event"] == "server_stopped"]
    assert master["exit_code"] == 0
    assert _logins_counted(_archived(tmp_path)) == logins + 3


async def test_draining_keeps_serving_while_readiness_says_503(
    tmp_path: Path, postgres_url: str
) -> None:
    env = _env(tmp_path, postgres_url, DRAIN_SECONDS="3")
    with running_server(tmp_path, env, config={"workers": 2}, supervised=True) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=HANG_GUARD) as client:
            assert (await client.get("/api/health/ready")).status_code == 200
            os.kill(server.process.pid, signal.SIGTERM)
            # Every worker drains (each logs it), not just the one a first probe reached.
            await until(lambda: _draining(server) == 2, HANG_GUARD, "not every worker drains")
            # New connections are still accepted and served; readiness tells the balancer to go.
            async with httpx.AsyncClient(base_url=server.base_url, timeout=HANG_GUARD) as fresh:
                ready = await fresh.get("/api/health/ready")
                served = await fresh.get("/api/health/live")
            assert ready.status_code == 503
            assert ready.json()["reasons"] == {"service": "draining"}
            assert ready.headers["Connection"] == "close"
            assert served.status_code == 200
        assert await asyncio.to_thread(server.process.wait, HANG_GUARD) == 0
    # Once the drain is over the socket closes: nothing is accepted and then dropped.
    with pytest.raises(httpx.ConnectError):
        await asyncio.to_thread(httpx.get, server.base_url + "/api/health/live", timeout=5)


def test_a_client_that_reads_nothing_cannot_hold_up_the_stop(
    tmp_path: Path, postgres_url: str
) -> None:
    """An HTTP/2 (prior knowledge) client that opens its streams with a zero flow-control window
    and never widens it: the answers can never be sent. The stop still ends in graceful_timeout,
    exit 0; the stuck requests are logged as not delivered (hypercorn's own cancellation made the
    worker exit 1 with a burst of ExceptionGroup tracebacks, and the lines said 200, delivered)."""
    env = _env(tmp_path, postgres_url, DRAIN_SECONDS="0", REQUEST_TIMEOUT="2")
    config = {"workers": 1, "graceful_timeout": 4}
    streams = 3
    with running_server(tmp_path, env, config=config, supervised=True) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=HANG_GUARD) as sock:
            connection = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
            )
            connection.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
            )
            connection.initiate_connection()
            for _ in range(streams):
                connection.send_headers(
                    connection.get_next_available_stream_id(),
                    [
                        (":method", "GET"),
                        (":path", "/openapi.json"),
                        (":scheme", "http"),
                        (":authority", f"{host}:{port}"),
                    ],
                    end_stream=True,
                )
            sock.sendall(connection.data_to_send())
            wait_until(
                lambda: _in_progress(server, "GET") >= streams,
                HANG_GUARD,
                "the streams never reached the app",
            )
            os.kill(server.process.pid, signal.SIGTERM)
            exit_code = server.process.wait(HANG_GUARD)
    assert exit_code == 0
    events = server.events()
    (master,) = [e for e in events if e["event"] == "server_stopped"]
    assert master["exit_code"] == 0 and master["killed"] is None
    assert [e["requests"] for e in events if e["event"] == "requests_abandoned"] == [streams]
    stuck = [e for e in events if e["event"] == "request_finished" and e["path"] == "/openapi.json"]
    assert [(e["delivered"], e["level"]) for e in stuck] == [(False, "warning")] * streams
    assert [e for e in events if e["level"] in ("error", "critical")] == []
    assert "Traceback" not in server.output.read_text()


@pytest.mark.parametrize("workers", [1, 2])
async def test_recycling_drops_no_request(tmp_path: Path, postgres_url: str, workers: int) -> None:
    """Keep-alive clients through successive replacements of every worker: at least 3,000
    requests and two replacements (a successor takes a second or two to start), at most 15,000."""
    clients, batch = 8, 1000
    config = {"workers": workers, "max_requests": 200, "max_requests_jitter": 0}
    env = _env(tmp_path, postgres_url)
    with running_server(tmp_path, env, config=config, supervised=True) as server:

        async def keep_alive_client(count: int) -> list[int | str]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=HANG_GUARD) as client:
                outcomes: list[int | str] = []
                for _ in range(count):
                    try:
                        outcomes.append((await client.get("/")).status_code)
                    except httpx.TransportError as error:
                        outcomes.append(type(error).__name__)
                return outcomes

        def recycled() -> int:
            return sum(
                e["event"] == "service_draining" and e["reason"] == "recycle"
                for e in server.events()
            )

        outcomes: list[int | str] = []
        while len(outcomes) < 3000 or (recycled() < 2 and len(outcomes) < 15_000):
            results = await asyncio.gather(
                *(keep_alive_client(batch // clients) for _ in range(clients))
            )
            outcomes += [outcome for result in results for outcome in result]
        replacements = recycled()
    assert [o for o in outcomes if o != 200] == []
    assert replacements >= 2


async def test_a_stop_while_a_successor_starts_waits_for_every_worker(
    tmp_path: Path, postgres_url: str
) -> None:
    """SIGHUP starts a successor for the worker; SIGTERM arrives before it is ready."""
    with running_server(tmp_path, _env(tmp_path, postgres_url), supervised=True) as server:
        os.kill(server.process.pid, signal.SIGHUP)
        await until(lambda: len(_workers(server)) == 2, HANG_GUARD, "no successor started")
        os.kill(server.process.pid, signal.SIGTERM)
        exit_code = await asyncio.to_thread(server.process.wait, HANG_GUARD)
        events = server.events()
    assert exit_code == 0, server.output.read_text()
    assert "Traceback" not in server.output.read_text()
    (master,) = [e for e in events if e["event"] == "server_stopped"]
    assert master["exit_code"] == 0


def _draining(server: Server) -> int:
    """How many workers have logged that they drain."""
    return sum(e["event"] == "service_draining" for e in server.events())


def _exited(server: Server) -> bool:
    return any(e["event"] == "worker_exited" for e in server.events())


def _workers(server: Server) -> set[int]:
    """The master's live worker processes (not its resource tracker, not exited ones)."""
    workers = set()
    for child in psutil.Process(server.process.pid).children():
        with contextlib.suppress(psutil.Error):  # exited meanwhile, or a zombie not yet reaped
            if child.status() != psutil.STATUS_ZOMBIE and any(
                "spawn_main" in part for part in child.cmdline()
            ):
                workers.add(child.pid)
    return workers


async def test_a_worker_killed_while_its_successor_starts_is_replaced_by_it(
    tmp_path: Path, postgres_url: str
) -> None:
    """SIGHUP starts a successor; the old worker is killed before the successor is ready. The
    successor takes the slot (no second one is started, none is left untracked)."""
    with running_server(tmp_path, _env(tmp_path, postgres_url), supervised=True) as server:
        (old,) = _workers(server)
        os.kill(server.process.pid, signal.SIGHUP)
        await until(lambda: len(_workers(server)) == 2, HANG_GUARD, "no successor started")
        os.kill(old, signal.SIGKILL)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=HANG_GUARD) as client:
            await until(lambda: is_live(server.base_url), HANG_GUARD, "the successor never served")
            # The master started a replacement, if it would, as it noted the exit.
            await until(lambda: _exited(server), HANG_GUARD, "the exit was never noted")
            assert (await client.get("/")).status_code == 200
        assert len(_workers(server)) == 1
        os.kill(server.process.pid, signal.SIGTERM)
        assert await asyncio.to_thread(server.process.wait, HANG_GUARD) == 0
    events = server.events()
    assert [e["pid"] for e in events if e["event"] == "worker_exited"] == [old]


async def test_a_worker_that_dies_is_replaced_and_counted(
    tmp_path: Path, postgres_url: str
) -> None:
    with running_server(tmp_path, _env(tmp_path, postgres_url), supervised=True) as server:
        (old,) = _workers(server)
        os.kill(old, signal.SIGKILL)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=HANG_GUARD) as client:
            replaced: dict[Any, float] = {}

            async def replacement_counted() -> bool:
                nonlocal replaced
                with contextlib.suppress(httpx.TransportError):
                    replaced = parse((await client.get("/metrics")).text)
                return value(replaced, "app_worker_starts_total", reason="replace") == 1

            await until(replacement_counted, HANG_GUARD, "the replacement was never counted")
        assert value(replaced, "app_worker_starts_total", reason="replace") == 1
        assert len(_workers(server)) == 1
    (exited,) = [e for e in server.events() if e["event"] == "worker_exited"]
    assert (exited["pid"], exited["exit_code"]) == (old, -signal.SIGKILL)
