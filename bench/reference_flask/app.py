"""The original design, written minimally and faithfully, to measure the async rewrite against.

Flask + prometheus-flask-exporter + structlog, served by gunicorn with sync workers
(`gunicorn -c bench/reference_flask/gunicorn.conf.py bench.reference_flask.app:app`). Same
endpoints and the same work per request as the original: the health check runs its database,
cache, disk and memory checks one after another on every call; login reads the user, verifies
the argon2 hash and records the login. Configured by the service's DATABASE_URL and REDIS_URL
(a postgresql+asyncpg:// URL is used through psycopg2).

Signed-in reads (`GET /api/auth/me`, for the authenticated-read comparison) follow what a Flask
app of that design does with Flask-Login and a server-side session store (Flask-Session's Redis
interface), written out: the cookie holds a signed session id (itsdangerous, as Flask signs its
cookies); each request verifies it, reads the session from Redis and loads the user from a
Redis-cached profile, the database on a miss (a `user_loader` with a read-through cache). Same
round trips as the service: one Redis read for the session, one for the profile.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from datetime import UTC, datetime

import psutil
import redis
import structlog
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from flask import Flask, jsonify, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from prometheus_flask_exporter import PrometheusMetrics
from sqlalchemy import create_engine, text

structlog.configure(
    processors=[
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.JSONRenderer(),
    ],
    wrapper_class=structlog.make_filtering_bound_logger(30),  # WARNING, as the bench runs both
)
logger = structlog.get_logger()

database_url = os.environ["DATABASE_URL"].replace("+asyncpg", "+psycopg2")
engine = create_engine(database_url, pool_size=10, pool_pre_ping=True)
cache = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
hasher = PasswordHasher()
SESSION_COOKIE = "session"
SESSION_SECONDS = 7 * 24 * 3600
PROFILE_SECONDS = 60
signer = URLSafeTimedSerializer(os.environ["SECRET_KEY"], salt="flask-session")

app = Flask(__name__)
metrics = PrometheusMetrics(app)


@app.get("/")
def index():  # type: ignore[no-untyped-def]
    return jsonify(service="eBook Scene Packer", component="api", version="1.0.0")


@app.get("/api/health")
def health():  # type: ignore[no-untyped-def]
    services = {}
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        services["database"] = "healthy"
    except Exception:
        services["database"] = "unhealthy"
    try:
        cache.ping()
        services["cache"] = "healthy"
    except Exception:
        services["cache"] = "unhealthy"
    usage = shutil.disk_usage("/")
    free = usage.free / usage.total * 100
    services["disk"] = {
        "free_percent": round(free, 1),
        "status": "healthy" if free > 20 else "warning",
    }
    memory = psutil.virtual_memory().percent
    services["memory"] = {"percent_used": memory, "status": "healthy" if memory < 90 else "warning"}
    healthy = services["database"] == "healthy" and services["cache"] == "healthy"
    body = {
        "status": "healthy" if healthy else "degraded",
        "timestamp": datetime.now(UTC).isoformat(),
        "services": services,
    }
    return jsonify(body), 200 if healthy else 503


@app.post("/api/auth/login")
def login():  # type: ignore[no-untyped-def]
    data = request.get_json(silent=True) or {}
    username, password = str(data.get("username", "")).lower(), str(data.get("password", ""))
    logger.info("login_attempt", username=username)
    with engine.begin() as connection:
        row = connection.execute(
            text("SELECT id, password_hash FROM users WHERE username = :u"), {"u": username}
        ).first()
        try:
            valid = row is not None and hasher.verify(row.password_hash, password)
        except VerificationError:
            valid = False
        if not valid:
            logger.warning("login_failed", username=username, reason="invalid_credentials")
            return jsonify(error="invalid_credentials"), 401
        connection.execute(
            text("UPDATE users SET last_login_at = :now WHERE id = :id"),
            {"now": datetime.now(UTC), "id": row.id},
        )
    logger.info("login_success", user_id=row.id)
    token = secrets.token_urlsafe(32)
    session = {"user_id": row.id, "created_at": datetime.now(UTC).isoformat()}
    cache.set(_session_key(token), json.dumps(session), ex=SESSION_SECONDS)
    response = jsonify(id=row.id, username=username)
    response.set_cookie(
        SESSION_COOKIE, signer.dumps(token), max_age=SESSION_SECONDS, httponly=True,
        samesite="Lax",
    )  # fmt: skip
    return response


@app.get("/api/auth/me")
def me():  # type: ignore[no-untyped-def]
    user_id = _session_user()
    profile = _profile(user_id) if user_id is not None else None
    if profile is None:
        return jsonify(error="unauthorized"), 401
    response = jsonify(profile)
    response.headers["Cache-Control"] = "no-store"
    return response


def _session_key(token: str) -> str:
    return "reference:session:" + hashlib.sha256(token.encode()).hexdigest()


def _session_user() -> int | None:
    """Flask-Session's part: the signed cookie names a session kept in Redis."""
    try:
        token = signer.loads(request.cookies.get(SESSION_COOKIE, ""), max_age=SESSION_SECONDS)
    except BadSignature:
        return None
    stored = cache.get(_session_key(token))
    return None if stored is None else int(json.loads(stored)["user_id"])


def _profile(user_id: int) -> dict[str, object] | None:
    """Flask-Login's `user_loader`, read through a Redis cache."""
    key = f"reference:profile:{user_id}"
    cached = cache.get(key)
    if cached is not None:
        return json.loads(cached)  # type: ignore[no-any-return]
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT id, username, created_at, last_login_at FROM users WHERE id = :id"),
            {"id": user_id},
        ).first()
    if row is None:
        return None
    profile = {
        "id": row.id,
        "username": row.username,
        "created_at": row.created_at.isoformat(),
        "last_login_at": row.last_login_at.isoformat() if row.last_login_at else None,
    }
    cache.set(key, json.dumps(profile), ex=PROFILE_SECONDS)
    return profile
