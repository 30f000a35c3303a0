"""Server-side sessions: logout ends a session everywhere, logout-all ends them all, expired and
idle sessions are refused, sessions survive a restart, and a failing store fails closed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from service.auth.sessions import SESSION_COOKIE_NAME
from tests.support.backends import REDIS_URL, make_settings
from tests.support.server import PRODUCTION_ENV, running_server


@pytest.mark.parametrize("backend", ["postgres", "embedded"])
def test_two_workers_refuse_a_logged_out_cookie_and_keep_sessions_over_a_restart(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = {**PRODUCTION_ENV, "SESSION_COOKIE_SECURE": "false", "LOG_LEVEL": "WARNING"}
    if backend == "postgres":
        settings = make_settings(backend, request.getfixturevalue("postgres_url"), tmp_path)
        env |= {
            "DATABASE_URL": settings.effective_database_url,
            "REDIS_URL": REDIS_URL,
            "CACHE_KEY_PREFIX": settings.cache_key_prefix,
        }
    config = {"workers": 2}
    credentials = {"username": f"two-{backend}", "password": "correct horse battery"}
    with running_server(tmp_path, env, app="tests.support.apps:app", config=config) as server:
        httpx.post(server.base_url + "/api/auth/register", json=credentials, timeout=10)
        login = httpx.post(server.base_url + "/api/auth/login", json=credentials, timeout=10)
        cookie = {"Cookie": f"{SESSION_COOKIE_NAME}={login.cookies[SESSION_COOKIE_NAME]}"}
        assert _answers_by_worker(server.base_url, cookie) == {200}
    with running_server(tmp_path, env, app="tests.support.apps:app", config=config) as server:
        assert _answers_by_worker(server.base_url, cookie) == {200}  # survived the restart
        logout = httpx.post(server.base_url + "/api/auth/logout", headers=cookie, timeout=10)
        assert logout.status_code == 204
        assert _answers_by_worker(server.base_url, cookie) == {401}


def _answers_by_worker(base_url: str, cookie: dict[str, str]) -> set[int]:
    """The statuses of GET /api/auth/me with this cookie header, asked until both workers
    answered (a new connection each time)."""
    statuses: dict[str, set[int]] = {}
    for _ in range(400):
        response = httpx.get(
            base_url + "/api/auth/me", headers={**cookie, "Connection": "close"}, timeout=10
        )
        statuses.setdefault(response.headers["X-Worker-PID"], set()).add(response.status_code)
        if len(statuses) == 2:
            break
    assert len(statuses) == 2, "one worker answered every request"
    return set().union(*statuses.values())
