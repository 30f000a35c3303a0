"""Register, log in, log out and the current user's profile."""

from __future__ import annotations

import time
from contextlib import suppress
from datetime import UTC, datetime, timedelta

import orjson
import structlog
from pydantic import BaseModel, Field
from quart import Blueprint, Response, jsonify, request
from quart_auth import current_user, login_required, login_user, logout_user
from quart_rate_limiter import rate_limit
from quart_schema import document_response, tag_blueprint, validate_request
from werkzeug.exceptions import RequestEntityTooLarge

from service.auth.devices import DeviceCookies
from service.auth.passwords import Passwords, needs_rehash
from service.auth.rate_limits import login_limits, refused_by, register_limits, submitted_username
from service.auth.sessions import (
    PROFILE_KEY_PREFIX,
    SESSION_CACHE_SECONDS,
    SESSION_COOKIE_NAME,
    SessionStore,
    SessionUser,
    current_session,
    keep_cookie,
)
from service.auth.signed_in import Copy, LocalSessions
from service.backends.cache import CacheError, InstrumentedCache
from service.backends.db import Database
from service.backends.db.models import User
from service.backends.db.users import (
    USERNAME_PATTERN,
    UsernameTaken,
    insert_user,
    select_user,
    select_user_by_username,
    update_login,
)
from service.http.api_docs import NoContent, declare_errors
from service.http.errors import APIError
from service.http.wrappers import json_body
from service.observability.context import bind_user
from service.observability.families import LoginResult
from service.observability.metrics import Metrics
from service.settings import MAX_PASSWORD_LENGTH, Settings

logger = structlog.get_logger(__name__)
REGISTER_RETRY_SECONDS = 600
REGISTER_RETRY = timedelta(seconds=REGISTER_RETRY_SECONDS)


class NewAccount(BaseModel):
    username: str = Field(pattern=USERNAME_PATTERN)
    # The length floor is the password policy's (PASSWORD_MIN_LENGTH), answered as weak_password.
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class Credentials(BaseModel):
    username: str = Field(pattern=USERNAME_PATTERN)
    # No policy here: accounts made under an older policy must still sign in.
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class Profile(BaseModel):
    id: int
    username: str
    created_at: datetime
    last_login_at: datetime | None


class SessionsEnded(BaseModel):
    sessions_ended: int


class SignedIn(BaseModel):
    id: int
    username: str


def create_blueprint(
    settings: Settings,
    metrics: Metrics,
    sessions: SessionStore,
    database: Database,
    cache: InstrumentedCache,
    passwords: Passwords,
    local: LocalSessions | None = None,
) -> Blueprint:
    """The auth routes, with the parts they use; built per app because their rate limits come
    from settings."""
    blueprint = Blueprint("auth", __name__, url_prefix="/api/auth")
    tag_blueprint(blueprint, ["sign-in"])
    devices = DeviceCookies(settings)

    @blueprint.post("/register")
    @rate_limit(limits=register_limits(settings))
    @validate_request(NewAccount)
    @document_response(Profile, 201)
    @declare_errors(400, 408, 409, 413, 415, 429, 503)
    async def register(data: NewAccount) -> tuple[Response, int]:
        """Create an account.

        201 with its profile. Safe to retry: the same username and
        password again within 10 minutes of the account's creation answer 201 with the same
        profile (the first answer may have been lost after the account was made); any other
        registration of a taken username is 409 `username_taken`."""
        username = data.username.lower()
        weakness = await passwords.check_new(data.password, username, settings.password_min_length)
        if weakness is not None:
            raise APIError(400, "weak_password", weakness.message, reason=weakness.reason)
        password_hash = await passwords.hash(data.password)
        try:
            async with database.transaction() as session:
                user = await insert_user(session, username, password_hash)
        except UsernameTaken:
            retried = await _registered_just_now(database, passwords, username, data.password)
            if retried is None:
                # The one deliberate signal that a username exists (rate limited; docs/sign-in.md).
                raise APIError(409, "username_taken", "This username is already taken.") from None
            logger.info("user_registered", user_id=retried.id, retry=True)
            return jsonify(_profile(retried).model_dump(mode="json")), 201
        logger.info("user_registered", user_id=user.id)
        return jsonify(_profile(user).model_dump(mode="json")), 201

    @blueprint.post("/login")
    @rate_limit(limits=login_limits(settings, devices))
    @validate_request(Credentials)
    @document_response(SignedIn, 200)
    @declare_errors(400, 401, 408, 413, 415, 429, 503)
    async def login(data: Credentials) -> Response:
        """Sign in: a session cookie and a device cookie.

        401 `invalid_credentials` on a wrong username or password; 429 `rate_limited` (with
        `Retry-After`) past the limits per client address and per username, or per device for a
        browser that signed in as this user before."""
        username = data.username.lower()
        logger.info("login_attempt", username=username, known_device=_known(devices, username))
        async with database.transaction() as session:
            user = await select_user_by_username(session, username)
        # Always one argon2 verification (a dummy hash for an unknown user): the time of the
        # answer must not tell whether the username exists.
        verified = await passwords.verify(user.password_hash if user else None, data.password)
        if user is None or not verified:
            metrics.login_answered("invalid_credentials")
            logger.warning(
                "login_failed",
                username=username,
                reason="invalid_credentials",
                known_device=_known(devices, username),
            )
            raise APIError(401, "invalid_credentials", "Wrong username or password.")
        new_hash = await passwords.hash(data.password) if needs_rehash(user.password_hash) else None
        async with database.transaction() as session:
            await update_login(session, user.id, new_hash)
            token = await sessions.start(session, user.id)
        await _forget_profile(cache, user.id)
        previous = current_user.auth_id
        login_user(SessionUser(token, store=sessions))
        bind_user(user.id)
        metrics.login_answered("success")
        logger.info("login_success", user_id=user.id, username=username)
        if previous is not None:
            await _end_replaced_session(sessions, previous)
        response = jsonify(SignedIn(id=user.id, username=user.username).model_dump())
        devices.remember(response, username)
        return response

    @blueprint.after_request
    async def no_store(response: Response) -> Response:
        # Profiles, session cookies and auth errors are per user: no cache may keep them.
        response.headers["Cache-Control"] = "no-store"
        return response

    @blueprint.after_request
    async def log_rejected_login(response: Response) -> Response:
        reason = _REJECTED_LOGIN_REASONS.get(response.status_code)
        if request.endpoint == "auth.login" and request.method == "POST" and reason is not None:
            username = None
            # A body over MAX_BODY_BYTES cannot be read (413) even when the answer was another
            # refusal that never read it (a 429 from the per-address limit): logged without a name.
            with suppress(RequestEntityTooLarge):
                username = await submitted_username()
            metrics.login_answered(reason)
            logger.warning(
                "login_failed",
                username=username,
                reason=reason,
                known_device=_known(devices, username),
                limit=refused_by(),  # which budget refused a 429: address, username, device
            )
        return response

    @blueprint.post("/logout")
    @document_response(NoContent, 204)
    @declare_errors(503)
    async def logout() -> Response:
        """Sign out: end this session and clear its cookie.

        204 with or without a session. The cookie stays
        until the session has ended, so a logout that failed (503) can be retried."""
        token = current_user.auth_id
        keep_cookie()
        if token is not None:
            user_id = await sessions.end(token)
            if user_id is not None:
                metrics.logged_out("session")
                logger.info("logout", user_id=user_id)
        logout_user()
        return Response(status=204)

    @blueprint.post("/logout-all")
    @document_response(SessionsEnded, 200)
    @declare_errors(401, 503)
    async def logout_all() -> Response:
        """Sign out everywhere: end every session of the signed-in user.

        On every device; 200 with how many ended. Its own session is checked
        in the database alone, so a logout-all that failed half-way can be retried."""
        token = current_user.auth_id
        keep_cookie()
        user_id = await sessions.owner(token) if token is not None else None
        if user_id is None:
            raise APIError(401, "unauthorized", "Authentication is required.")
        bind_user(user_id)
        ended = await sessions.end_all(user_id)
        logout_user()
        metrics.logged_out("all")
        logger.info("logout_all", user_id=user_id, sessions_ended=ended)
        return jsonify(SessionsEnded(sessions_ended=ended).model_dump())

    @blueprint.get("/me")
    @login_required
    @document_response(Profile, 200)
    @declare_errors(401, 503)
    async def me() -> Response:
        """The signed-in user's profile.

        Read through the cache; 401 without a live session."""
        session = await current_session()
        if session is None:
            raise APIError(401, "unauthorized", "Authentication is required.")
        ttl = settings.profile_cache_ttl
        if session.profile_read:  # a cached session came with its user's cached profile
            profile = _readable(session.profile) or await _profile_from_database(
                database, cache, session.user_id, ttl
            )
        else:
            profile = await _cached_profile(database, cache, session.user_id, ttl)
        if profile is None:
            logout_user()
            raise APIError(401, "unauthorized", "Authentication is required.")
        body = json_body(profile)
        if local is not None:  # this worker answers the same cookie again from a copy
            copy = Copy(
                session.id,
                session.user_id,
                body,
                valid_until=sessions.copy_until(session),
                fresh_until=time.monotonic() + min(SESSION_CACHE_SECONDS, ttl),
            )
            local.remember(request.scope, request.cookies[SESSION_COOKIE_NAME], copy)
        return Response(body, content_type="application/json")

    return blueprint


_REJECTED_LOGIN_REASONS: dict[int, LoginResult] = {
    400: "invalid_input",
    413: "invalid_input",
    429: "rate_limited",
}


async def _end_replaced_session(sessions: SessionStore, token: str) -> None:
    """A login from a browser that had a session replaces it: the old one is ended, so sessions
    do not pile up. The login has succeeded whatever happens here."""
    try:
        await sessions.end(token, tidying=True)
    except Exception:
        logger.warning("replaced_session_not_ended", exc_info=True)


async def _registered_just_now(
    database: Database, passwords: Passwords, username: str, password: str
) -> User | None:
    """The account a retried registration made, if it is one: created within
    REGISTER_RETRY_SECONDS with this very password. The first attempt's answer can be lost after
    its commit (a dropped connection, a reply to COMMIT that never came, a worker killed); its
    retry then answers as the first would have, not 409 to the account's own owner."""
    async with database.transaction() as session:
        user = await select_user_by_username(session, username)
    if user is None or datetime.now(UTC) - user.created_at > REGISTER_RETRY:
        return None
    return user if await passwords.verify(user.password_hash, password) else None


def _profile(user: User) -> Profile:
    return Profile(
        id=user.id,
        username=user.username,
        created_at=user.created_at,
        last_login_at=user.last_login_at,
    )


def _profile_key(user_id: int) -> str:
    return f"{PROFILE_KEY_PREFIX}{user_id}"


def _readable(cached: str | None) -> dict[str, object] | None:
    """A cached profile as written by `_cached_profile`; anything else reads as a miss."""
    if cached is None:
        return None
    try:
        profile = orjson.loads(cached)
    except orjson.JSONDecodeError:
        return None
    return profile if isinstance(profile, dict) else None


async def _cached_profile(
    database: Database, cache: InstrumentedCache, user_id: int, ttl: int
) -> dict[str, object] | None:
    """Read-through: the cache first; on a miss (or a cache outage) the database."""
    try:
        cached = await cache.get(_profile_key(user_id))
    except CacheError:
        cached = None
        logger.warning("cache_unavailable", operation="get")
    if (profile := _readable(cached)) is not None:
        return profile
    return await _profile_from_database(database, cache, user_id, ttl)


async def _profile_from_database(
    database: Database, cache: InstrumentedCache, user_id: int, ttl: int
) -> dict[str, object] | None:
    """The profile from the database, cached for the next read (a cache miss already seen)."""
    async with database.transaction() as session:
        user = await select_user(session, user_id)
    if user is None:
        return None
    profile = _profile(user).model_dump(mode="json")
    try:
        await cache.set(_profile_key(user_id), orjson.dumps(profile).decode(), ttl)
    except CacheError:
        logger.warning("cache_unavailable", operation="set")
    return profile


async def _forget_profile(cache: InstrumentedCache, user_id: int) -> None:
    """Drop the cached profile, and every worker's copy of it (service/auth/signed_in.py)."""
    try:
        await cache.delete(_profile_key(user_id), announce=f"user {user_id}")
    except CacheError:
        logger.warning("cache_unavailable", operation="delete")


def _known(devices: DeviceCookies, username: str | None) -> bool:
    """For the login lines: whether the browser has signed in as this user before."""
    return username is not None and devices.device(username) is not None
