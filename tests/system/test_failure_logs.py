"""Every write path made to fail at the database, for real, leaves no password, password hash or
session token in any log line (production output of a real hypercorn)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from quart_auth.extension import _AuthSerializer
from sqlalchemy.engine import make_url

from service.auth.sessions import SESSION_COOKIE_NAME, SESSION_COOKIE_SALT, stored_id
from tests.support.backends import REDIS_URL, admin, run_alembic
from tests.support.server import PRODUCTION_ENV, Server, running_server
from tests.support.stack import ThreadedProxy

PASSWORD = "quartz meridian lantern sorbet"  # a passphrase, spaces and all
USER = {"username": "walter", "password": PASSWORD}


def _env(database_url: str) -> dict[str, str]:
    return {
        **PRODUCTION_ENV,
        "SESSION_COOKIE_SECURE": "false",
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "CACHE_KEY_PREFIX": f"test-{uuid.uuid4().hex[:8]}:",
        "DB_POOL_TIMEOUT": "1",
        "DB_CONNECT_TIMEOUT": "1",
    }


def _sign_in(client: httpx.Client) -> str:
    client.post("/api/auth/register", json=USER)
    response = client.post("/api/auth/login", json=USER)
    assert response.status_code == 200
    return response.cookies[SESSION_COOKIE_NAME]


def _attempt_every_write(client: httpx.Client, cookie: str | None) -> list[int]:
    """Register, log in, log out, log out everywhere: every path that writes."""
    headers = {"Cookie": f"{SESSION_COOKIE_NAME}={cookie}"} if cookie else {}
    client.cookies.clear()
    return [
        client.post("/api/auth/register", json={**USER, "username": "xavier"}).status_code,
        client.post("/api/auth/login", json=USER).status_code,
        client.post("/api/auth/logout-all", headers=headers).status_code,
        client.post("/api/auth/logout", headers=headers).status_code,
    ]


def _assert_nothing_secret_logged(server: Server, cookie: str | None) -> None:
    output = server.output.read_text()
    assert "$argon2" not in output
    for word in PASSWORD.split():
        assert word not in output
    if cookie:
        token = _token(cookie)
        for secret in (cookie, token, stored_id(token)):
            assert secret not in output
    assert "[parameters:" not in output  # SQLAlchemy's rendering of the bound values


def test_unmigrated_schema(tmp_path: Path, empty_database: str) -> None:
    with (
        running_server(tmp_path, _env(empty_database)) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        statuses = _attempt_every_write(client, None)
    assert statuses[:2] == [500, 500]
    _assert_nothing_secret_logged(server, None)
    assert "UndefinedTable" in server.output.read_text()  # the failure itself is logged


def test_writes_the_database_refuses(tmp_path: Path, empty_database: str) -> None:
    """A role that may read but not write: every INSERT, UPDATE and DELETE fails at the database."""
    run_alembic(empty_database, "upgrade", "head")
    database = make_url(empty_database).database
    role = f"reader_{uuid.uuid4().hex[:8]}"
    admin(f'CREATE ROLE "{role}" LOGIN')
    try:
        with (
            running_server(tmp_path, _env(empty_database)) as server,
            httpx.Client(base_url=server.base_url, timeout=30) as client,
        ):
            cookie = _sign_in(client)
        grant = f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"'
        admin(grant, database)
        read_only = make_url(empty_database).set(username=role)
        env = _env(read_only.render_as_string(hide_password=False))
        with (
            running_server(tmp_path, env) as server,
            httpx.Client(base_url=server.base_url, timeout=30) as client,
        ):
            statuses = _attempt_every_write(client, cookie)
        assert statuses == [500, 500, 500, 500]
        assert "InsufficientPrivilege" in server.output.read_text()
        _assert_nothing_secret_logged(server, cookie)
    finally:
        admin(f'DROP OWNED BY "{role}"', database)
        admin(f'DROP ROLE IF EXISTS "{role}"')


def test_connection_cut(tmp_path: Path, postgres_url: str) -> None:
    proxy = ThreadedProxy(make_url(postgres_url).port or 5432)
    proxy.start()
    via_proxy = make_url(postgres_url).set(host="127.0.0.1", port=proxy.port)
    try:
        with (
            running_server(
                tmp_path, _env(via_proxy.render_as_string(hide_password=False))
            ) as server,
            httpx.Client(base_url=server.base_url, timeout=30) as client,
        ):
            cookie = _sign_in(client)
            proxy.cut()
            statuses = _attempt_every_write(client, cookie)
        assert statuses == [503, 503, 503, 503]
        _assert_nothing_secret_logged(server, cookie)
    finally:
        proxy.close()


def _token(cookie: str) -> str:
    """The session token inside a signed cookie (quart-auth's serializer, the test secret)."""
    serializer = _AuthSerializer(PRODUCTION_ENV["SECRET_KEY"], SESSION_COOKIE_SALT)
    token: str = serializer.loads(cookie)
    return token
