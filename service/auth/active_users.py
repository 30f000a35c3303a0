"""Who used the service recently: marked in the shared cache, counted into `active_users`.

Every worker marks the users it serves (at most once a minute per user) in one sorted set of the
cache; the count over `ACTIVE_USER_WINDOW_SECONDS` is read when metrics are scraped, so every
worker reports the same global value (merged with max).
"""

from __future__ import annotations

import time

from aioprometheus.collectors import Gauge

from service.backends.cache import CacheError, InstrumentedCache
from service.observability.metrics import Metrics
from service.settings import Settings

_KEY = "active_users"
# A user is marked again by a worker only after this many seconds: one cache write per user and
# minute, not per request.
_MARK_EVERY_SECONDS = 60
_MAX_REMEMBERED = 100_000


class ActiveUsers:
    def __init__(self, settings: Settings, gauge: Gauge, cache: InstrumentedCache) -> None:
        self.window = settings.active_user_window_seconds
        self.gauge = gauge
        self._cache = cache
        self._marked: dict[int, float] = {}

    def due(self, user_id: int) -> bool:
        """Whether `mark` would write for this user now."""
        last = self._marked.get(user_id)
        return last is None or time.time() - last >= _MARK_EVERY_SECONDS

    async def mark(self, user_id: int) -> None:
        """Remember a user as active; raises CacheError (counted by the cache) on a failure."""
        now = time.time()
        last = self._marked.get(user_id)
        if last is not None and now - last < _MARK_EVERY_SECONDS:
            return
        if len(self._marked) > _MAX_REMEMBERED:
            self._marked.clear()
        self._marked[user_id] = now
        await self._cache.mark_seen(_KEY, str(user_id), now, self.window)

    async def refresh(self) -> None:
        """Scrape-time count; a cache failure (counted by the cache) keeps the last value (a
        slow count is given up by the scrape)."""
        try:
            count = await self._cache.count_seen(_KEY, time.time() - self.window)
        except CacheError:
            return
        self.gauge.set({}, count)


def init_active_users(users: ActiveUsers, metrics: Metrics) -> None:
    """Count `users` when /metrics is scraped."""
    metrics.add_scrape_reader(users.refresh)
