"""What an operator reads: real hypercorn output in production mode, one JSON object a line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from service.observability.logging import configure_logging, redact, redact_url
from service.settings import load_settings
from tests.support.client import Client
from tests.support.server import PRODUCTION_ENV, Server, running_server

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
        asyncio.run(asyncio.sleep(0.3))  # let the background task finish
    return server, seen


async def _concurrent_logins(base_url: str, count: int) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await asyncio.gather(
            *(
                client.post(
                    "/api/auth/login",
                    json={"username": f"user{i:03d}", "password": "whatever-password"},
                    headers={"X-Request-ID": f"concurrent-{i:03d}"},
                )
                for i in range(count)
            )
        )


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


def test_timestamps_are_iso_utc_with_microseconds() -> None:
    stream = io.StringIO()
    configure_logging(load_settings(environment="production", secret_key="x" * 40), stream)
    before = datetime.now(UTC).replace(microsecond=0)
    structlog.get_logger("t").info("first")
    structlog.get_logger("t").info("second")
    after = datetime.now(UTC)
    stamps = [json.loads(line)["timestamp"] for line in stream.getvalue().splitlines()]
    for stamp in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
        assert before <= datetime.fromisoformat(stamp) <= after
    assert stamps == sorted(stamps)


def test_tracebacks_and_stacks_are_rendered_then_redacted() -> None:
    stream = io.StringIO()
    configure_logging(load_settings(environment="production", secret_key="x" * 40), stream)
    dsn = "postgresql://app:hunter2-secret@db:5432/app"
    try:
        raise ConnectionError(f"cannot reach {dsn}")
    except ConnectionError:
        structlog.get_logger("t").exception("structlog_failure")
        logging.getLogger("stdlib.t").exception("stdlib_failure")
    structlog.get_logger("t").info("where", stack_info=True)
    lines = {event["event"]: event for event in map(json.loads, stream.getvalue().splitlines())}
    for name in ("structlog_failure", "stdlib_failure"):
        assert "ConnectionError" in lines[name]["exception"]
        assert "app:***@db" in lines[name]["exception"]
    assert lines["stdlib_failure"]["logger"] == "stdlib.t"
    assert "test_tracebacks_and_stacks_are_rendered_then_redacted" in lines["where"]["stack"]
    assert "hunter2" not in stream.getvalue()


def test_development_output_to_a_file_has_no_colour_codes() -> None:
    stream = io.StringIO()  # not a terminal, like a log file or a pipe
    configure_logging(load_settings(environment="development"), stream)
    structlog.get_logger("t").info("plain", answer=42)
    output = stream.getvalue()
    assert "plain" in output and "answer=42" in output
    assert "\x1b[" not in output


def test_redaction_at_any_depth_and_in_urls() -> None:
    event = {
        "event": "x",
        "password": "p1",
        "nested": {"Authorization": "Bearer t", "list": [{"set-cookie": "c"}, "plain"]},
        "db_api_key": "k",
        "dsn": "postgresql+asyncpg://user:pa55@host:5432/db",
        "redis": "redis://:pw@cache:6379/0",
        "username": "alice",
    }
    result = redact(None, "info", event)
    assert result["password"] == "[REDACTED]"
    assert result["nested"]["Authorization"] == "[REDACTED]"
    assert result["nested"]["list"][0]["set-cookie"] == "[REDACTED]"
    assert result["nested"]["list"][1] == "plain"
    assert result["db_api_key"] == "[REDACTED]"
    assert result["dsn"] == "postgresql+asyncpg://user:***@host:5432/db"
    assert result["redis"] == "redis://:***@cache:6379/0"
    assert result["username"] == "alice"
    assert redact_url("no credentials here") == "no credentials here"


def test_a_flag_named_like_a_secret_is_shown() -> None:
    """`SESSION_COOKIE_SECURE: false` in the start-up line tells how the service runs; a yes, a
    no or nothing holds no secret. Any other value under such a name is still hidden."""
    event = {
        "event": "service_started",
        "session_cookie_secure": False,
        "metrics_token": None,
        "settings": {"SESSION_COOKIE_SECURE": True, "METRICS_TOKEN": None, "SECRET_KEY": "s3"},
        "token": 0,
        "cookie": "",
    }
    result = redact(None, "info", event)
    assert (result["session_cookie_secure"], result["metrics_token"]) == (False, None)
    assert result["settings"] == {
        "SESSION_COOKIE_SECURE": True, "METRICS_TOKEN": None, "SECRET_KEY": "[REDACTED]"
    }  # fmt: skip
    assert (result["token"], result["cookie"]) == ("[REDACTED]", "[REDACTED]")


@pytest.mark.parametrize("environment", ["production", "development"])
def test_control_characters_cannot_forge_a_line(environment: str, tmp_path: Path) -> None:
    stream = io.StringIO()
    settings = load_settings(environment=environment, secret_key="x" * 40, data_dir=tmp_path)
    configure_logging(settings, stream)
    forged = 'a\n{"event": "fake"}\r\x1b[2J'
    structlog.get_logger("t").warning("forge", username=forged)
    logging.getLogger("stdlib.t").warning("std %s", "b\nforged line")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    if environment == "production":
        assert json.loads(lines[0])["username"] == forged
        assert json.loads(lines[1])["event"] == "std b\nforged line"
    else:
        escaped = forged.encode("unicode_escape").decode("ascii")
        assert f"username={escaped!r}" in lines[0]
        assert "std b\\nforged line" in lines[1]


ARGON2_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQxMjM0$aGFzaGhhc2hoYXNoaGFzaGhhc2g"


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJlLXZhbHVl"


@pytest.mark.parametrize("environment", ["production", "development"])
def test_secret_shaped_values_are_masked_in_messages_and_tracebacks(
    environment: str, tmp_path: Path
) -> None:
    stream = io.StringIO()
    settings = load_settings(environment=environment, secret_key="x" * 40, data_dir=tmp_path)
    configure_logging(settings, stream)
    try:
        raise ValueError(f"insert failed: ('bob', '{ARGON2_HASH}', 7) for token={JWT}")
    except ValueError:
        structlog.get_logger("t").exception("structlog_failure")
        logging.getLogger("stdlib.t").exception("stdlib_failure")
    structlog.get_logger("t").warning("upstream", detail="sent Authorization: Bearer abc123XYZ.def")
    logging.getLogger("stdlib.t").warning("api_key=%s rejected", "k-12345678")
    structlog.get_logger("t").warning("row", detail=f"password_hash={ARGON2_HASH} user=bob")
    structlog.get_logger("t").warning("body", detail='{"password": "violet quartz ember"}')
    structlog.get_logger("t").warning("hdr", detail="Cookie: theme=dark; scene_packer_session=s3s")
    structlog.get_logger("t").warning("hdr", detail="X-Api-Key: key-5551 and pwd=pw-7781")
    output = stream.getvalue()
    secrets = ("$argon2id", "c2FsdHNhbHQxMjM0", "aGFzaGhhc2hoYXNo", JWT, "eyJzdWIiOiI0MiJ9")
    secrets += ("abc123XYZ", "k-1234", "quartz", "s3s", "key-5551", "pw-7781")
    for secret in secrets:
        assert secret not in output
    assert output.count("[REDACTED]") >= 9
    assert "user=bob" in output
    assert "ValueError" in output and "insert failed" in output  # the failure itself stays


def test_start_line_says_what_runs_and_hides_secrets(production_run: Any) -> None:
    server, _ = production_run
    (started,) = [e for e in _events(server) if e["event"] == "service_started"]
    assert started["environment"] == "production"
    assert started["database"] == "sqlite+aiosqlite" and started["cache"] == "in-process"
    assert started["settings_changed"]["ENVIRONMENT"] == "production"
    assert started["settings_changed"]["SECRET_KEY"] == "[REDACTED]"
    assert started["settings_changed"]["LOGIN_LIMIT_PER_IP"] == 1000
    assert PRODUCTION_ENV["SECRET_KEY"] not in server.output.read_text()


async def test_start_and_stop_lines_mask_the_database_password(tmp_path: Path) -> None:
    from service.app import create_app

    settings = load_settings(
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
        redis_url="",
        metrics_token="tok-12345678",
    )
    app = create_app(settings)
    with structlog.testing.capture_logs() as events:
        async with app.test_app():
            pass
    (started,) = [e for e in events if e["event"] == "service_started"]
    assert started["settings_changed"]["METRICS_TOKEN"] == "[REDACTED]"
    assert "tok-12345678" not in str(events)
    (stopped,) = [e for e in events if e["event"] == "service_stopped"]
    assert stopped["served_seconds"] >= 0
    # Through the real pipeline a URL keeps its host and loses its password.
    line = {"event": "x", "settings_changed": {"DATABASE_URL": "postgresql://app:pw-9@db/x"}}
    assert redact(None, "info", line)["settings_changed"]["DATABASE_URL"] == (
        "postgresql://app:***@db/x"
    )


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_an_error_answer_names_its_code_on_the_request_line(client: Client) -> None:
    with structlog.testing.capture_logs() as logs:
        await client.post("/api/auth/login", json={"username": "nobody", "password": "x" * 12})
        await client.get("/no/such/page")
        await client.post("/api/auth/register", data=b"x", headers={"Content-Type": "text/plain"})
        await client.get("/")
    lines = [event for event in logs if event["event"] == "request_finished"]
    assert [(line["status"], line.get("error_code")) for line in lines] == [
        (401, "invalid_credentials"),
        (404, "not_found"),
        (415, "unsupported_media_type"),
        (200, None),
    ]
    assert "error_code" not in lines[-1]
