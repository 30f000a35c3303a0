"""Several real hypercorn workers: every scrape reports the exact total of all of them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from tests.support.faults import fill, small_disk
from tests.support.metrics_helpers import parse, value
from tests.support.server import PRODUCTION_ENV, Server, running_server
from tests.support.waiting import wait_until

TOTAL = 3000
HANG_GUARD = 30  # seconds: only catches a hang
SYNC_INTERVAL = 0.2


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **PRODUCTION_ENV,
        "METRICS_DIR": str(tmp_path / "metrics"),
        "METRICS_SYNC_INTERVAL": str(SYNC_INTERVAL),
        "HEALTH_REFRESH_SECONDS": "0",
    }


def _scrape(server: Server) -> dict[str, float]:
    samples = parse(httpx.get(server.base_url + "/metrics", timeout=30).text)
    return {
        "requests": value(samples, "http_requests_total", method="GET", endpoint="/", status="200"),
        "durations": value(
            samples, "http_request_duration_seconds_count", method="GET", endpoint="/"
        ),
        "in_progress": value(samples, "http_requests_in_progress", method="GET"),
    }


async def _send(base_url: str, total: int, stop_scraping: asyncio.Event, seen: list[float]) -> int:
    """`total` successful GET / over keep-alive and fresh connections; retries transport errors
    (a recycled worker closes its connections) and returns how many were answered 200."""
    answered = 0

    async def sender(count: int, headers: dict[str, str]) -> None:
        # `Connection: close` makes every request of the sender open a new connection.
        nonlocal answered
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            done = 0
            while done < count:
                try:
                    response = await client.get("/", headers=headers)
                except httpx.TransportError:
                    continue
                assert response.status_code == 200
                done += 1
                answered += 1

    async def scraper() -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            while not stop_scraping.is_set():
                try:
                    text = (await client.get("/metrics")).text
                except httpx.TransportError:
                    continue
                seen.append(
                    value(
                        parse(text), "http_requests_total", method="GET", endpoint="/", status="200"
                    )
                )
                await asyncio.sleep(0.05)

    scraping = asyncio.create_task(scraper())
    per_task = total // 10
    keep_alive: dict[str, str] = {}
    fresh = {"Connection": "close"}
    await asyncio.gather(*(sender(per_task, headers) for headers in [keep_alive, fresh] * 5))
    stop_scraping.set()
    await scraping
    return answered


def _answered_in_log(server: Server) -> int:
    count = 0
    for line in server.lines():
        if line.startswith("{"):
            event = json.loads(line)
            if (
                event["event"] == "request_finished"
                and event["path"] == "/"
                and event["status"] == 200
            ):
                count += 1
    return count


def _drive(server: Server) -> tuple[int, list[float]]:
    seen: list[float] = []
    answered = asyncio.run(_send(server.base_url, TOTAL, asyncio.Event(), seen))
    return answered, seen


@pytest.mark.parametrize("max_requests", [None, 150], ids=["steady", "recycled-workers"])
def test_every_scrape_reports_the_exact_total(tmp_path: Path, max_requests: int | None) -> None:
    config: dict[str, object] = {"workers": 3}
    if max_requests is not None:
        config.update({"max_requests": max_requests, "max_requests_jitter": 20})
    with running_server(tmp_path, _env(tmp_path), config=config) as server:
        answered, during = _drive(server)
        assert answered == TOTAL
        wait_until(
            lambda: _scrape(server)["requests"] == _answered_in_log(server),
            HANG_GUARD,
            "the workers' shared total never reached the requests they logged",
        )
        scrapes = [_scrape(server) for _ in range(20)]
    assert during == sorted(during), "a counter went backwards between scrapes"
    # The server's own record: one request_finished line per request it answered. A worker that
    # hypercorn recycles can drop a response it has already written (the client then retries),
    # so with recycling the server may have answered a few more than the client received.
    handled = _answered_in_log(server)
    if max_requests is None:
        assert handled == TOTAL
    else:
        assert TOTAL <= handled <= TOTAL + 100
    for scrape in scrapes:
        assert scrape["requests"] == handled
        assert scrape["durations"] == handled
        assert scrape["in_progress"] == 0
    if max_requests is not None:  # workers really were replaced, and nothing piled up
        files = sorted(p.name for p in (tmp_path / "metrics").glob("run-*/worker-*.json"))
        assert len(files) <= 3 + 1, files
        assert list((tmp_path / "metrics").glob("run-*/archive.json"))


def test_a_restarted_server_starts_from_zero(tmp_path: Path) -> None:
    env = _env(tmp_path)
    with running_server(tmp_path, env, config={"workers": 2}) as server:
        for _ in range(50):
            httpx.get(server.base_url + "/")
        wait_until(lambda: _scrape(server)["requests"] == 50, HANG_GUARD, "never 50")
    with running_server(tmp_path, env, config={"workers": 2}) as server:
        httpx.get(server.base_url + "/")
        wait_until(lambda: _scrape(server)["requests"] == 1, HANG_GUARD, "not from zero")
    runs = list((tmp_path / "metrics").glob("run-*"))
    assert len(runs) == 1, "the previous run's snapshots were not cleaned up"


def test_a_corrupt_snapshot_is_skipped_with_a_warning(tmp_path: Path) -> None:
    env = _env(tmp_path)
    with running_server(tmp_path, env, config={"workers": 2}) as server:
        for _ in range(10):
            httpx.get(server.base_url + "/")
        (run,) = (tmp_path / "metrics").glob("run-*")
        (run / "worker-999999.json").write_bytes(b'{"http_requests_total": {"kind": "coun')
        wait_until(lambda: _scrape(server)["requests"] == 10, HANG_GUARD, "never 10")
        scrapes = [_scrape(server) for _ in range(5)]
    assert all(scrape["requests"] == 10 for scrape in scrapes)
    assert "metrics_snapshot_skipped" in server.output.read_text()


def test_a_full_disk_leaves_the_scrapes_answering(tmp_path: Path) -> None:
    """METRICS_DIR fills up under two workers: every scrape still answers 200, the failed writes
    are counted and logged once (not a traceback a second), no temporary file is left, and the
    writes resume once there is room again."""
    with small_disk(tmp_path / "metrics", "256k") as disk:
        env = {**_env(tmp_path), "METRICS_DIR": str(disk)}
        with running_server(tmp_path, env, config={"workers": 2}) as server:
            fill(disk)

            def full_disk_counted() -> bool:
                response = httpx.get(server.base_url + "/metrics", timeout=30)
                assert response.status_code == 200, response.text
                samples = parse(response.text)
                return value(samples, "metrics_snapshot_write_errors_total", reason="disk_full") > 0

            wait_until(full_disk_counted, HANG_GUARD, "no failed write was counted")
            statuses = [
                httpx.get(server.base_url + "/metrics", timeout=30).status_code for _ in range(10)
            ]
            leftovers = [path.name for path in disk.rglob("*.tmp")]
            (disk / "filler").unlink()
            wait_until(
                lambda: any(
                    e["event"] == "metrics_snapshot_write_recovered" for e in server.events()
                ),
                HANG_GUARD,
                "the writes never resumed",
            )
            events = server.events()
    assert statuses == [200] * 10
    assert leftovers == []
    failed = [e for e in events if e["event"] == "metrics_snapshot_write_failed"]
    assert 1 <= len(failed) <= 2 and {e["reason"] for e in failed} == {"disk_full"}, failed
    assert not [e for e in events if e["event"] == "metrics_sync_failed"]
    assert "Traceback" not in server.output.read_text()
