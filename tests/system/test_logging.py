"""What an operator reads: real hypercorn output in production mode, one JSON object a line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import PRODUCTION_ENV, Server, running_server
from tests.support.waiting import wait_until

PASSWORD = "Sup3r-secret-passphrase!"
SENTINEL_ENV = "SENTINEL_ENV_VALUE_4821"
SENTINEL_HEADER = "SENTINEL-HEADER-VALUE-9313"
PATH_SECRET = "PATH-SECRET-5521"


def _events(server: Server) -> list[dict[str, Any]]:
    lines = [line for line in server.lines() if line.strip()]
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    return events


def _finished(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in events if event["event"] == "request_finished"]


@pytest.fixture(scope="module")
def production_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Server, dict[str, Any]]:
    """One production server, driven through every path the assertions below read."""
    tmp_path = tmp_path_factory.mktemp("logging")
    env = {
        **PRODUCTION_ENV,
        "SESSION_COOKIE_SECURE": "false",
        "SENTINEL": SENTINEL_ENV,
        "LOGIN_LIMIT_PER_IP": "1000",
        "REGISTER_LIMIT_PER_IP": "1000",
        # 40 logins hash at once: on a busy machine the last wait longer than the default 5 s.
        "REQUEST_TIMEOUT": "60",
    }
    seen: dict[str, Any] = {}
    # hypercorn's access log is off in hypercorn.toml; enabled here to check what it may write.
    access_log = {"accesslog": "-"}
    with running_server(tmp_path, env, app="tests.support.apps:app", config=access_log) as server:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            headers = {"User-Agent": SENTINEL_HEADER, "Referer": SENTINEL_HEADER}
            credentials = {"username": "alice", "password": PASSWORD}
            client.post("/api/auth/register", json=credentials, headers=headers)
            login = client.post("/api/auth/login", json=credentials)
            seen["cookie"] = login.cookies.get("scene_packer_session")
            seen["me"] = client.get("/api/auth/me", headers={"X-Request-ID": "me-request-0001"})
            client.cookies.clear()
            # Same keep-alive connection, no cookie: nothing of the previous request may remain.
            seen["anonymous"] = client.get("/", headers={"X-Request-ID": "anon-request-0001"})
            seen["bad_id"] = client.get("/", headers={"X-Request-ID": "evil id\tinjected"})
            seen["not_found"] = client.get("/nope")
            # A path the client chose, with credentials in it (percent-decoded in the ASGI scope).
            seen["url_in_path"] = client.get(
                f"/files/https:%2F%2Fbob:{PATH_SECRET}@example.com/x",
                headers={"X-Request-ID": "url-in-path-01"},
            )
            seen["boom"] = client.get("/test/boom", headers={"X-Request-ID": "boom-request-01"})
            seen["background"] = client.get(
                "/test/background", headers={"X-Request-ID": "background-req-01"}
            )
            client.post("/api/auth/login", json={"username": "alice", "password": "wrong-pass"})
            client.post("/api/auth/login", json={"username": "alice"})
        asyncio.run(_concurrent_logins(server.base_url, 40))
        wait_until(
            lambda: any('"background_done"' in line for line in server.lines()),
            30,
            "the background task never logged",
        )
    return server, seen


async def _concurrent_logins(base_url: str, count: int) -> None:
    """`count` logins at once; every fourth user exists and signs in (its user id is bound to
    its request's context), the others are unknown."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for i in range(0, count, 4):
            credentials = {"username": f"user{i:03d}", "password": PASSWORD}
            assert (await client.post("/api/auth/register", json=credentials)).status_code == 201
        await asyncio.gather(
            *(
                client.post(
                    "/api/auth/login",
                    json={"username": f"user{i:03d}", "password": PASSWORD},
                    headers={"X-Request-ID": f"concurrent-{i:03d}"},
                )
                for i in range(count)
            )
        )


def test_every_line_is_json_including_server_lines(production_run: Any) -> None:
    server, _ = production_run
    events = _events(server)
    loggers = {event.get("logger") for event in events}
    assert {"hypercorn.error", "hypercorn.access", "service.request"} <= loggers
    for event in events:
        assert {"event", "level", "timestamp", "logger"} <= set(event)
        assert event["timestamp"].endswith("Z")


def test_one_line_per_request_with_the_repository_hypercorn_toml(tmp_path: Path) -> None:
    ids = [f"one-line-{n:04d}" for n in range(3)]
    with (
        running_server(tmp_path, PRODUCTION_ENV) as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        for request_id in ids:
            client.get("/", headers={"X-Request-ID": request_id})
    events = _events(server)
    assert not [e for e in events if e["logger"] == "hypercorn.access"]
    per_request = [e for e in events if e.get("request_id") in ids]
    assert [(e["event"], e["request_id"]) for e in per_request] == [
        ("request_finished", request_id) for request_id in ids
    ]


def test_request_finished_carries_the_context(production_run: Any) -> None:
    server, seen = production_run
    me = next(e for e in _finished(_events(server)) if e["request_id"] == "me-request-0001")
    assert me["method"] == "GET"
    assert me["path"] == "/api/auth/me"
    assert me["route"] == "/api/auth/me"
    assert me["status"] == 200
    assert me["client_ip"] == "127.0.0.1"
    assert isinstance(me["user_id"], int)
    assert me["response_bytes"] == len(seen["me"].content)
    assert me["duration_ms"] >= 0
    assert me["level"] == "info"
    assert seen["me"].headers["X-Request-ID"] == "me-request-0001"


def test_keep_alive_request_starts_clean(production_run: Any) -> None:
    server, seen = production_run
    anonymous = next(
        e for e in _finished(_events(server)) if e["request_id"] == "anon-request-0001"
    )
    assert anonymous["user_id"] is None
    assert anonymous["route"] == "/"
    assert seen["anonymous"].headers["X-Request-ID"] == "anon-request-0001"


def test_invalid_request_id_is_replaced_and_never_logged(production_run: Any) -> None:
    server, seen = production_run
    replaced = seen["bad_id"].headers["X-Request-ID"]
    assert replaced != "evil id\tinjected"
    assert len(replaced) >= 8
    assert "evil id" not in server.output.read_text()
    assert any(e.get("request_id") == replaced for e in _finished(_events(server)))


def test_errors_are_logged_at_their_level_with_request_id_in_body(production_run: Any) -> None:
    server, seen = production_run
    finished = {e["request_id"]: e for e in _finished(_events(server))}
    not_found_id = seen["not_found"].headers["X-Request-ID"]
    assert seen["not_found"].json()["error"]["request_id"] == not_found_id
    assert finished[not_found_id]["level"] == "warning"
    assert finished[not_found_id]["route"] is None
    assert finished["boom-request-01"]["level"] == "error"
    assert finished["boom-request-01"]["status"] == 500


def test_unhandled_exception_logs_one_request_failed_with_traceback(production_run: Any) -> None:
    server, seen = production_run
    assert seen["boom"].status_code == 500
    assert seen["boom"].headers["X-Request-ID"] == "boom-request-01"
    assert seen["boom"].json()["error"]["request_id"] == "boom-request-01"
    assert "internal detail" not in seen["boom"].text
    failures = [e for e in _events(server) if e["event"] == "request_failed"]
    assert len(failures) == 1
    failure = failures[0]
    assert failure["level"] == "error"
    assert failure["request_id"] == "boom-request-01"
    assert "RuntimeError" in failure["exception"]
    assert "Traceback" in failure["exception"]
    # The DSN in the exception text had its password stripped before rendering.
    assert "hunter2" not in server.output.read_text()
    assert "postgresql://app:***@db.internal" in failure["exception"]


def test_background_task_keeps_the_request_id(production_run: Any) -> None:
    server, _ = production_run
    done = [e for e in _events(server) if e["event"] == "background_done"]
    assert [e["request_id"] for e in done] == ["background-req-01"]


def test_no_password_cookie_header_or_environment_in_output(production_run: Any) -> None:
    server, seen = production_run
    output = server.output.read_text()
    assert seen["cookie"]
    for secret in (PASSWORD, seen["cookie"], SENTINEL_ENV, SENTINEL_HEADER, PATH_SECRET):
        assert secret not in output
    url_in_path = {e["request_id"]: e for e in _finished(_events(server))}["url-in-path-01"]
    assert url_in_path["path"] == "/files/https://bob:***@example.com/x"


def test_hypercorn_access_lines_hold_only_allow_listed_fields(production_run: Any) -> None:
    server, _ = production_run
    access = [e for e in _events(server) if e["logger"] == "hypercorn.access"]
    assert access
    allowed = {
        "event", "logger", "level", "timestamp", "method", "path", "status", "protocol", "peer",
        "duration_us", "request_id", "response_bytes", "client_ip", "route", "user_id",
    }  # fmt: skip
    for event in access:
        assert set(event) <= allowed, set(event) - allowed
    me = next(e for e in access if e.get("request_id") == "me-request-0001")
    assert me["status"] == 200 and me["path"] == "/api/auth/me"


def test_auth_events(production_run: Any) -> None:
    server, _ = production_run
    events = _events(server)
    names = [e["event"] for e in events]
    for name in ("user_registered", "login_attempt", "login_success", "login_failed"):
        assert name in names
    reasons = {e["reason"] for e in events if e["event"] == "login_failed"}
    assert {"invalid_credentials", "invalid_input"} <= reasons
    success = next(e for e in events if e["event"] == "login_success")
    assert isinstance(success["user_id"], int)


def test_concurrent_requests_never_see_each_others_context(production_run: Any) -> None:
    server, _ = production_run
    attempts = [
        e
        for e in _events(server)
        if e["event"] == "login_attempt" and e["username"].startswith("user")
    ]
    assert len(attempts) == 40
    for event in attempts:
        assert event["request_id"] == "concurrent-" + event["username"].removeprefix("user")
        assert "user_id" not in event
    # Each request's line carries its own user, or none: never another request's.
    signed_in = {
        e["request_id"]: e["user_id"]
        for e in _events(server)
        if e["event"] == "login_success" and e["request_id"].startswith("concurrent-")
    }
    assert len(set(signed_in.values())) == 10
    finished = [e for e in _finished(_events(server)) if e["request_id"].startswith("concurrent-")]
    assert len(finished) == 40
    for event in finished:
        assert event["user_id"] == signed_in.get(event["request_id"]), event


def test_start_line_says_what_runs_and_hides_secrets(production_run: Any) -> None:
    server, _ = production_run
    (started,) = [e for e in _events(server) if e["event"] == "service_started"]
    assert started["environment"] == "production"
    assert started["database"] == "sqlite+aiosqlite" and started["cache"] == "in-process"
    assert started["settings_changed"]["ENVIRONMENT"] == "production"
    assert started["settings_changed"]["SECRET_KEY"] == "[REDACTED]"
    assert started["settings_changed"]["LOGIN_LIMIT_PER_IP"] == 1000
    assert PRODUCTION_ENV["SECRET_KEY"] not in server.output.read_text()
