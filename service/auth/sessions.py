"""Server-side sign-in sessions: a login creates one, every authenticated request checks it, a
logout ends it, so an old cookie stops working at once on every worker and every instance.

The signed cookie (quart-auth) carries only an opaque random token. The `sessions` table keeps
the token's SHA-256, its user and its times, so sessions survive a restart and are shared by every
instance. When the cache is shared (Redis), a live session is also cached for at most
`SESSION_CACHE_SECONDS`. Ending a session first writes a tombstone to the cache, which no
concurrent read can overwrite (`Cache.set_unless`), and only then deletes the row: if the cache
cannot be told, nothing is deleted and the request fails, so a retry does the whole revocation.
The in-process cache is never used for sessions: one worker could not tell the others that a
session ended. Failures fail closed: a database that cannot answer is a 503, never a session
taken on trust.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
import time
from collections.abc import AsyncGenerator
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import cast

import orjson
import structlog
from quart import Quart, Request, Response, g
from quart_auth import Action, AuthUser, QuartAuth, current_user
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth.active_users import ActiveUsers
from service.backends.cache import CacheError, InstrumentedCache
from service.backends.db import Database
from service.backends.db.models import LoginSession
from service.backends.db.sessions import (
    count_live_sessions,
    delete_expired_sessions,
    delete_session,
    delete_user_sessions,
    insert_session,
    select_session,
    select_user_session_ids,
    touch_session,
)
from service.backends.invalidations import TRUST_SECONDS
from service.observability.metrics import Metrics
from service.settings import Settings
from service.unavailable import DependencyUnavailable

logger = structlog.get_logger(__name__)

SESSION_COOKIE_NAME = "scene_packer_session"
# v2: cookies signed before server-side sessions (they carried the user id) fail the signature
# check instead of costing a session lookup.
SESSION_COOKIE_SALT = "scene-packer-session-v2"
# The longest a cached session may be believed without the database; also the longest a revoked
# session could live on in the cache if the revocation could not reach it (the logout then
# answers 503, so the client knows to retry).
SESSION_CACHE_SECONDS = 60
# A tombstone outlives any read that fetched the session from the database before it was
# deleted and has yet to cache it (that gap is bounded by the statement timeout, seconds).
_TOMBSTONE_SECONDS = 300
_TOMBSTONE = "revoked"
_KEY_PREFIX = "session:"
# The profile cache (`/api/auth/me`, read through): a cached session is read with its user's entry.
PROFILE_KEY_PREFIX = "profile:"
PURGE_INTERVAL_SECONDS = 600
PURGE_BATCH = 10_000
# `auth_sessions_active` is counted at most this often per worker: with several workers every
# worker refreshes its scrape-time values each METRICS_SYNC_INTERVAL, and a count is a query.
COUNT_INTERVAL_SECONDS = 10


@dataclass(frozen=True, slots=True)
class ActiveSession:
    id: str  # the stored id: SHA-256 of the cookie's token
    user_id: int
    expires_at: float  # seconds since the epoch
    last_seen_at: float
    # The user's cached profile (JSON), read in the same round trip as a cached session;
    # `profile_read` says it was asked for, so that None is a miss, not "not read".
    profile: str | None = None
    profile_read: bool = False

    @classmethod
    def from_row(cls, row: LoginSession) -> ActiveSession:
        return cls(row.id, row.user_id, row.expires_at.timestamp(), row.last_seen_at.timestamp())


class SessionStore:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        database: Database,
        cache: InstrumentedCache,
    ) -> None:
        self.duration = settings.session_duration_seconds
        self.idle = settings.session_idle_seconds
        # An idle session's last use is written at most this often (a write per request would be
        # a database write per request): idle time is counted to within this many seconds.
        self.touch_interval = min(60.0, self.idle / 10) if self.idle else None
        self.metrics = metrics
        self._counted_at = -math.inf
        self._database = database
        # Sessions are cached only where every worker and instance sees the same cache (Redis).
        self._cache = cache if cache.shared else None

    async def start(self, db: AsyncSession, user_id: int) -> str:
        """Create a session inside the caller's transaction; the token for the cookie."""
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        expires_at = now + timedelta(seconds=self.duration)
        await insert_session(db, stored_id(token), user_id, now, expires_at)
        return token

    async def resolve(self, token: str) -> ActiveSession | None:
        """The live session a token names, or None. Raises when the database cannot answer:
        a session is never taken on trust."""
        session_id = stored_id(token)
        now = time.time()
        session, cached = await self._cached(session_id)
        if cached and session is None:
            return None  # ended (or known not to exist)
        read_at = time.monotonic()
        from_database = session is None
        if session is None:
            async with self._database.transaction() as db:
                row = await select_session(db, session_id)
            if row is None:
                await self._bury([session_id])
                return None
            session = ActiveSession.from_row(row)
        if not self._live(session, now):
            await self._bury([session_id])
            return None
        if self.touch_interval is not None and now - session.last_seen_at >= self.touch_interval:
            async with self._database.transaction() as db:
                await touch_session(db, session_id, _moment(now))
            session = replace(session, last_seen_at=now)
            from_database = True
        if from_database:
            await self._remember(session, now, read_at)
        return session

    async def owner(self, token: str) -> int | None:
        """The user of a live session, read from the database alone: a session that a failed
        ending left tombstoned in the cache but present in the table can still end itself and
        its siblings (the retry of that ending)."""
        async with self._database.transaction() as db:
            row = await select_session(db, stored_id(token))
        if row is None:
            return None
        session = ActiveSession.from_row(row)
        return session.user_id if self._live(session, time.time()) else None

    async def end(self, token: str, *, tidying: bool = False) -> int | None:
        """End one session; the user it belonged to, or None if it did not exist.

        The cache is told first: if it cannot be, nothing is deleted and the caller answers
        503, so a retry does the whole revocation (a cached copy must not outlive the row).
        Workers keeping copies (service/auth/signed_in.py) are told in the same round trip; the
        ending returns only when every one has heard it or stopped trusting its copies, unless
        `tidying` (a login replacing its browser's session: nobody asked for it to end, and the
        login need not wait)."""
        session_id = stored_id(token)
        heard_by = await self._revoke_cached([session_id])
        try:
            async with self._database.transaction() as db:
                return await delete_session(db, session_id)
        finally:  # a failed delete too: the session stays refused (tombstone) from the answer on
            if not tidying:
                await heard_by.wait()

    async def end_all(self, user_id: int) -> int:
        """End every session of a user, cache first as in `end`; how many there were."""
        async with self._database.transaction() as db:
            known = await select_user_session_ids(db, user_id)
        heard_by = await self._revoke_cached(known)
        try:
            async with self._database.transaction() as db:
                ended = await delete_user_sessions(db, user_id)
            # Sessions made by a login meanwhile: their rows are gone; bury them too.
            later = await self._revoke_cached(sorted(set(ended) - set(known)))
            await later.wait()
        finally:
            await heard_by.wait()
        return len(ended)

    def copy_until(self, session: ActiveSession) -> float:
        """Until when a worker may answer from its own copy of this session's read (epoch
        seconds): not past its expiry, its idle limit or its next `last_seen_at` write. (How
        long any copy may be kept, SESSION_CACHE_SECONDS and PROFILE_CACHE_TTL, is counted on
        the monotonic clock by the caller.)"""
        until = session.expires_at
        if self.idle is not None:
            until = min(until, session.last_seen_at + self.idle)
        if self.touch_interval is not None:
            until = min(until, session.last_seen_at + self.touch_interval)
        return until

    async def purge_expired(self) -> int:
        """Delete expired sessions in bounded batches; how many were deleted."""
        purged = 0
        while True:
            now = datetime.now(UTC)
            async with self._database.transaction() as db:
                deleted = await delete_expired_sessions(
                    db, now, self._idle_cutoff(now), PURGE_BATCH
                )
            purged += deleted
            if deleted < PURGE_BATCH:
                return purged

    async def count_live(self) -> int:
        now = datetime.now(UTC)
        async with self._database.transaction() as db:
            return await count_live_sessions(db, now, self._idle_cutoff(now))

    async def refresh_gauge(self) -> None:
        """`auth_sessions_active`, read at scrape time (at most every COUNT_INTERVAL_SECONDS); a
        failing database keeps the last value (a slow one is given up by the scrape)."""
        now = time.monotonic()
        if now - self._counted_at < COUNT_INTERVAL_SECONDS:
            return  # not serving (a worker's first or last metrics snapshot), or counted lately
        self._counted_at = now
        try:
            count = await self.count_live()
        except Exception:
            logger.warning("sessions_count_failed", exc_info=True)
            return
        self.metrics.auth_sessions_active.set({}, count)

    async def purge_forever(self) -> None:
        while True:
            try:
                purged = await self.purge_expired()
            except Exception:
                logger.warning("sessions_purge_failed", exc_info=True)
            else:
                if purged:
                    logger.info("sessions_purged", count=purged)
            await asyncio.sleep(PURGE_INTERVAL_SECONDS)

    def _live(self, session: ActiveSession, now: float) -> bool:
        if now >= session.expires_at:
            return False
        return self.idle is None or now - session.last_seen_at < self.idle

    def _idle_cutoff(self, now: datetime) -> datetime | None:
        return now - timedelta(seconds=self.idle) if self.idle is not None else None

    async def _cached(self, session_id: str) -> tuple[ActiveSession | None, bool]:
        """(session, found): found with None means a tombstone. A cache outage reads as a miss:
        the database answers instead."""
        if self._cache is None:
            return None, False
        try:
            # The session [user_id, …] and, in the same round trip, profile:<user_id>.
            value, profile = await self._cache.get_and_follow(
                _KEY_PREFIX + session_id, PROFILE_KEY_PREFIX
            )
        except CacheError:
            return None, False
        if value is None:
            return None, False
        if value == _TOMBSTONE:
            return None, True
        try:
            user_id, expires_at, last_seen_at = orjson.loads(value)
        except (ValueError, TypeError):
            user_id = expires_at = last_seen_at = None
        if not _written_here(user_id, expires_at, last_seen_at):  # ask the database
            logger.warning("session_cache_entry_unreadable")
            return None, False
        return ActiveSession(
            session_id, user_id, float(expires_at), float(last_seen_at), profile, True
        ), True

    async def _remember(self, session: ActiveSession, now: float, read_at: float) -> None:
        if self._cache is None:
            return
        if time.monotonic() - read_at > _TOMBSTONE_SECONDS / 2:
            # A read this slow could predate an ending whose tombstone has since expired.
            return
        ttl = min(float(SESSION_CACHE_SECONDS), session.expires_at - now)
        if self.idle is not None:
            ttl = min(ttl, session.last_seen_at + self.idle - now)
        value = orjson.dumps([session.user_id, session.expires_at, session.last_seen_at]).decode()
        # A failure is counted by the cache; the next request reads the database again.
        with suppress(CacheError):
            await self._cache.set_unless(_KEY_PREFIX + session.id, value, ttl, unless=_TOMBSTONE)

    async def _bury(self, session_ids: list[str]) -> None:
        """Remember that these sessions are gone, so their cookies cost no more database reads."""
        # A failure is counted by the cache; such cookies then read the database again.
        with suppress(CacheError):
            await self._write_tombstones(session_ids)

    async def _revoke_cached(self, session_ids: list[str]) -> _Heard:
        """Tombstones for these sessions, announced to every worker's copies."""
        try:
            return await self._write_tombstones(session_ids, announce=True)
        except CacheError as exc:
            raise RevocationIncomplete(
                "The sign-out could not reach the session cache; nothing was ended. Retry."
            ) from exc

    async def _write_tombstones(self, session_ids: list[str], *, announce: bool = False) -> _Heard:
        if self._cache is None or not session_ids:
            return _Heard(0)
        keys = [_KEY_PREFIX + session_id for session_id in session_ids]
        message = "session " + " ".join(session_ids) if announce else None
        listeners = await self._cache.set_many(
            keys, _TOMBSTONE, _TOMBSTONE_SECONDS, announce=message
        )
        return _Heard(listeners)


class _Heard:
    """An announcement made just now: `wait()` returns once every worker that listened has
    heard it or stopped trusting its copies (TRUST_SECONDS after it was published)."""

    __slots__ = ("deadline",)

    def __init__(self, listeners: int) -> None:
        self.deadline = time.monotonic() + TRUST_SECONDS if listeners else 0.0

    async def wait(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)


class RevocationIncomplete(DependencyUnavailable):
    """Sessions could not be marked as ended in the shared cache; none was deleted."""


class SessionUser(AuthUser):
    """quart-auth's user: the cookie's token, resolved once per request to a live session."""

    # Defaults on the class: quart-auth makes one user per request, most of them anonymous.
    _session: ActiveSession | None = None
    _failure: Exception | None = None
    _resolved = False

    def __init__(
        self, auth_id: str | None, action: Action = Action.PASS, store: SessionStore | None = None
    ) -> None:
        # AuthUser.__init__ sets just these two; calling it costs more than setting them.
        self._auth_id = auth_id
        self.action = action
        self._store = store

    @property
    async def is_authenticated(self) -> bool:
        return await self.session() is not None

    async def session(self) -> ActiveSession | None:
        # A failed lookup is remembered too: a route that needs the session fails with it (503),
        # without waiting on the same dead database a second time.
        if self._failure is not None:
            raise self._failure
        if not self._resolved:
            if self.auth_id is not None and self._store is not None:
                try:
                    self._session = await self._store.resolve(self.auth_id)
                except Exception as exc:
                    self._failure = exc
                    raise
            self._resolved = True
        return self._session

    def give_up(self, failure: Exception) -> None:
        """The lookup was abandoned (too slow): a route that needs the session fails with
        `failure` at once instead of waiting on it again."""
        self._failure = failure


class _SessionAuth(QuartAuth):
    def __init__(self, app: Quart, store: SessionStore) -> None:
        self.store = store
        super().__init__(app, user_class=SessionUser)

    async def after_request(self, response: Response) -> Response:
        # Nothing asked for the user (no cookie came, no login): there is no cookie to write.
        # quart-auth would resolve the user of every request just to find that out.
        if self.attribute_name not in g:
            return response
        return await super().after_request(response)

    def resolve_user(self) -> AuthUser:
        auth_id: object = self.load_cookie()  # cookie mode only (QUART_AUTH_MODE is not set)
        # A signed payload is whatever was signed: only our own tokens are strings.
        return SessionUser(auth_id if type(auth_id) is str else None, Action.PASS, self.store)


def _written_here(user_id: object, expires_at: object, last_seen_at: object) -> bool:
    """A cached session as `_remember` writes it: a user id (a whole number, as in the table)
    and two finite times. Anything else, a hand-edited or corrupted entry, is not believed."""
    return (
        type(user_id) is int
        and 0 < user_id < 2**63
        and all(
            type(t) in (int, float) and math.isfinite(t)  # type: ignore[arg-type]
            for t in (expires_at, last_seen_at)
        )
    )


def stored_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def current_session() -> ActiveSession | None:
    """The live session of the request being handled (looked up once per request)."""
    return await cast(SessionUser, current_user).session()


def abandon_session_lookup() -> None:
    """This request's session lookup took too long to wait for; see `SessionUser.give_up`."""
    cast(SessionUser, current_user).give_up(
        DependencyUnavailable("The session could not be checked in time; retry later.")
    )


def expire_cookie() -> None:
    """Have the response clear the session cookie, keeping the token for this request."""
    current_user.action = Action.DELETE


def keep_cookie() -> None:
    """Have the response leave the session cookie as it is (until `logout_user`)."""
    current_user.action = Action.PASS


async def settle_session_cookie(
    request: Request, active_users: ActiveUsers, lookup_timeout: float
) -> int | None:
    """Before any route runs, for a request that carries the session cookie: the signed-in
    user's id, counted as active; a dead or forged cookie is expired (the browser stops sending
    it). The lookup is given up after `lookup_timeout`, so a route that needs no session still
    answers when the database hangs; a lookup that fails must not fail such a route either (the
    routes that need the session meet the same failure, remembered by `SessionUser`, and
    answer 503)."""
    if SESSION_COOKIE_NAME not in request.cookies:
        return None
    try:
        async with asyncio.timeout(lookup_timeout):
            session = await current_session()
    except TimeoutError:
        abandon_session_lookup()
        return None
    except Exception:
        return None
    if session is None:
        expire_cookie()
        return None
    # A cache failure is counted by the cache wrapper; it must not fail the request.
    with suppress(CacheError):
        await active_users.mark(session.user_id)
    return session.user_id


def init_sessions(app: Quart, store: SessionStore, settings: Settings, metrics: Metrics) -> None:
    """Sign-in through `store`: quart-auth's cookie, the sessions gauge, the purge of expired
    sessions while `app` serves."""
    app.config.update(
        QUART_AUTH_COOKIE_NAME=SESSION_COOKIE_NAME,
        QUART_AUTH_COOKIE_SECURE=settings.cookie_secure,
        QUART_AUTH_DURATION=settings.session_duration_seconds,
        QUART_AUTH_SALT=SESSION_COOKIE_SALT,
    )
    _SessionAuth(app, store)
    metrics.add_scrape_reader(store.refresh_gauge)

    # while_serving: the database and cache are open by now, and still open when it resumes.
    @app.while_serving
    async def _serving() -> AsyncGenerator[None, None]:
        purging = asyncio.create_task(store.purge_forever())
        yield
        purging.cancel()
        await asyncio.gather(purging, return_exceptions=True)


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
