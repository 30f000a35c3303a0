"""The cache: Redis when REDIS_URL is set, an in-process store otherwise, behind one interface.

Failures of the backend surface as `CacheError`, so callers decide whether to fall back or fail.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol

import redis.asyncio as aioredis
from aioprometheus.collectors import Counter
from quart import Quart
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from service.backends.invalidations import CHANNEL
from service.observability.context import RequestContext, current_context, waiting_on
from service.settings import Settings
from service.unavailable import FailureReason, failure_reason

MEMORY_CACHE_MAX_ENTRIES = 100_000


class CacheError(Exception):
    """The cache backend could not answer."""


class Cache(Protocol):
    # True when every worker and instance sees the same entries (Redis): only then may the cache
    # hold facts that one worker changes and another must see at once, such as revoked sessions.
    shared: bool

    async def get(self, key: str) -> str | None: ...
    async def get_and_follow(self, key: str, prefix: str) -> tuple[str | None, str | None]: ...
    async def set(self, key: str, value: str, ttl: float) -> None: ...
    async def set_unless(self, key: str, value: str, ttl: float, *, unless: str) -> None: ...
    async def set_many(
        self, keys: list[str], value: str, ttl: float, *, announce: str | None = None
    ) -> int: ...
    async def delete(self, key: str, *, announce: str | None = None) -> int: ...
    async def acquire_rate(
        self, key: str, now: float, interval: float, period: float
    ) -> tuple[float, float]: ...
    async def mark_seen(self, key: str, member: str, at: float, ttl: float) -> None: ...
    async def count_seen(self, key: str, since: float) -> int: ...
    async def close(self) -> None: ...


class MemoryCache:
    """A bounded in-process cache for the embedded default; one per worker process."""

    shared = False

    def __init__(self, max_entries: int = MEMORY_CACHE_MAX_ENTRIES) -> None:
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._max_entries = max_entries
        self._seen: dict[str, dict[str, float]] = {}

    async def get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at <= time.monotonic():
            del self._entries[key]
            return None
        return value

    async def get_and_follow(self, key: str, prefix: str) -> tuple[str | None, str | None]:
        value = await self.get(key)
        owner = follows(value)
        return value, None if owner is None else await self.get(prefix + owner)

    async def set(self, key: str, value: str, ttl: float) -> None:
        self._entries[key] = (value, time.monotonic() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def set_unless(self, key: str, value: str, ttl: float, *, unless: str) -> None:
        if await self.get(key) != unless:
            await self.set(key, value, ttl)

    async def set_many(
        self, keys: list[str], value: str, ttl: float, *, announce: str | None = None
    ) -> int:
        for key in keys:
            await self.set(key, value, ttl)
        return 0  # no worker listens: nothing is copied from an in-process cache

    async def delete(self, key: str, *, announce: str | None = None) -> int:
        self._entries.pop(key, None)
        return 0

    async def acquire_rate(
        self, key: str, now: float, interval: float, period: float
    ) -> tuple[float, float]:
        # No await inside: atomic on the event loop.
        entry = self._entries.get(key)
        tat = max(float(entry[0]), now) if entry is not None else now
        wait = _gcra_wait(tat, now, interval, period)
        if wait == 0:
            tat += interval
            self._entries[key] = (repr(tat), time.monotonic() + (tat - now) + 1)
        return wait, tat

    async def mark_seen(self, key: str, member: str, at: float, ttl: float) -> None:
        # Members older than `since` are dropped by count_seen; the TTL matters only to Redis.
        members = self._seen.setdefault(key, {})
        members[member] = at
        if len(members) > self._max_entries:
            oldest = min(members, key=members.__getitem__)
            del members[oldest]

    async def count_seen(self, key: str, since: float) -> int:
        members = self._seen.get(key, {})
        for member in [m for m, at in members.items() if at < since]:
            del members[member]
        return len(members)

    async def close(self) -> None:
        self._entries.clear()
        self._seen.clear()


# GCRA in one atomic step: concurrent requests (any worker, any instance) cannot all pass a limit
# by reading the same state before any of them writes it. Returns the wait (0: admitted) and the
# theoretical arrival time after this request, from which the RateLimit-* headers are computed.
_ACQUIRE_RATE = """
local now, interval, period = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function exact(x) return string.format('%.17g', x) end
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tat < now then tat = now end
local wait = tat - now - (period - interval)
if wait > 0 then return {exact(wait), exact(tat)} end
local new_tat = tat + interval
redis.call('SET', KEYS[1], exact(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return {'0', exact(new_tat)}
"""


# GET a key and, when its value names an owner (`follows`), GET that owner's key under a prefix:
# two reads in one round trip. The second key is not declared (it is known only from the first
# value), which Redis Cluster refuses: one Redis, or one shard per service, as the rest assumes.
_GET_AND_FOLLOW = """
local value = redis.call('GET', KEYS[1])
if not value then return {false, false} end
local owner = string.match(value, '^%[(%d+),')
if not owner then return {value, false} end
return {value, redis.call('GET', ARGV[1] .. owner)}
"""
_OWNER = re.compile(r"\[(\d+),")


def follows(value: str | None) -> str | None:
    """The owner a value names for `get_and_follow`: N when it starts `[N,` (a JSON array whose
    first item is a whole number), else None."""
    match = _OWNER.match(value) if value is not None else None
    return match.group(1) if match else None


# SET unless the key holds a given value (a tombstone), in one atomic step.
_SET_UNLESS = """
if redis.call('GET', KEYS[1]) == ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class RedisCache:
    shared = True

    def __init__(self, client: aioredis.Redis, prefix: str, timeout: float) -> None:
        self.client = client
        self.prefix = prefix
        # Where `announce` publishes, what every worker's InvalidationChannel hears.
        self.channel = prefix + CHANNEL
        self.timeout = timeout
        self._acquire = client.register_script(_ACQUIRE_RATE)
        self._set_unless = client.register_script(_SET_UNLESS)
        self._get_and_follow = client.register_script(_GET_AND_FOLLOW)
        self._timed_out = _TimedOut(timeout)

    async def get(self, key: str) -> str | None:
        async with self._command("get"):
            value = await self.client.get(self.prefix + key)
        return _text(value)

    async def get_and_follow(self, key: str, prefix: str) -> tuple[str | None, str | None]:
        async with self._command("get"):
            value, followed = await self._get_and_follow(
                keys=[self.prefix + key], args=[self.prefix + prefix]
            )
        return _text(value), _text(followed)

    async def set(self, key: str, value: str, ttl: float) -> None:
        async with self._command("set"):
            await self.client.set(self.prefix + key, value, px=_millis(ttl))

    async def set_unless(self, key: str, value: str, ttl: float, *, unless: str) -> None:
        async with self._command("set_unless"):
            await self._set_unless(keys=[self.prefix + key], args=[value, _millis(ttl), unless])

    async def set_many(
        self, keys: list[str], value: str, ttl: float, *, announce: str | None = None
    ) -> int:
        async with (
            self._command("set_many"),
            self.client.pipeline(transaction=False) as pipe,
        ):
            for key in keys:
                pipe.set(self.prefix + key, value, px=_millis(ttl))
            if announce is not None:
                pipe.publish(self.channel, announce)
            replies = await pipe.execute()
        return int(replies[-1]) if announce is not None else 0

    async def delete(self, key: str, *, announce: str | None = None) -> int:
        async with (
            self._command("delete"),
            self.client.pipeline(transaction=False) as pipe,
        ):
            pipe.delete(self.prefix + key)
            if announce is not None:
                pipe.publish(self.channel, announce)
            replies = await pipe.execute()
        return int(replies[-1]) if announce is not None else 0

    async def acquire_rate(
        self, key: str, now: float, interval: float, period: float
    ) -> tuple[float, float]:
        async with self._command("acquire_rate"):
            wait, tat = await self._acquire(keys=[self.prefix + key], args=[now, interval, period])
        return float(wait), float(tat)

    async def mark_seen(self, key: str, member: str, at: float, ttl: float) -> None:
        """Add a member with a score; the whole set expires `ttl` after its last addition."""
        async with (
            self._command("mark_seen"),
            self.client.pipeline(transaction=True) as pipe,
        ):
            pipe.zadd(self.prefix + key, {member: at})
            pipe.pexpire(self.prefix + key, _millis(ttl))
            await pipe.execute()

    async def count_seen(self, key: str, since: float) -> int:
        async with (
            self._command("count_seen"),
            self.client.pipeline(transaction=True) as pipe,
        ):
            pipe.zremrangebyscore(self.prefix + key, "-inf", f"({since}")
            pipe.zcard(self.prefix + key)
            _, count = await pipe.execute()
        return int(count)

    async def close(self) -> None:
        await self.client.aclose()

    def _command(self, operation: str) -> _RedisCommand:
        return _RedisCommand(operation, self.timeout, self._timed_out)


class InstrumentedCache:
    """Counts every operation (reads as hit or miss) and every failure of the cache inside."""

    def __init__(
        self,
        inner: Cache,
        requests: Counter,
        errors: Counter,
        failed: Callable[[FailureReason], None] | None = None,
    ) -> None:
        self.inner = inner
        self.shared = inner.shared
        self._requests = requests
        self._errors = errors
        self._failed = failed  # told the cause of each failure

    async def get(self, key: str) -> str | None:
        return await self.read(key, operation="get")

    async def read(self, key: str, *, operation: str) -> str | None:
        """A read counted under its own operation, so that bookkeeping reads (rate limits)
        do not dilute the `get` hit rate that dashboards and alerts watch."""
        value: str | None = await self._call(operation, self.inner.get(key))
        self._requests.inc({"operation": operation, "result": "miss" if value is None else "hit"})
        return value

    async def get_and_follow(self, key: str, prefix: str) -> tuple[str | None, str | None]:
        """`key`'s value and, when it names an owner (`follows`), the value of `prefix` + that
        owner, in one round trip; counted as the reads they are."""
        pair: tuple[str | None, str | None] = await self._call(
            "get", self.inner.get_and_follow(key, prefix)
        )
        value, followed = pair
        self._requests.inc({"operation": "get", "result": "miss" if value is None else "hit"})
        if follows(value) is not None:
            self._requests.inc(
                {"operation": "get", "result": "miss" if followed is None else "hit"}
            )
        return pair

    async def set(self, key: str, value: str, ttl: float) -> None:
        await self.write(key, value, ttl, operation="set")

    async def write(self, key: str, value: str, ttl: float, *, operation: str) -> None:
        await self._counted(operation, self.inner.set(key, value, ttl))

    async def set_unless(self, key: str, value: str, ttl: float, *, unless: str) -> None:
        await self._counted("set", self.inner.set_unless(key, value, ttl, unless=unless))

    async def set_many(
        self, keys: list[str], value: str, ttl: float, *, announce: str | None = None
    ) -> int:
        """Set every key; with `announce`, publish it to every worker in the same round trip
        (service/backends/invalidations.py). How many workers listened."""
        listeners: int = await self._counted(
            "set", self.inner.set_many(keys, value, ttl, announce=announce)
        )
        return listeners

    async def delete(self, key: str, *, announce: str | None = None) -> int:
        """Delete a key; `announce` as in `set_many`."""
        listeners: int = await self._counted("delete", self.inner.delete(key, announce=announce))
        return listeners

    async def acquire_rate(
        self, key: str, now: float, interval: float, period: float
    ) -> tuple[float, float]:
        result: tuple[float, float] = await self._counted(
            "rate_limit_acquire", self.inner.acquire_rate(key, now, interval, period)
        )
        return result

    async def mark_seen(self, key: str, member: str, at: float, ttl: float) -> None:
        await self._counted("mark_seen", self.inner.mark_seen(key, member, at, ttl))

    async def count_seen(self, key: str, since: float) -> int:
        value: int = await self._counted("count_seen", self.inner.count_seen(key, since))
        return value

    async def close(self) -> None:
        await self.inner.close()

    async def _counted(self, operation: str, call: Awaitable[Any]) -> Any:
        result = await self._call(operation, call)
        self._requests.inc({"operation": operation, "result": "ok"})
        return result

    async def _call(self, operation: str, call: Awaitable[Any]) -> Any:
        try:
            with waiting_on("cache"):
                return await call
        except CacheError as error:
            self._errors.inc({})
            if self._failed is not None:
                self._failed(failure_reason(error))
            raise


class _RedisCommand:
    """One Redis command (or pipeline) under REDIS_SOCKET_TIMEOUT. Redis, network and timeout
    errors become CacheError, which callers handle without knowing Redis.

    The timeout is kept here, not by redis-py's `socket_timeout`: with that set, redis-py wraps
    every write in `asyncio.wait_for` (a new task per command) and every read in its own timeout,
    about a third of a cached read's CPU (docs/benchmarks.md). A command cut
    here is cancelled inside redis-py, which drops that connection, as on its own timeout.
    """

    __slots__ = ("operation", "timed_out", "timeout")

    def __init__(self, operation: str, seconds: float, timed_out: _TimedOut) -> None:
        self.operation = operation
        self.timeout = asyncio.timeout(seconds)
        self.timed_out = timed_out

    async def __aenter__(self) -> None:
        self.timed_out.check(self.operation)
        await self.timeout.__aenter__()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self.timeout.__aexit__(kind, error, traceback)
        except TimeoutError as expired:
            self.timed_out.note()
            raise CacheError(f"{self.operation} timed out") from expired
        if isinstance(error, RedisError | OSError):
            raise CacheError(f"{self.operation} failed") from error


class _TimedOut:
    """After a command times out, the rest of that request, and every command for as long again,
    fail at once instead of each waiting its own timeout: a hung Redis cost a signed-in read five
    timeouts in turn (4 to 5 s, against 0.06 s when Redis refused). They fail as timeouts
    (callers fall back, or fail closed, as on any cache error); a command of another request
    after the window tries Redis again."""

    __slots__ = ("request", "seconds", "until")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.until = 0.0
        self.request: RequestContext | None = None

    def note(self) -> None:
        self.until = time.monotonic() + self.seconds
        self.request = current_context()

    def check(self, operation: str) -> None:
        request = current_context()
        if (request is not None and request is self.request) or time.monotonic() < self.until:
            raise CacheError(f"{operation} not tried: Redis timed out just now") from TimeoutError()


def _text(value: Any) -> str | None:
    # Bytes this code did not write must not fail the read: callers parse what they get.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _millis(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _gcra_wait(tat: float, now: float, interval: float, period: float) -> float:
    """Seconds until one more request fits (0: it fits now), for GCRA with this TAT."""
    return max(0.0, tat - now - (period - interval))


def create_cache(settings: Settings) -> Cache:
    if not settings.uses_redis:
        return MemoryCache()
    assert settings.redis_url is not None
    client = aioredis.Redis.from_url(
        settings.redis_url.get_secret_value(),
        # Replies are timed by RedisCache itself (_RedisCommand); connects by redis-py.
        socket_timeout=None,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=30,
        retry=Retry(NoBackoff(), retries=0),
    )
    return RedisCache(client, settings.cache_key_prefix, settings.redis_socket_timeout)


def init_cache(app: Quart, cache: InstrumentedCache) -> None:
    """Close `cache` when `app` stops serving (a Redis client connects on first use)."""
    app.after_serving(cache.close)
