"""The user domain over HTTP, on PostgreSQL + Redis and on the embedded default."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from sqlalchemy import update

from service.app import ServiceApp, create_app
from service.auth import passwords
from service.auth.devices import COOKIE_NAME
from service.backends.db.models import User
from service.backends.db.users import insert_user
from service.settings import Settings
from service.version import VERSION
from tests.support.client import Client, login, register, set_cookie


async def test_index_describes_the_service(client: Client) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["service"] == "eBook Scene Packer"
    assert body["version"] == VERSION
    assert body["docs"] == {"openapi": "/openapi.json", "ui": "/docs"}


async def test_register_login_me_logout(client: Client) -> None:
    response = await register(client, "Alice")
    assert response.status_code == 201
    created = await response.get_json()
    assert created["username"] == "alice"
    assert "password" not in str(created) and "hash" not in str(created)

    response = await login(client, "alice")
    assert response.status_code == 200
    assert (await response.get_json())["id"] == created["id"]

    response = await client.get("/api/auth/me")
    assert response.status_code == 200
    me = await response.get_json()
    assert me["username"] == "alice"
    assert me["last_login_at"] is not None

    response = await client.post("/api/auth/logout")
    assert response.status_code == 204
    response = await client.get("/api/auth/me")
    assert response.status_code == 401


async def test_me_is_read_through_and_invalidated_on_login(client: Client) -> None:
    await register(client)
    await login(client)
    first = await (await client.get("/api/auth/me")).get_json()
    again = await (await client.get("/api/auth/me")).get_json()
    assert again == first
    await login(client)  # changes last_login_at, so the cached profile must be dropped
    after = await (await client.get("/api/auth/me")).get_json()
    assert after["last_login_at"] > first["last_login_at"]


async def test_duplicate_username_is_409(client: Client) -> None:
    assert (await register(client, "bob")).status_code == 201
    response = await register(client, "BOB", "plum orchard velvet ninety")  # not a retry
    assert response.status_code == 409
    assert (await response.get_json())["error"]["code"] == "username_taken"


async def test_wrong_password_and_unknown_user_are_the_same_401(
    client: Client,
) -> None:
    await register(client, "carol")
    wrong = await login(client, "carol", "not the password")
    unknown = await login(client, "nobody", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    assert (await wrong.get_json())["error"]["code"] == "invalid_credentials"
    assert (await wrong.get_json())["error"]["message"] == (await unknown.get_json())["error"][
        "message"
    ]


async def test_me_without_session_is_401(client: Client) -> None:
    response = await client.get("/api/auth/me")
    assert response.status_code == 401
    assert (await response.get_json())["error"]["code"] == "unauthorized"


async def test_forged_session_cookie_is_401(client: Client) -> None:
    client.set_cookie("localhost", "scene_packer_session", "IjEi.forged.signature")  # type: ignore[attr-defined]
    response = await client.get("/api/auth/me")
    assert response.status_code == 401


async def test_a_burst_of_logins_leaves_the_shared_thread_pool_free(settings: Settings) -> None:
    """Hashes run in the app's own pool (PASSWORD_HASH_THREADS): asyncio's default pool, where the
    health checks probe disk and memory under their timeouts, stays free however many logins are
    hashing. Every hashing thread is held busy here until the default pool has answered."""
    app = create_app(settings.model_copy(update={"password_hash_threads": 2}))
    async with app.test_app():
        pool = app.parts.passwords.pool
        release = threading.Event()
        busy = [asyncio.wrap_future(pool.submit(release.wait)) for _ in range(2)]
        queued = asyncio.ensure_future(app.parts.passwords.verify(None, "a wrong password"))
        try:
            assert await asyncio.to_thread(shutil.disk_usage, ".")
            assert not queued.done() and not any(task.done() for task in busy)
        finally:
            release.set()
            await asyncio.gather(*busy)
        assert await queued is False


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("password", "too_short"),
        ("12345678", "too_short"),
        (" " * 8, "too_short"),
        ("dora", "too_short"),
        ("elevenchars", "too_short"),
        ("dora-the-explorer-2026", "contains_username"),
        ("DORA" * 4, "contains_username"),
        ("password1234", "guessable"),
        ("qwertyuiopasdf", "guessable"),
        (" " * 12, "guessable"),
        ("iloveyou1234", "guessable"),
    ],
)
async def test_weak_passwords_are_400_weak_password(
    client: Client, password: str, reason: str
) -> None:
    response = await register(client, "dora", password)
    assert response.status_code == 400
    error = (await response.get_json())["error"]
    assert (error["code"], error["reason"]) == ("weak_password", reason)
    assert error["message"] and error["request_id"]
    if password.strip():
        assert password not in error["message"]
    assert (await login(client, "dora", password)).status_code == 401  # nothing was created


async def test_the_minimum_length_is_a_setting(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"password_min_length": 20}))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        short = await register(client, "erin", "violet quartz ember")  # 19 characters
        assert (await short.get_json())["error"]["reason"] == "too_short"
        assert (await register(client, "erin", "violet quartz embers")).status_code == 201


async def test_an_account_from_an_older_policy_still_signs_in(
    client: Client, app: ServiceApp
) -> None:
    password_hash = await app.parts.passwords.hash("old-pw1")
    async with app.parts.database.transaction() as session:
        await insert_user(session, "frank", password_hash)
    assert (await login(client, "frank", "old-pw1")).status_code == 200


@pytest.mark.production_hashes
async def test_unknown_users_cost_the_same_argon2_work(client: Client, app: ServiceApp) -> None:
    """A login for an unknown username runs an argon2 verification in the hashing pool, against
    a real hash of the current parameters, as a wrong password does (the timing is measured by
    `python -m bench login_timing`, docs/benchmarks.md)."""
    jobs: list[tuple[object, ...]] = []
    pool = app.parts.passwords.pool
    submit = pool.submit

    def recording_submit(function: Any, *args: Any) -> Any:
        jobs.append(args)
        return submit(function, *args)

    pool.submit = recording_submit
    await register(client, "known")
    jobs.clear()
    assert (await login(client, "known", "a wrong password")).status_code == 401
    assert (await login(client, "unknown", "a wrong password")).status_code == 401
    (known_hash, known_password), (unknown_hash, unknown_password) = jobs
    assert str(known_hash).startswith("$argon2id$v=19$m=65536,t=3,p=4$") and unknown_hash is None
    assert known_password == unknown_password == "a wrong password"
    dummy = passwords._dummy_hash()
    assert dummy.startswith("$argon2id$") and not passwords.needs_rehash(dummy)
    assert await app.parts.passwords.verify(None, "a wrong password") is False
    assert await app.parts.passwords.verify(None, "") is False


async def test_preflights_spend_no_login_budget(client: Client) -> None:
    await register(client)
    for _ in range(30):
        response = await client.open("/api/auth/login", method="OPTIONS")
        assert response.status_code == 200
    response = await login(client)
    assert response.status_code == 200
    assert response.headers["RateLimit-Remaining"] == "19"


async def test_auth_answers_are_never_cached(client: Client) -> None:
    await register(client)
    responses = [await login(client), await client.get("/api/auth/me")]
    responses.append(await login(client, password="a wrong password"))
    for response in responses:
        assert response.headers["Cache-Control"] == "no-store"


async def test_an_oversized_body_past_the_address_limit_is_429_not_500(settings: Settings) -> None:
    """The per-address limit answers 429 without reading the body; the rejected-login record
    must not read it afterwards either (a body over MAX_BODY_BYTES was a 500 there)."""
    limits = {"login_limit_per_ip": 1, "login_limit_per_username": 100}
    app = create_app(settings.model_copy(update=limits))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await login(client, "nobody", "a wrong password")).status_code == 401
        oversized = {"username": "bob", "password": "x" * (settings.max_body_bytes + 1)}
        with structlog.testing.capture_logs() as logs:
            response = await client.post("/api/auth/login", json=oversized)
        assert response.status_code == 429
        assert (await response.get_json())["error"]["request_id"]
        assert not [line for line in logs if line["event"] == "request_failed"]
        (line,) = [line for line in logs if line["event"] == "login_failed"]
        assert (line["reason"], line["username"]) == ("rate_limited", None)


async def test_malformed_usernames_spend_no_username_budget(settings: Settings) -> None:
    limits = {"login_limit_per_username": 2, "login_limit_per_ip": 100}
    app = create_app(settings.model_copy(update=limits))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await register(client, "carol")
        for malformed in (" carol", "CAROL!", "c" * 40, " carol", "x y"):
            response = await login(client, malformed, "correct horse battery")
            assert (await response.get_json())["error"]["code"] == "invalid_body"
        # Its own budget still holds (for browsers that never signed in as carol: device cookies
        # have their own budgets).
        browsers = [test_app.test_client() for _ in range(3)]
        statuses = [(await login(browser, "carol")).status_code for browser in browsers]
        assert statuses == [200, 200, 429]


async def test_an_attacker_spending_a_usernames_budget_cannot_lock_out_its_browsers(
    settings: Settings,
) -> None:
    """OWASP's device cookies: a browser that signed in as a user has its own login budget. An
    attacker who spends the username's budget stops only browsers that never signed in as that
    user; a cookie for another user, or a forged one, counts for nothing."""
    limits = {"login_limit_per_username": 3, "login_limit_per_ip": 100}
    app = create_app(settings.model_copy(update=limits))
    async with app.test_app() as test_app:
        owner, attacker, newcomer = (test_app.test_client() for _ in range(3))
        await register(owner, "grace")
        signed_in = await login(owner, "grace")
        assert signed_in.status_code == 200
        cookie = set_cookie(signed_in, COOKIE_NAME)
        attributes = {part.strip().split("=")[0] for part in cookie.split(";")[1:]}
        assert {"HttpOnly", "Max-Age", "Path", "SameSite"} <= attributes
        assert "Path=/api/auth/login;" in cookie and "SameSite=Strict" in cookie
        assert "grace" not in cookie

        with structlog.testing.capture_logs() as logs:
            guesses = [await login(attacker, "grace", "wrong password") for _ in range(4)]
        assert [guess.status_code for guess in guesses] == [401, 401, 429, 429]
        refusals = [line for line in logs if line["event"] == "login_failed"]
        assert {line["known_device"] for line in refusals} == {False}
        assert [line.get("limit") for line in refusals] == [None, None, "username", "username"]
        assert (await login(newcomer, "grace")).status_code == 429  # an unknown browser waits

        with structlog.testing.capture_logs() as logs:
            assert (await login(owner, "grace")).status_code == 200
        (attempt,) = [line for line in logs if line["event"] == "login_attempt"]
        assert attempt["known_device"] is True
        (success,) = [line for line in logs if line["event"] == "login_success"]
        assert success["username"] == "grace"

        # Another user's device cookie, or a forged one, makes no browser known.
        await register(newcomer, "heidi")
        assert (await login(newcomer, "heidi")).status_code == 200
        assert (await login(newcomer, "grace")).status_code == 429
        value = cookie.split(";", 1)[0].split("=", 1)[1]
        forged = value[:-4] + ("AAAA" if not value.endswith("AAAA") else "BBBB")
        attacker.set_cookie("localhost", COOKIE_NAME, forged, path="/api/auth/login")  # type: ignore[attr-defined]
        assert (await login(attacker, "grace")).status_code == 429

        # The known browser has a budget of its own, not none: a stolen device cookie still
        # guesses no faster than the username's limit.
        with structlog.testing.capture_logs() as logs:
            guesses = [await login(owner, "grace", "wrong password") for _ in range(3)]
        assert [guess.status_code for guess in guesses] == [401, 401, 429]
        assert [line.get("limit") for line in logs if line["event"] == "login_failed"] == [
            None, None, "device"
        ]  # fmt: skip


async def test_a_planted_device_cookie_does_not_hide_the_real_one(settings: Settings) -> None:
    """A cookie of the same name set beside the real one (by a sibling domain, say) is sent with
    it; the browser stays known. The cookie names its user only by a keyed digest."""
    limits = {"login_limit_per_username": 2, "login_limit_per_ip": 100}
    app = create_app(settings.model_copy(update=limits))
    async with app.test_app() as test_app:
        owner, attacker = test_app.test_client(), test_app.test_client()
        await register(owner, "ivy")
        signed_in = await login(owner, "ivy")
        real = set_cookie(signed_in, COOKIE_NAME).split(";", 1)[0].split("=", 1)[1]
        assert (
            hashlib.sha256(b"ivy").hexdigest()[:32]
            not in base64.urlsafe_b64decode(real.split(".", 1)[0] + "==").decode()
        )
        for _ in range(2):
            await login(attacker, "ivy", "wrong password")
        assert (await login(attacker, "ivy")).status_code == 429  # the username's budget is spent
        planted = {"Cookie": f"{COOKIE_NAME}=planted; {COOKIE_NAME}={real}"}
        response = await test_app.test_client().post(
            "/api/auth/login",
            json={"username": "ivy", "password": "correct horse battery"},
            headers=planted,
        )
        assert response.status_code == 200


async def test_a_retried_registration_answers_as_the_first(client: Client, app: ServiceApp) -> None:
    """The first answer can be lost after its commit; the client's retry must not be told that
    its own new account is someone else's."""
    first = await register(client, "olga")
    again = await register(client, "olga")
    assert first.status_code == again.status_code == 201
    assert await again.get_json() == await first.get_json()
    taken = await register(client, "olga", "plum orchard velvet ninety")
    assert taken.status_code == 409  # another password: someone else
    async with app.parts.database.transaction() as session:
        await session.execute(
            update(User).values(created_at=datetime.now(UTC) - timedelta(minutes=11))
        )
    assert (await register(client, "olga")).status_code == 409  # no longer a retry
