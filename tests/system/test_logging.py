"""What an operator reads: real hypercorn output in production mode, one JSON object a line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

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
