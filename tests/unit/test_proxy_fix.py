"""The client's address behind trusted proxies, decided once at the edge
(service.http.proxy_fix)."""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from service.app import create_app
from service.http.proxy_fix import ProxyFix
from service.observability.context import add_request_context
from service.settings import Settings
from tests.support.client import Client


async def _client_seen(trusted: list[str], peer: str, forwarded: list[str]) -> str:
    seen: list[Any] = []

    async def downstream(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["client"])

    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    scope = {"type": "http", "headers": headers, "client": (peer, 5555)}
    await ProxyFix(downstream, trusted)(scope, None, None)  # type: ignore[arg-type]
    assert scope["client"] == (peer, 5555)  # the server's own scope is left as it was
    return str(seen[0][0])


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("10.0.0.5", ["203.0.113.7"], "203.0.113.7"),  # from a trusted proxy: believed
        ("198.51.100.1", ["203.0.113.7"], "198.51.100.1"),  # from anyone else: ignored
        ("10.0.0.5", ["6.6.6.6, 203.0.113.7, 10.0.0.2"], "203.0.113.7"),  # rightmost untrusted
        ("10.0.0.5", ["6.6.6.6", "203.0.113.7"], "203.0.113.7"),  # headers joined in order
        ("10.0.0.5", ["not-an-address"], "10.0.0.5"),  # garbage: the proxy itself
        ("10.0.0.5", ["10.0.0.9"], "10.0.0.9"),  # every hop trusted: the leftmost
    ],
)
async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    peer: str, forwarded: list[str], client: str
) -> None:
    assert await _client_seen(["10.0.0.0/8"], peer, forwarded) == client


async def test_rate_limits_count_the_client_behind_the_proxy(settings: Settings) -> None:
    limited = settings.model_copy(
        update={"trusted_proxies": ["127.0.0.1"], "register_limit_per_ip": 2}
    )
    app = create_app(limited)
    async with app.test_app() as test_app:
        client = test_app.test_client()

        async def register_from(address: str, name: str) -> int:
            response = await client.post(
                "/api/auth/register",
                json={"username": name, "password": "correct horse battery"},
                headers={"X-Forwarded-For": address},
                scope_base={"client": ("127.0.0.1", 40000)},
            )
            return response.status_code

        first = [await register_from("203.0.113.7", f"user{i}") for i in range(3)]
        other = await register_from("203.0.113.8", "user9")
    assert first == [201, 201, 429]
    assert other == 201


@pytest.mark.parametrize(
    ("peer", "logged"),
    [
        ("fe80::1%eth0", "fe80::1"),  # no zone
        ("::ffff:192.0.2.1", "192.0.2.1"),  # an IPv4 client of a dual-stack socket
        ("2001:DB8:0:0::1", "2001:db8::1"),  # compressed, lower case
        ("198.51.100.4", "198.51.100.4"),
    ],
)
async def test_an_address_is_spelt_one_way(client: Client, peer: str, logged: str) -> None:
    with structlog.testing.capture_logs(processors=[add_request_context]) as events:
        assert (await client.get("/", scope_base={"client": (peer, 40000)})).status_code == 200
    (finished,) = [e for e in events if e["event"] == "request_finished"]
    assert finished["client_ip"] == logged


@pytest.mark.parametrize(("prefix", "refused"), [(64, True), (128, False)])
async def test_an_ipv6_network_shares_one_address_budget(
    settings: Settings, prefix: int, refused: bool
) -> None:
    """One host is given a /64: a new address for every attempt gets no new budget."""
    limited = {"login_limit_per_ip": 3, "rate_limit_ipv6_prefix": prefix}
    app = create_app(settings.model_copy(update=limited))
    async with app.test_app() as test_app:
        client = test_app.test_client()

        async def login_from(address: str, name: str) -> int:
            response = await client.post(
                "/api/auth/login",
                json={"username": name, "password": "correct horse battery"},
                scope_base={"client": (address, 40000)},
            )
            return response.status_code

        same_network = [await login_from(f"2001:db8:1:2::{i}", f"nobody{i}") for i in range(1, 5)]
        next_network = await login_from("2001:db8:1:3::1", "nobody9")
    assert same_network == [401, 401, 401, 429 if refused else 401]
    assert next_network == 401
