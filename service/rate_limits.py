"""Rate limits on the auth routes, kept in the shared cache so they hold across workers.

quart-rate-limiter does the GCRA arithmetic; this module gives it a store over our cache
(Redis keys with a TTL, so nothing piles up) and the key functions (client IP, username).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from quart import Quart, Response, request
from quart_rate_limiter import RateLimit, RateLimiter
from quart_rate_limiter.store import RateLimiterStoreABC

from service.cache import CacheError, get_cache
from service.errors import ServiceUnavailable
from service.observability.context import client_ip
from service.settings import Settings

_KEY_PREFIX = "ratelimit:"


class CacheStore(RateLimiterStoreABC):
    """Theoretical arrival times in the app's cache; a key expires when its TAT has passed."""

    async def before_serving(self) -> None:
        return None  # the cache is opened and closed by the app

    async def after_serving(self) -> None:
        return None

    async def get(self, key: str, default: datetime) -> datetime:
        try:
            value = await get_cache().read(_KEY_PREFIX + key, operation="rate_limit_get")
        except CacheError as exc:
            raise ServiceUnavailable() from exc
        return default if value is None else datetime.fromtimestamp(float(value), UTC)

    async def set(self, key: str, tat: datetime) -> None:
        ttl = max(1.0, (tat - datetime.now(UTC)).total_seconds() + 1.0)
        try:
            await get_cache().write(
                _KEY_PREFIX + key, repr(tat.timestamp()), ttl, operation="rate_limit_set"
            )
        except CacheError as exc:
            raise ServiceUnavailable() from exc


class _RateLimiter(RateLimiter):
    async def _after_request(self, response: Response) -> Response:
        # The RateLimit-* headers are advisory: a cache outage must not turn an answer into a 500.
        try:
            result: Response = await super()._after_request(response)
        except ServiceUnavailable:
            return response
        return result


def init_rate_limits(app: Quart, settings: Settings) -> RateLimiter:
    async def ip_key() -> str:
        return client_ip(
            request.remote_addr, request.headers.get("X-Forwarded-For"), settings.trusted_proxies
        )

    return _RateLimiter(app, key_function=ip_key, store=CacheStore())


async def username_key() -> str:
    """The submitted username, hashed so the key length does not depend on client input."""
    body = await request.get_json(silent=True)
    username = body.get("username") if isinstance(body, dict) else None
    normalized = username.strip().lower() if isinstance(username, str) else ""
    return "user:" + hashlib.sha256(normalized.encode()).hexdigest()[:32]


def login_limits(settings: Settings) -> list[RateLimit]:
    window = timedelta(seconds=settings.rate_limit_window_seconds)
    return [
        RateLimit(settings.login_limit_per_ip, window),
        RateLimit(settings.login_limit_per_username, window, key_function=username_key),
    ]


def register_limits(settings: Settings) -> list[RateLimit]:
    window = timedelta(seconds=settings.rate_limit_window_seconds)
    return [RateLimit(settings.register_limit_per_ip, window)]
