"""The original design, written minimally and faithfully, to measure the async rewrite against.

Flask + prometheus-flask-exporter + structlog, served by gunicorn with sync workers
(`gunicorn -c bench/reference_flask/gunicorn.conf.py bench.reference_flask.app:app`). Same
endpoints and the same work per request as the original: the health check runs its database,
cache, disk and memory checks one after another on every call; login reads the user, verifies
the argon2 hash and records the login. Configured by the service's DATABASE_URL and REDIS_URL
(a postgresql+asyncpg:// URL is used through psycopg2).
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime

import psutil
import redis
import structlog
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from flask import Flask, jsonify, request
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
    return jsonify(id=row.id, username=username)
