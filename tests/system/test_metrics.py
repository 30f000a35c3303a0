"""`/metrics` on the real app over real PostgreSQL + Redis and the embedded default."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from service.observability import exposition
from service.observability.metrics import Metrics
from service.settings import load_settings
from tests.support.client import Client, login, register
from tests.support.metrics_helpers import parse, promtool_check, value
from tests.support.server import running_server
from tests.support.waiting import wait_until


async def _scrape(client: Client) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return await response.get_data(as_text=True)  # type: ignore[no-any-return]


def test_hostile_path_over_real_http_leaves_exposition_parseable(tmp_path: Path) -> None:
    with running_server(tmp_path, {}) as server, httpx.Client(base_url=server.base_url) as client:
        raw = client.get("/x%22y%0Az")
        assert raw.status_code == 404
        client.get("/x%22y%0Az%5C")
        text = client.get("/metrics").text
    samples = parse(text)
    assert (
        value(samples, "http_requests_total", method="GET", endpoint="<unmatched>", status="404")
        == 2
    )
    result = promtool_check(text)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result


def test_label_values_are_escaped_whatever_they_hold(tmp_path: Path) -> None:
    metrics = Metrics(load_settings(data_dir=tmp_path))
    hostile = 'a"b\nc\\d}{e="f"'
    metrics.http_requests.inc({"method": "GET", "endpoint": hostile, "status": "200"})
    text = exposition.render(metrics.snapshot()).decode()
    samples = parse(text)
    assert value(samples, "http_requests_total", method="GET", endpoint=hostile, status="200") == 1
    assert promtool_check(text).returncode == 0


async def test_promtool_accepts_the_full_exposition(client: Client) -> None:
    await register(client)
    await login(client)
    await client.get("/api/auth/me")
    text = await _scrape(client)
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "" and result.stderr == ""


def test_a_client_that_goes_away_is_not_a_server_error(tmp_path: Path) -> None:
    """A body cut short (declared 100 bytes, 3 sent, then the connection closed): 499, never 500,
    so a client cannot feed the 5xx alerts."""
    with running_server(tmp_path, {}) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        for _ in range(5):
            with socket.create_connection((host, int(port)), timeout=10) as connection:
                connection.sendall(
                    b"POST /api/rum HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b'Content-Length: 100\r\n\r\n{"a'
                )
        samples: dict[object, float] = {}

        def five_seen() -> bool:  # the server sees each disconnect a moment later
            nonlocal samples
            samples = parse(httpx.get(server.base_url + "/metrics", timeout=30).text)
            labels = {"method": "POST", "endpoint": "/api/rum", "status": "499"}
            return value(samples, "http_requests_total", **labels) == 5

        wait_until(five_seen, 30, "the disconnects were never all counted")
    answered = {
        dict(labels)["status"]
        for (name, labels), _ in samples.items()
        if name == "http_requests_total" and dict(labels).get("endpoint") == "/api/rum"
    }
    assert answered == {"499"}
    assert (
        value(samples, "http_requests_total", method="POST", endpoint="/api/rum", status="499") == 5
    )
