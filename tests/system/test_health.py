"""Health checks against real services and real faults (closed ports, hung servers, cut links)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.support.faults import HungServer, fill, small_disk
from tests.support.metrics_helpers import parse, value
from tests.support.server import PRODUCTION_ENV, running_server
from tests.support.waiting import wait_until

HANG_GUARD = 30  # seconds: only catches a hang; never a performance assertion


def test_probes_over_http_get_and_head(tmp_path: Path) -> None:
    """Through hypercorn (the test client recomputes lengths): HEAD gives GET's headers, with
    the length of the body it leaves out, on a kept-alive connection."""
    with (
        running_server(tmp_path, PRODUCTION_ENV) as server,
        httpx.Client(base_url=server.base_url, timeout=HANG_GUARD) as client,
    ):
        for path in ("/api/health", "/api/health/live", "/api/health/ready"):
            get = client.get(path, headers={"X-Request-ID": "probe-request-0001"})
            head = client.head(path)
            assert get.status_code == head.status_code == 200
            assert get.headers["X-Request-ID"] == "probe-request-0001"
            assert head.content == b"" and len(get.content) > 0
            assert head.headers["Content-Length"] == str(len(get.content))
            for header in ("Content-Type", "Cache-Control"):
                assert head.headers[header] == get.headers[header]
            assert get.headers["Content-Type"] == "application/json"
            assert get.json()["status"] in ("healthy", "alive", "ready")


async def test_health_answers_within_its_timeout_under_hypercorn_with_a_hung_database(
    tmp_path: Path,
) -> None:
    """Two hypercorn workers, PostgreSQL accepting TCP and never answering: each check gives up
    at its timeout and the endpoint answers right after, however long the cancelled connect takes
    to unwind (it took as long again: 1,004 ms on a 0.5 s timeout)."""
    hung = HungServer()
    await hung.start()
    timeout = 1.0
    env = {
        **PRODUCTION_ENV,
        "DATABASE_URL": f"postgresql://x@127.0.0.1:{hung.port}/x",
        "HEALTH_CHECK_TIMEOUT": str(timeout),
    }
    try:
        with running_server(tmp_path, env, config={"workers": 2}) as server:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=HANG_GUARD) as client:
                durations, elapsed = [], []
                for _ in range(8):
                    started = time.monotonic()
                    response, *_ = await asyncio.gather(
                        *(client.get("/api/health") for _ in range(5))
                    )
                    elapsed.append(time.monotonic() - started)
                    assert response.status_code == 503
                    check = response.json()["checks"]["database"]
                    assert check["reason"] == "timeout"
                    durations.append(check["duration_ms"] / 1000)
    finally:
        await hung.stop()
    # Below the doubling this guards against, by a whole timeout: what a busy machine adds to
    # a request is a small part of that.
    assert max(durations) < 2 * timeout, durations
    assert max(elapsed) < 2 * timeout, elapsed


def test_a_full_disk_makes_the_embedded_database_not_ready_until_there_is_room(
    tmp_path: Path,
) -> None:
    """The embedded database's disk fills up. Reads still work (`SELECT 1` passed: the worker
    said `ready` while every sign-up and login failed); now the first write that fails for want
    of room makes the database check write too, so readiness says 503 `disk_full`, logged once
    with the cause and counted by it, until a write works again."""
    password = "correct horse battery"
    with small_disk(tmp_path / "data", "2m") as disk:
        env = {**PRODUCTION_ENV, "DATA_DIR": str(disk), "METRICS_DIR": str(tmp_path / "metrics")}
        with (
            running_server(tmp_path, env, config={"workers": 1}) as server,
            httpx.Client(base_url=server.base_url, timeout=HANG_GUARD) as client,
        ):

            def register(name: str) -> int:
                body = {"username": name, "password": password}
                return client.post("/api/auth/register", json=body).status_code

            assert register("before-the-disk-filled") == 201
            fill(disk)
            # Until a write needs room the journal does not have (bounded: the journal is small).
            answers = []
            while 503 not in answers and len(answers) < 200:
                answers.append(register(f"while-full-{len(answers)}"))
            assert answers[-1] == 503, answers

            def readiness() -> httpx.Response:
                return client.get("/api/health/ready")

            wait_until(lambda: readiness().status_code == 503, HANG_GUARD, "stayed ready")
            not_ready = readiness().json()
            full = client.get("/api/health").json()
            samples = parse(client.get("/metrics").text)
            (disk / "filler").unlink()
            wait_until(lambda: readiness().status_code == 200, HANG_GUARD, "never ready again")
            assert register("after-the-disk-had-room") == 201
            events = server.events()
    assert not_ready["reasons"] == {"database": "disk_full"}
    assert full["checks"]["database"] == {
        "status": "unhealthy",
        "duration_ms": full["checks"]["database"]["duration_ms"],
        "reason": "disk_full",
    }
    cause = {"dependency": "database", "reason": "disk_full"}
    assert value(samples, "dependency_errors_total", **cause) >= 1
    failed = [e for e in events if e["event"] == "health_check_failed"]
    assert [(e["check"], e["reason"]) for e in failed] == [("database", "disk_full")]
    assert "database or disk is full" in failed[0]["exception"]
    recovered = [e["check"] for e in events if e["event"] == "health_check_recovered"]
    assert recovered.count("database") == 1  # (the disk's warning recovers too)
