"""One deadline per request (REQUEST_TIMEOUT): a hung dependency costs a client a bounded wait and
a 503 `dependency_timeout`, and the cancelled work gives back every connection it held."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.support.metrics_helpers import parse, value
from tests.support.server import PRODUCTION_ENV, parse_answer, raw_exchange, running_server

# Generous: only tells "bounded by the deadline" from "waited for the client timeouts" (60 s).
DEADLINE = 1.0
BOUND = DEADLINE + 5


def _post_slowly(
    base_url: str, path: str, sent: bytes, length: int
) -> tuple[int, dict[str, str], bytes]:
    """POST declaring `length` bytes of body, send `sent` of them, then nothing more: the answer,
    read until the server closes the connection."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    return parse_answer(raw_exchange(base_url, head.encode() + sent))


def test_a_body_that_arrives_late_leaves_the_service_its_whole_deadline(tmp_path: Path) -> None:
    """The time a client takes to send its body is its own: a body finished just before the
    deadline, then work the route needs, answers 200, not a 503 counted against the service."""
    env = {**PRODUCTION_ENV, "REQUEST_TIMEOUT": "2"}
    with running_server(tmp_path, env, app="tests.support.apps:app") as server:
        body = b'{"padding": "' + b"x" * 64 + b'"}'
        head = (
            "POST /test/read-then-work/1000 HTTP/1.1\r\nHost: test\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        # Three quarters of the deadline between the start of the body and its rest.
        answer = raw_exchange(server.base_url, head.encode() + body[:10], body[10:], pause=1.5)
    assert parse_answer(answer)[0] == 200, answer
    assert not [e for e in server.events() if e["event"] == "request_deadline_exceeded"]


def test_quarts_own_body_timeout_answers_the_same_408(tmp_path: Path) -> None:
    """With REQUEST_TIMEOUT longer than Quart's BODY_TIMEOUT (60 s by default), Quart gives up on
    the body first: the same 408 `body_timeout` with `Connection: close`."""
    env = {**PRODUCTION_ENV, "REQUEST_TIMEOUT": "30", "TEST_BODY_TIMEOUT": "0.5"}
    with running_server(tmp_path, env, app="tests.support.apps:app") as server:
        status, headers, body = _post_slowly(server.base_url, "/api/auth/login", b"{", 400)
    error = json.loads(body)["error"]
    assert (status, error["code"]) == (408, "body_timeout")
    assert (headers["connection"], headers["cache-control"]) == ("close", "no-store")
    assert error["request_id"] == headers["x-request-id"]


@pytest.mark.parametrize("path", ["/api/auth/login", "/api/rum"])
def test_a_body_that_stops_arriving_answers_408_not_a_server_error(
    tmp_path: Path, path: str
) -> None:
    """A client that declares a body and stops sending it is the client's delay, not the
    service's: 408 `body_timeout` at the deadline, the connection closed, nothing counted
    against a dependency or the 5xx alerts."""
    env = {**PRODUCTION_ENV, "REQUEST_TIMEOUT": str(DEADLINE), "LOG_LEVEL": "INFO"}
    with running_server(tmp_path, env) as server:
        started = time.monotonic()
        status, headers, body = _post_slowly(server.base_url, path, b'{"username": "sl', 400)
        elapsed = time.monotonic() - started
        error = json.loads(body)["error"]
        assert (status, error["code"]) == (408, "body_timeout")
        assert error["request_id"] == headers["x-request-id"]
        assert headers["connection"] == "close"
        assert elapsed < BOUND
        samples = parse(httpx.get(server.base_url + "/metrics").text)
    finished = {e["request_id"]: e for e in server.events() if e["event"] == "request_finished"}
    assert finished[error["request_id"]]["status"] == 408
    assert finished[error["request_id"]]["error_code"] == "body_timeout"
    (late,) = [e for e in server.events() if e["event"] == "request_deadline_exceeded"]
    assert (late["waiting_on"], late["request_id"]) == ("client", error["request_id"])
    assert value(samples, "http_requests_total", method="POST", endpoint=path, status="408") == 1
    labels = frozenset({("dependency", "database"), ("reason", "timeout")})
    assert ("dependency_errors_total", labels) in samples  # the counters are there, at zero
    assert not [v for (name, _), v in samples.items() if name == "dependency_errors_total" and v]
