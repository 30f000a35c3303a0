"""Register, log in, log out and the current user's profile."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import structlog
from pydantic import BaseModel, Field
from quart import Blueprint, Response, current_app, jsonify, request
from quart_auth import AuthUser, current_user, login_required, login_user, logout_user
from quart_rate_limiter import rate_limit
from quart_schema import validate_request

from service.cache import CacheError, get_cache
from service.db import get_database
from service.db.models import User
from service.db.users import (
    UsernameTaken,
    insert_user,
    select_user,
    select_user_by_username,
    update_login,
)
from service.errors import APIError
from service.observability.context import bind_user
from service.passwords import hash_password, needs_rehash, verify_password
from service.rate_limits import login_limits, register_limits
from service.settings import Settings

logger = structlog.get_logger(__name__)

USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,32}$"


class Credentials(BaseModel):
    username: str = Field(pattern=USERNAME_PATTERN)
    password: str = Field(min_length=8, max_length=256)


class Profile(BaseModel):
    id: int
    username: str
    created_at: datetime
    last_login_at: datetime | None


def create_blueprint(settings: Settings) -> Blueprint:
    """The auth routes; built per app because their rate limits come from settings."""
    blueprint = Blueprint("auth", __name__, url_prefix="/api/auth")

    @blueprint.post("/register")
    @rate_limit(limits=register_limits(settings))
    @validate_request(Credentials)
    async def register(data: Credentials) -> tuple[Response, int]:
        username = data.username.lower()
        password_hash = await hash_password(data.password)
        try:
            async with get_database().transaction() as session:
                user = await insert_user(session, username, password_hash)
        except UsernameTaken:
            raise APIError(409, "username_taken", "This username is already taken.") from None
        logger.info("user_registered", user_id=user.id)
        return jsonify(_profile(user).model_dump(mode="json")), 201

    @blueprint.post("/login")
    @rate_limit(limits=login_limits(settings))
    @validate_request(Credentials)
    async def login(data: Credentials) -> Response:
        username = data.username.lower()
        logger.info("login_attempt", username=username)
        async with get_database().transaction() as session:
            user = await select_user_by_username(session, username)
        hash_ = user.password_hash if user is not None else None
        if user is None or not await verify_password(hash_, data.password):
            logger.warning("login_failed", username=username, reason="invalid_credentials")
            raise APIError(401, "invalid_credentials", "Wrong username or password.")
        new_hash = await hash_password(data.password) if needs_rehash(user.password_hash) else None
        async with get_database().transaction() as session:
            await update_login(session, user.id, new_hash)
        await _forget_profile(user.id)
        login_user(AuthUser(str(user.id)))
        bind_user(user.id)
        logger.info("login_success", user_id=user.id)
        return jsonify({"id": user.id, "username": user.username})

    @blueprint.after_request
    async def log_rejected_login(response: Response) -> Response:
        reason = _REJECTED_LOGIN_REASONS.get(response.status_code)
        if request.endpoint == "auth.login" and reason is not None:
            username = await _submitted_username() if response.status_code != 413 else None
            logger.warning("login_failed", username=username, reason=reason)
        return response

    @blueprint.post("/logout")
    async def logout() -> Response:
        if await current_user.is_authenticated:
            logger.info("logout", user_id=current_user.auth_id)
        logout_user()
        return Response(status=204)

    @blueprint.get("/me")
    @login_required
    async def me() -> Response:
        user_id = _current_user_id()
        profile = await _cached_profile(user_id)
        if profile is None:
            logout_user()
            raise APIError(401, "unauthorized", "Authentication is required.")
        return jsonify(profile)

    return blueprint


_REJECTED_LOGIN_REASONS = {400: "invalid_input", 413: "invalid_input", 429: "rate_limited"}


async def _submitted_username() -> str | None:
    """The username of a rejected login, only when it is a well-formed one (safe to log)."""
    body = await request.get_json(silent=True)
    username = body.get("username") if isinstance(body, dict) else None
    if isinstance(username, str) and re.fullmatch(USERNAME_PATTERN, username):
        return username.lower()
    return None


def _current_user_id() -> int:
    auth_id = current_user.auth_id
    try:
        return int(auth_id or "")
    except ValueError:
        raise APIError(401, "unauthorized", "Authentication is required.") from None


def _profile(user: User) -> Profile:
    return Profile(
        id=user.id,
        username=user.username,
        created_at=_utc(user.created_at),
        last_login_at=_utc(user.last_login_at) if user.last_login_at else None,
    )


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were stored as UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _profile_key(user_id: int) -> str:
    return f"profile:{user_id}"


async def _cached_profile(user_id: int) -> dict[str, object] | None:
    """Read-through: the cache first; on a miss (or a cache outage) the database."""
    cache = get_cache()
    try:
        cached = await cache.get(_profile_key(user_id))
    except CacheError:
        cached = None
        logger.warning("cache_unavailable", operation="get")
    if cached is not None:
        profile: dict[str, object] = json.loads(cached)
        return profile
    async with get_database().transaction() as session:
        user = await select_user(session, user_id)
    if user is None:
        return None
    profile = _profile(user).model_dump(mode="json")
    settings: Settings = current_app.extensions["settings"]
    try:
        await cache.set(_profile_key(user_id), json.dumps(profile), settings.profile_cache_ttl)
    except CacheError:
        logger.warning("cache_unavailable", operation="set")
    return profile


async def _forget_profile(user_id: int) -> None:
    try:
        await get_cache().delete(_profile_key(user_id))
    except CacheError:
        logger.warning("cache_unavailable", operation="delete")
