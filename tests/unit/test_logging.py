"""The log pipeline in process: timestamps, redaction, tracebacks, colours and the request line."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from service.observability.logging import configure_logging
from service.observability.redaction import redact, redact_url
from service.settings import load_settings
from tests.support.client import Client

# Production names its backends; these tests write log lines only.
_EMBEDDED = {"database_url": "sqlite+aiosqlite://", "redis_url": "memory://"}


def test_timestamps_are_iso_utc_with_microseconds() -> None:
    stream = io.StringIO()
    configure_logging(
        load_settings(environment="production", secret_key="x" * 40, **_EMBEDDED), stream
    )
    before = datetime.now(UTC).replace(microsecond=0)
    structlog.get_logger("t").info("first")
    structlog.get_logger("t").info("second")
    after = datetime.now(UTC)
    stamps = [json.loads(line)["timestamp"] for line in stream.getvalue().splitlines()]
    assert len(stamps) == 2
    for stamp in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
        assert before <= datetime.fromisoformat(stamp) <= after
    assert stamps == sorted(stamps)


def test_tracebacks_and_stacks_are_rendered_then_redacted() -> None:
    stream = io.StringIO()
    configure_logging(
        load_settings(environment="production", secret_key="x" * 40, **_EMBEDDED), stream
    )
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


def test_a_password_with_an_at_sign_or_a_space_is_masked_whole() -> None:
    """A password as an operator may type it: its tail must not show after the mask."""
    for url, shown in (
        ("redis://:S3cr3t@M@127.0.0.1:6379/11", "redis://:***@127.0.0.1:6379/11"),
        ("redis://:S3cr3t T@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql://app:pa@ss w@rd@db:5432/x?a=1", "postgresql://app:***@db:5432/x?a=1"),
        ("postgresql://app:p@db", "postgresql://app:***@db"),
    ):
        assert redact_url(url) == shown
        assert redact_url(f"start {url} done") == f"start {shown} done"


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


@pytest.mark.parametrize("stream_kind", ["text", "binary"])
@pytest.mark.parametrize("environment", ["production", "development"])
def test_control_characters_cannot_forge_a_line(
    environment: str, stream_kind: str, tmp_path: Path
) -> None:
    """Nor can the characters that end a line for some readers only (NEL, LS, PS): Python's
    `splitlines`, used here, splits on all of them."""
    raw = io.BytesIO()
    stream: Any = io.TextIOWrapper(raw, encoding="utf-8") if stream_kind == "binary" else None
    text = io.StringIO()
    settings = load_settings(
        environment=environment, secret_key="x" * 40, data_dir=tmp_path, **_EMBEDDED
    )
    configure_logging(settings, stream or text)
    forged = 'a\n{"event": "fake"}\r\x1b[2J\x85{"event": "nel"}\u2028ls\u2029ps'
    structlog.get_logger("t").warning("forge", username=forged)
    logging.getLogger("stdlib.t").warning("std %s", "b\nforged\u2028line")
    structlog.get_logger("t").warning("separator only", path="/x\u2029y")
    if stream is not None:
        stream.flush()
    output = raw.getvalue().decode() if stream is not None else text.getvalue()
    lines = output.splitlines()
    assert len(lines) == 3, lines
    if environment == "production":
        assert json.loads(lines[0])["username"] == forged
        assert json.loads(lines[1])["event"] == "std b\nforged\u2028line"
        assert json.loads(lines[2])["path"] == "/x\u2029y"
    else:
        escaped = forged.encode("unicode_escape").decode("ascii")
        assert f"username={escaped!r}" in lines[0]
        assert "std b\\nforged\\u2028line" in lines[1]
        assert "path=/x\\u2029y" in lines[2]


ARGON2_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQxMjM0$aGFzaGhhc2hoYXNoaGFzaGhhc2g"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJlLXZhbHVl"


@pytest.mark.parametrize("environment", ["production", "development"])
def test_secret_shaped_values_are_masked_in_messages_and_tracebacks(
    environment: str, tmp_path: Path
) -> None:
    stream = io.StringIO()
    settings = load_settings(
        environment=environment, secret_key="x" * 40, data_dir=tmp_path, **_EMBEDDED
    )
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


def test_a_value_orjson_cannot_write_keeps_its_line() -> None:
    """An integer beyond 64 bits (a poisoned cache entry's user id, say): the line is still
    written, the value with it, instead of vanishing."""
    stream = io.StringIO()
    configure_logging(
        load_settings(environment="production", secret_key="x" * 40, **_EMBEDDED), stream
    )
    structlog.get_logger("t").info("huge", user_id=2**70, note="caf\u00e9 \u2028")
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert (event["event"], event["user_id"], event["note"]) == ("huge", 2**70, "caf\u00e9 \u2028")
