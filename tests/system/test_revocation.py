"""Revocation stays immediate while workers answer signed-in reads from their own copies
(docs/sign-in.md): two instances of two workers each under `scene-packer serve`, behind a real
HAProxy running deploy/haproxy/haproxy.cfg, on real PostgreSQL and Redis.

1,000 rounds through HAProxy, 20 at a time, each with a session of its own: reads (which make
and use copies on whichever workers answer), a logout, and reads of the logged-out cookie, which
must every one be refused. Then instance a's Redis (reached through a TCP proxy) is hung, and
later cut, while the session is ended through instance b: a's very next reads are refused."""

from __future__ import annotations

import asyncio
import os
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from quart_auth.extension import _AuthSerializer
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from service.auth.sessions import SESSION_COOKIE_NAME, SESSION_COOKIE_SALT, stored_id
from service.backends.db.sessions import insert_session
from tests.support.backends import REDIS_URL
from tests.support.client import PASSWORD
from tests.support.faults import TcpProxy
from tests.support.haproxy import running_haproxy
from tests.support.metrics_helpers import parse, value
from tests.support.server import PRODUCTION_ENV, Server, running_server
from tests.support.waiting import until

ME = "/api/auth/me"
ROUNDS = 1000
AT_ONCE = 20
READS = 4  # at once, twice before the logout and once after it
# A logged-out cookie is refused: 401 from the database, or 503 when even the check could not be
# made in time (fail closed). Never 200.
REFUSED = {401, 503}


def _env(database_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    return {
        **PRODUCTION_ENV,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CACHE_KEY_PREFIX": prefix,
        # Generous: a's Redis is reached through a proxy on the test's busy event loop. A
        # request's session lookup has half of REQUEST_TIMEOUT, the Redis wait included.
        "REDIS_SOCKET_TIMEOUT": "2",
        "REQUEST_TIMEOUT": "8",
        "METRICS_SYNC_INTERVAL": "0.2",
        "TRUSTED_PROXIES": "127.0.0.1/32",
        "LOG_LEVEL": "WARNING",
        "SESSION_COOKIE_SECURE": "false",  # plain HTTP through HAProxy in this test
    }


class Sessions:
    """Sessions made straight in the database, with the cookies a login would have set: a
    thousand logins would spend minutes hashing passwords."""

    def __init__(self, database_url: str, user_id: int) -> None:
        self.engine = create_async_engine(database_url)
        self.user_id = user_id
        self.signer = _AuthSerializer(PRODUCTION_ENV["SECRET_KEY"], SESSION_COOKIE_SALT)

    async def new(self, count: int = 1) -> list[str]:
        tokens = [os.urandom(32).hex() for _ in range(count)]
        now = datetime.now(UTC)
        async with AsyncSession(self.engine) as db, db.begin():
            for token in tokens:
                await insert_session(
                    db, stored_id(token), self.user_id, now, now + timedelta(hours=1)
                )
        return [f"{SESSION_COOKIE_NAME}={self.signer.dumps(token)}" for token in tokens]


async def _reads(client: httpx.AsyncClient, url: str, cookie: str, count: int) -> list[int]:
    answers = await asyncio.gather(
        *(client.get(url + ME, headers={"Cookie": cookie}) for _ in range(count))
    )
    return [answer.status_code for answer in answers]


async def _logout(client: httpx.AsyncClient, url: str, cookie: str) -> None:
    answer = await client.post(url + "/api/auth/logout", headers={"Cookie": cookie})
    assert answer.status_code == 204, answer.text


def _copies_used(server: Server) -> float:
    metrics = parse(httpx.get(server.base_url + "/metrics", timeout=10).text)
    return value(metrics, "cache_requests_total", operation="copy", result="hit")


async def _warm(client: httpx.AsyncClient, server: Server, cookie: str) -> None:
    """Reads of `cookie` on `server` until its workers are seen answering from copies."""
    before = await asyncio.to_thread(_copies_used, server)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert set(await _reads(client, server.base_url, cookie, READS)) == {200}
        if await asyncio.to_thread(_copies_used, server) > before:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the instance never answered from a copy")


async def test_no_logged_out_cookie_is_answered_by_any_worker_of_any_instance(
    tmp_path: Path, postgres_url: str
) -> None:
    redis = make_url(REDIS_URL)
    redis_of_a = TcpProxy(redis.port or 6379)
    await redis_of_a.start()
    via_proxy = redis.set(port=redis_of_a.port).render_as_string(hide_password=False)
    prefix = f"test-{os.urandom(4).hex()}:"
    stack = ExitStack()
    try:
        instances: dict[str, Server] = {}
        for name, redis_url in (("a", via_proxy), ("b", REDIS_URL)):
            (tmp_path / name).mkdir()
            context = running_server(
                tmp_path / name,
                _env(postgres_url, redis_url, prefix),
                config={"workers": 2},
                supervised=True,
            )
            # Entered in a thread: the Redis proxy runs on this event loop meanwhile.
            instances[name] = await asyncio.to_thread(stack.enter_context, context)
        a, b = instances["a"], instances["b"]
        haproxy = stack.enter_context(
            running_haproxy(
                tmp_path,
                {name: s.base_url.removeprefix("http://") for name, s in instances.items()},
            )
        )
        await haproxy.wait_for("a", "UP")
        await haproxy.wait_for("b", "UP")
        async with httpx.AsyncClient(timeout=30) as client:
            user = {"username": "ulla", "password": PASSWORD}
            answer = await client.post(haproxy.url + "/api/auth/register", json=user)
            assert answer.status_code == 201, answer.text
            sessions = Sessions(postgres_url, answer.json()["id"])
            cookies = await sessions.new(ROUNDS)

            # 1. A thousand rounds through HAProxy.
            stale: list[int] = []

            async def rounds(mine: list[str]) -> None:
                for cookie in mine:
                    for _ in range(2):
                        assert set(await _reads(client, haproxy.url, cookie, READS)) == {200}
                    await _logout(client, haproxy.url, cookie)
                    stale.extend(
                        s for s in await _reads(client, haproxy.url, cookie, READS) if s != 401
                    )

            used_before = sum(
                await asyncio.gather(*(asyncio.to_thread(_copies_used, s) for s in (a, b)))
            )
            await asyncio.gather(*(rounds(cookies[i::AT_ONCE]) for i in range(AT_ONCE)))
            assert stale == [], f"{len(stale)} logged-out reads answered: {stale[:5]}"
            # The copies were really used (not every read fell through to Redis).
            await until(
                lambda: sum([_copies_used(a), _copies_used(b)]) - used_before >= ROUNDS // 10,
                10,
                "the workers hardly answered from copies",
            )

            # 2. a's path to Redis goes silent; the session is ended through b.
            (cookie,) = await sessions.new()
            await _warm(client, a, cookie)
            assert redis_of_a.hang() >= 2  # a subscription per worker, at least
            await _logout(client, b.base_url, cookie)
            assert set(await _reads(client, a.base_url, cookie, 2 * READS)) <= REFUSED

            # 3. Back, then cut (connections reset, new ones refused).
            await redis_of_a.cut()
            redis_of_a.hung = False
            await redis_of_a.start()
            (cookie,) = await sessions.new()
            await _warm(client, a, cookie)
            await redis_of_a.cut()
            await _logout(client, b.base_url, cookie)
            assert set(await _reads(client, a.base_url, cookie, 2 * READS)) <= REFUSED
        await sessions.engine.dispose()
    finally:
        await asyncio.to_thread(stack.close)
        await redis_of_a.cut()
