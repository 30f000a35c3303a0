"""Health checks against real services and real faults (closed ports, hung servers, cut links)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.support.faults import HungServer
from tests.support.server import PRODUCTION_ENV, running_server

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
