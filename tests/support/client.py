"""Requests a test makes of an in-process app, through Quart's test client."""

from __future__ import annotations

from typing import Any

from quart.typing import TestClientProtocol as Client

from service.auth.sessions import SESSION_COOKIE_NAME

__all__ = ["Client", "login", "register", "session_cookie", "session_token", "set_cookie"]

PASSWORD = "correct horse battery"


async def register(client: Client, username: str = "alice", password: str = PASSWORD) -> Any:
    return await client.post(
        "/api/auth/register", json={"username": username, "password": password}
    )


async def login(client: Client, username: str = "alice", password: str = PASSWORD) -> Any:
    return await client.post("/api/auth/login", json={"username": username, "password": password})


def set_cookie(response: Any, name: str) -> str:
    """The one `Set-Cookie` header of a response for cookie `name` (a login sets two)."""
    (header,) = [
        header for header in response.headers.getlist("Set-Cookie") if header.startswith(name + "=")
    ]
    return str(header)


def session_cookie(response: Any) -> str:
    """`name=value` of the session cookie a response sets."""
    return set_cookie(response, SESSION_COOKIE_NAME).split(";", 1)[0]


def session_token(response: Any) -> str:
    """The value of the session cookie a response sets."""
    return session_cookie(response).split("=", 1)[1]
