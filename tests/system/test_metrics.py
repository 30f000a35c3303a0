"""`/metrics` on the real app over real PostgreSQL + Redis and the embedded default."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx

from service.observability import exposition
from service.observability.metrics import Metrics
from service.settings import load_settings
from tests.support.client import Client, login, register
from tests.support.metrics_helpers import parse, promtool_check, value
from tests.support.server import PRODUCTION_ENV, Server, raw_exchange, running_server
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


def test_a_slow_upload_is_the_clients_time_not_the_services(tmp_path: Path) -> None:
    """A client that takes 2 s to send its body: the wait is timed apart (the log line's
    `body_wait_ms`, `http_request_body_wait_seconds`) and left out of
    `http_request_duration_seconds`, which the latency alerts and the latency SLO read."""
    body = b'{"username": 1, "password": "x"}'  # read, then refused: no password is hashed
    head = (
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with running_server(tmp_path, {**PRODUCTION_ENV, "LOG_LEVEL": "INFO"}) as server:
        answer = raw_exchange(server.base_url, head + body[:10], body[10:], pause=2)
        assert answer.startswith(b"HTTP/1.1 400")
        assert httpx.get(server.base_url + "/", timeout=30).status_code == 200
        samples = parse(httpx.get(server.base_url + "/metrics", timeout=30).text)
        wait_until(
            lambda: len(_finished(server, "/api/auth/login") + _finished(server, "/")) == 2,
            30,
            "no request_finished lines for the upload and the plain request",
        )
        (line,) = _finished(server, "/api/auth/login")
        (plain,) = _finished(server, "/")
    endpoint = {"endpoint": "/api/auth/login"}
    waited = value(samples, "http_request_body_wait_seconds_sum", **endpoint)
    served = value(samples, "http_request_duration_seconds_sum", method="POST", **endpoint)
    assert value(samples, "http_request_body_wait_seconds_count", **endpoint) == 1
    # The client's 2 s pause, less the moments the server took to ask for the rest.
    assert waited >= 1 and line["body_wait_ms"] >= 1000
    assert line["duration_ms"] >= line["body_wait_ms"]
    # The service's part is the whole less the wait, in the metrics as in the line.
    assert abs(served - (line["duration_ms"] - line["body_wait_ms"]) / 1000) < 0.002
    assert abs(waited - line["body_wait_ms"] / 1000) < 0.002
    # A request without a body has no wait, and its line no field for one.
    assert "body_wait_ms" not in plain


def _finished(server: Server, route: str) -> list[dict[str, Any]]:
    return [
        e
        for e in server.events()
        if e.get("event") == "request_finished" and e.get("route") == route
    ]
