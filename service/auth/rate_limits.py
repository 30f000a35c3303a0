"""Rate limits on the auth routes, kept in the shared cache so they hold across workers.

quart-rate-limiter declares the limits (`@rate_limit`) and answers 429 with `Retry-After`. Its
check-then-update runs as separate store reads and writes, so concurrent requests could all pass a
limit before any of them wrote (measured: 33 of 40 concurrent logins passed a limit of 20). Here
the check and the update are one atomic cache operation (a Lua script on Redis), keyed by client IP
or username, with a TTL so nothing piles up; it also returns the limit's state after the request,
from which the `RateLimit-*` headers are set (quart-rate-limiter reads the store again for them).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from quart import Quart, Response, current_app, g, request
from quart_rate_limiter import (
    QUART_RATE_LIMITER_LIMITS_ATTRIBUTE,
    RateLimit,
    RateLimiter,
    RateLimitExceeded,
)
from quart_rate_limiter.store import RateLimiterStoreABC

from service.auth.devices import DeviceCookies
from service.backends.cache import CacheError, InstrumentedCache
from service.backends.db.users import USERNAME_PATTERN
from service.http.proxy_fix import address_key, client_address
from service.settings import Settings
from service.unavailable import DependencyUnavailable

_KEY_PREFIX = "ratelimit:"
_USERNAME = re.compile(USERNAME_PATTERN)


@dataclass
class NamedLimit(RateLimit):
    """A limit that knows what it counts (`address`, `username`, `device`): the log line of a
    request it refuses says which limit it was."""

    name: str = "address"


def refused_by() -> str | None:
    """The name of the limit that refused the current request (429), if one did."""
    name: str | None = g.get("refused_by")
    return name


class RateLimitsUnavailable(DependencyUnavailable):
    """The shared cache that holds the limits could not answer: fail closed."""


class CacheStore(RateLimiterStoreABC):
    """Theoretical arrival times in the app's cache; a key expires when its TAT has passed."""

    def __init__(self, cache: InstrumentedCache) -> None:
        self.cache = cache

    async def before_serving(self) -> None:
        return None  # the cache is opened and closed by the app

    async def after_serving(self) -> None:
        return None

    async def get(self, key: str, default: datetime) -> datetime:
        raise NotImplementedError("limits are read and updated atomically by CacheStore.acquire")

    async def set(self, key: str, tat: datetime) -> None:
        raise NotImplementedError("limits are read and updated atomically by CacheStore.acquire")

    async def acquire(self, key: str, limit: RateLimit) -> tuple[float, float]:
        """Take one request from the limit: the seconds to wait if it is exhausted (else 0), and
        the seconds until the limit is whole again."""
        now = time.time()
        try:
            wait, tat = await self.cache.acquire_rate(
                _KEY_PREFIX + key, now, limit.inverse, limit.period.total_seconds()
            )
        except CacheError as exc:
            raise RateLimitsUnavailable() from exc
        return wait, tat - now


class _RateLimiter(RateLimiter):
    store: CacheStore

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._by_endpoint: dict[str | None, list[RateLimit]] = {}

    def _limits(self, endpoint: str | None) -> list[RateLimit]:
        """The limits of an endpoint; computed once (most routes have none, and this runs on
        every request)."""
        limits = self._by_endpoint.get(endpoint)
        if limits is None:
            view_func = current_app.view_functions.get(endpoint) if endpoint else None
            blueprint = current_app.blueprints.get(request.blueprint or "")
            limits = self._get_limits_for_view_function(view_func, blueprint) if view_func else []
            self._by_endpoint[endpoint] = limits
        return limits

    async def _before_request(self) -> None:
        endpoint = request.endpoint
        limits = self._limits(endpoint)
        if not limits or not current_app.config["QUART_RATE_LIMITER_ENABLED"]:
            return
        # Only real attempts spend a budget: a CORS preflight (Quart answers OPTIONS on every
        # route) must not use up the logins of the address or the username it names.
        if request.method == "OPTIONS":
            return
        assert endpoint is not None
        # The headers describe the shortest-period limit, as quart-rate-limiter's do.
        reported = min(limits, key=lambda limit: limit.period)
        for limit in limits:
            if await self._should_skip(limit):
                continue
            key = await self._create_key(endpoint, limit)
            wait, until_whole = await self.store.acquire(key, limit)
            if limit is reported:
                g.rate_limit_headers = _headers(limit, until_whole)
            if wait > 0:
                g.refused_by = getattr(limit, "name", "address")
                raise RateLimitExceeded(max(1, math.ceil(wait)))

    async def _after_request(self, response: Response) -> Response:
        headers = g.pop("rate_limit_headers", None)
        if headers is not None:
            response.headers.update(headers)
        return response


def _headers(limit: RateLimit, until_whole: float) -> dict[str, str]:
    """quart-rate-limiter's `RateLimit-*` headers, from the state the acquire left."""
    # The tolerance keeps float rounding from showing one request fewer than the limit allows.
    remaining = max(
        0, math.floor((limit.period.total_seconds() - until_whole) / limit.inverse + 1e-6)
    )
    return {
        "RateLimit-Limit": str(limit.count),
        "RateLimit-Remaining": str(remaining),
        "RateLimit-Reset": str(math.ceil(until_whole)),
    }


def init_rate_limits(app: Quart, settings: Settings, cache: InstrumentedCache) -> RateLimiter:
    async def ip_key() -> str:
        return address_key(client_address(request.scope), settings.rate_limit_ipv6_prefix)

    return _RateLimiter(app, key_function=ip_key, store=CacheStore(cache))


def rate_limited_routes(app: Quart) -> list[str]:
    """The route templates whose views carry a rate limit (once every blueprint is registered)."""
    return sorted(
        rule.rule
        for rule in app.url_map.iter_rules()
        if getattr(app.view_functions.get(rule.endpoint), QUART_RATE_LIMITER_LIMITS_ATTRIBUTE, None)
    )


async def submitted_username() -> str | None:
    """The username a request's JSON body names, lower-cased, when it is a well-formed one (so
    safe to log); None otherwise. The one reading of it, for the limit key and the log."""
    body = await request.get_json(silent=True)
    username = body.get("username") if isinstance(body, dict) else None
    if isinstance(username, str) and _USERNAME.fullmatch(username):
        return username.lower()
    return None


async def username_key() -> str:
    """The submitted username, hashed so the key length does not depend on client input."""
    username = await submitted_username() or ""
    return "user:" + hashlib.sha256(username.encode()).hexdigest()[:32]


async def no_username() -> bool:
    """A login without a well-formed username (answered 400) spends no username's budget; the
    per-address limit still counts it."""
    return await submitted_username() is None


def login_limits(settings: Settings, devices: DeviceCookies) -> list[RateLimit]:
    """Per client address; and per username, counted apart for each device that has signed in
    as that user before (service/auth/devices.py), so that spending the username's budget from
    elsewhere does not lock the user out of their own browsers."""
    window = timedelta(seconds=settings.rate_limit_window_seconds)

    async def device() -> str | None:
        username = await submitted_username()
        return devices.device(username) if username is not None else None

    async def device_key() -> str:
        return "device:" + (await device() or "")

    async def known_device_or_no_username() -> bool:
        return await no_username() or await device() is not None

    async def unknown_device() -> bool:
        return await device() is None

    per_username = settings.login_limit_per_username
    return [
        NamedLimit(settings.login_limit_per_ip, window, name="address"),
        NamedLimit(
            per_username,
            window,
            key_function=username_key,
            skip_function=known_device_or_no_username,
            name="username",
        ),
        NamedLimit(
            per_username,
            window,
            key_function=device_key,
            skip_function=unknown_device,
            name="device",
        ),
    ]


def register_limits(settings: Settings) -> list[RateLimit]:
    window = timedelta(seconds=settings.rate_limit_window_seconds)
    return [NamedLimit(settings.register_limit_per_ip, window, name="address")]
