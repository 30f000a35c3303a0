"""Signed-in reads answered from a worker's own copy (service/auth/signed_in.py), on real
PostgreSQL and Redis: the same answer as Quart's without a word to Redis, and never once the
session ended or the profile changed on another instance, nor while the worker cannot prove it
would have heard (its Redis cut or hung).

Two apps in one process, on the same database, Redis and key prefix, stand for two instances."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from pydantic import SecretStr
from quart.testing.app import TestApp as Instance
from sqlalchemy.engine import make_url

from service.app import ServiceApp, create_app
from service.settings import Settings
from tests.support.backends import REDIS_URL, make_settings
from tests.support.client import login, register, session_cookie
from tests.support.faults import TcpProxy

ME = "/api/auth/me"


def _copies_answered(app: ServiceApp) -> float:
    """cache_requests_total{operation="copy", result="hit"} of this app."""
    try:
        value: float = app.parts.metrics.cache_requests.get({"operation": "copy", "result": "hit"})
    except KeyError:  # none yet
        return 0
    return value


async def _until_answered_from_copy(app: Instance, cookie: str) -> Any:
    """Read until this app answers from its copy (the first read makes it, the channel's first
    answered PING lets it be used); that answer."""
    service = app.app
    assert isinstance(service, ServiceApp)
    client = app.test_client()
    for _ in range(200):
        before = _copies_answered(service)
        answer = await client.get(ME, headers={"Cookie": cookie})
        assert answer.status_code == 200, await answer.get_data()
        if _copies_answered(service) > before:
            return answer
        await asyncio.sleep(0.02)
    raise AssertionError("the copy was never used")


@asynccontextmanager
async def _instances(settings: list[Settings]) -> AsyncIterator[list[Instance]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(create_app(s).test_app()) for s in settings]


@asynccontextmanager
async def _redis_through_proxy(settings: Settings) -> AsyncIterator[tuple[Settings, TcpProxy]]:
    target = make_url(REDIS_URL)
    proxy = TcpProxy(target.port or 6379)
    await proxy.start()
    url = target.set(port=proxy.port).render_as_string(hide_password=False)
    try:
        yield settings.model_copy(update={"redis_url": SecretStr(url)}), proxy
    finally:
        await proxy.cut()


async def _signed_in(app: Instance, username: str) -> str:
    client = app.test_client()
    await register(client, username)
    return session_cookie(await login(client, username))


async def test_a_repeated_read_is_the_same_answer_without_asking_redis(
    postgres_url: str, tmp_path: Path
) -> None:
    settings = make_settings("postgres", postgres_url, tmp_path)
    async with _instances([settings]) as (app,):
        cookie = await _signed_in(app, "olga")
        first = await app.test_client().get(ME, headers={"Cookie": cookie})  # Quart's answer
        await _until_answered_from_copy(app, cookie)
        watcher = aioredis.Redis.from_url(REDIS_URL)
        marker = f"end-{uuid.uuid4().hex}"
        try:
            async with watcher.monitor() as monitor:
                copy = await app.test_client().get(ME, headers={"Cookie": cookie})
                await watcher.echo(marker)
                seen = []
                while marker not in (command := await monitor.next_command())["command"]:
                    if settings.cache_key_prefix in command["command"]:
                        seen.append(command["command"])
        finally:
            await watcher.aclose()
    assert copy.status_code == first.status_code == 200
    assert await copy.get_data() == await first.get_data()
    for header in ("Content-Type", "Content-Length", "Cache-Control"):
        assert copy.headers[header] == first.headers[header]
    # Nothing about sessions or profiles (the channel's PINGs name no key).
    assert [c for c in seen if "PING" not in c] == []


async def test_an_ending_on_another_instance_is_refused_here_at_once(
    postgres_url: str, tmp_path: Path
) -> None:
    settings = make_settings("postgres", postgres_url, tmp_path)
    async with _instances([settings, settings]) as (here, there):
        cookie = await _signed_in(there, "petra")
        await _until_answered_from_copy(here, cookie)
        assert (
            await there.test_client().post("/api/auth/logout", headers={"Cookie": cookie})
        ).status_code == 204
        assert (await here.test_client().get(ME, headers={"Cookie": cookie})).status_code == 401

        # Every session of a user, ended by logout-all from another one.
        client = there.test_client()
        await login(client, "petra")
        first = session_cookie(await login(client, "petra"))
        second = session_cookie(await login(there.test_client(), "petra"))
        for cookie in (first, second):
            await _until_answered_from_copy(here, cookie)
        ended = await there.test_client().post("/api/auth/logout-all", headers={"Cookie": first})
        assert (await ended.get_json())["sessions_ended"] >= 2
        for cookie in (first, second):
            assert (await here.test_client().get(ME, headers={"Cookie": cookie})).status_code == 401


async def test_a_profile_changed_elsewhere_is_read_anew(postgres_url: str, tmp_path: Path) -> None:
    """A login changes the profile (`last_login_at`): a copy of another session's read goes."""
    settings = make_settings("postgres", postgres_url, tmp_path)
    async with _instances([settings, settings]) as (here, there):
        cookie = await _signed_in(there, "quinn")
        before = await (await _until_answered_from_copy(here, cookie)).get_json()
        await login(there.test_client(), "quinn")
        after = await (await here.test_client().get(ME, headers={"Cookie": cookie})).get_json()
    assert after["last_login_at"] > before["last_login_at"]


async def test_a_cut_redis_forgets_every_copy(postgres_url: str, tmp_path: Path) -> None:
    """This instance's Redis is cut (connections reset, new ones refused) and the session is
    ended through another: the read is refused (from the database), and copies are used again
    once Redis is back."""
    settings = make_settings("postgres", postgres_url, tmp_path)
    async with (
        _redis_through_proxy(settings) as (proxied, proxy),
        _instances([proxied, settings]) as (here, there),
    ):
        cookie = await _signed_in(there, "rosa")
        await _until_answered_from_copy(here, cookie)
        await proxy.cut()
        assert (
            await there.test_client().post("/api/auth/logout", headers={"Cookie": cookie})
        ).status_code == 204
        assert (await here.test_client().get(ME, headers={"Cookie": cookie})).status_code == 401
        await proxy.start()
        cookie = session_cookie(await login(there.test_client(), "rosa"))
        await _until_answered_from_copy(here, cookie)  # reconnected, and trusted again


async def test_a_hung_redis_stops_the_copies_being_believed(
    postgres_url: str, tmp_path: Path
) -> None:
    """The worst case: this instance's path to Redis goes silent (connections open, nothing
    passes) while another instance reaches Redis and ends the session. The ending answers only
    once no copy can be believed, so the very next read here is refused."""
    settings = make_settings("postgres", postgres_url, tmp_path, redis_socket_timeout=0.3)
    async with (
        _redis_through_proxy(settings) as (proxied, proxy),
        _instances([proxied, settings]) as (here, there),
    ):
        cookie = await _signed_in(there, "sven")
        await _until_answered_from_copy(here, cookie)
        assert proxy.hang() >= 1
        assert (
            await there.test_client().post("/api/auth/logout", headers={"Cookie": cookie})
        ).status_code == 204
        assert (await here.test_client().get(ME, headers={"Cookie": cookie})).status_code == 401
