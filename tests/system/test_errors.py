"""Every failure is a JSON error with the right status and no internals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT
from tests.support.server import parse_answer, raw_exchange, running_server


def test_through_hypercorn_options_and_leading_slashes(tmp_path: Path) -> None:
    """What the test client cannot send or show: OPTIONS answers `Allow` with no body and no
    Content-Type, and a path starting with `//` (which werkzeug would route as if it had one
    slash, past a proxy's rule on `/metrics`) is 404."""
    with running_server(tmp_path, {}) as server:
        for path in ("//metrics", "///api/health", "//", "//api/auth/me"):
            response = httpx.get(server.base_url + path)
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "not_found"
        # The same path in absolute form (as a client talking to a proxy sends it).
        target = f"GET {server.base_url}//metrics HTTP/1.1\r\nHost: test\r\n"
        answer = raw_exchange(server.base_url, f"{target}Connection: close\r\n\r\n".encode())
        assert parse_answer(answer)[0] == 404, answer[:200]
        for path, allowed in (
            ("/api/auth/login", "OPTIONS, POST"),
            ("/api/health", "GET, HEAD, OPTIONS"),
        ):
            response = httpx.options(server.base_url + path)
            assert response.status_code == 200
            assert response.headers["Allow"] == allowed
            assert response.headers["Content-Length"] == "0"
            assert "Content-Type" not in response.headers


@pytest.mark.parametrize(
    ("environment", "setting"),
    [
        ({"ENVIRONMENT": "production"}, "SECRET_KEY"),
        ({"ENVIRONMENT": "staging"}, "ENVIRONMENT"),
        ({"DB_POOL_SIZE": "lots"}, "DB_POOL_SIZE"),
        ({"DATABASE_URL": "mysql://localhost/x"}, "DATABASE_URL"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"TRUSTED_PROXIES": "10.0.0.0/8,not-an-ip"}, "TRUSTED_PROXIES"),
        ({"PASSWORD_HASH_THREADS": "0"}, "PASSWORD_HASH_THREADS"),
        ({"MEMORY_ALERT_PERCENT": "95"}, "MEMORY_ALERT_PERCENT"),  # above the check's 90
    ],
)
def test_bad_setting_fails_start_up_with_one_line_naming_it(
    environment: dict[str, str], setting: str, tmp_path: Path
) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), **environment}
    result = subprocess.run(
        [sys.executable, "-c", "import service.asgi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert setting in lines[0]
    assert "Traceback" not in result.stderr


def test_a_bad_setting_in_production_is_one_json_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), "ENVIRONMENT": "production"}
    result = subprocess.run(
        [sys.executable, "-c", "import service.asgi"],
        cwd=ROOT,
        env={**env, "DB_POOL_SIZE": "lots"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    event = json.loads(line)
    assert event["event"] == "configuration_invalid"
    assert event["level"] == "error"
    names = [problem["setting"] for problem in event["problems"]]
    assert names == ["DB_POOL_SIZE"]


def test_an_answer_before_the_body_has_arrived_closes_the_connection(tmp_path: Path) -> None:
    """A registration over the limit is refused before its body is read: half the body is still
    to come, so the connection cannot carry another request, and the answer says so (without it,
    the client's next request on the connection fails)."""
    with running_server(tmp_path, {"REGISTER_LIMIT_PER_IP": "1"}) as server:
        body = b'{"username": "ivan", "password": "correct horse battery"}'
        first = httpx.post(
            server.base_url + "/api/auth/register",
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        head = (
            b"POST /api/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        # Half the body, then nothing: the server answers and closes, or this waits 30 s.
        status, headers, _ = parse_answer(raw_exchange(server.base_url, head + body[:10]))
    assert first.status_code == 201 and "connection" not in first.headers
    assert status == 429
    assert headers["connection"] == "close"
