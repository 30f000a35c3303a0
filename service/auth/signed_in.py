"""The signed-in read (`GET /api/auth/me`) answered from the worker's own copies, before Quart.

The read a signed-in user makes on every page costs the ordinary path a cookie signature check, a
Redis round trip (the cached session and profile) and Quart's request machinery. Each worker
keeps the answers it gave, keyed by the exact cookie, and answers the same cookie again at the
ASGI edge, as the health probes are answered (service/health/probes.py): no signature check, no
await, no Quart.

A copy is believed only while it provably cannot be stale:

- every ending of a session and every change of a profile is published on the invalidation
  channel in the same round trip as its tombstone (service/backends/invalidations.py), and the
  ending answers only `TRUST_SECONDS` later, so the next request anywhere cannot meet a copy;
- a copy is used only while the channel's last answered PING (sent less than `TRUST_SECONDS`
  ago) proves every earlier message applied; a lost or hung channel forgets every copy;
- a copy made from reads that began before its session's ending, its user's change, or a loss
  or (re)subscription of the channel arrived is not kept (`generation`); nor one under a cookie
  spelt other than its signature's one form;
- a copy ends with its session (expiry, idle time, the next `last_seen_at` write), after
  SESSION_CACHE_SECONDS, and after PROFILE_CACHE_TTL.

Anything else (no copy, a channel not proven, an active-user mark due, a body, the cookie named
twice or quoted) goes on to Quart, which makes the copy.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aioprometheus.collectors import Counter
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Quart

from service.auth.active_users import ActiveUsers
from service.backends.invalidations import InvalidationChannel
from service.observability.context import bind_route, bind_user
from service.settings import Settings

PATH = "/api/auth/me"
# What the edge saw of a request it passed on: the cookie and the generation before any read.
SCOPE_KEY = "scene_packer.signed_in"
MAX_COPIES = 10_000
# Endings and changes remembered by generation, for fills in flight; past this many, the fills
# in flight are refused instead (as after a loss).
MAX_HEARD = 100_000
# A signed token is about 130 characters; anything much longer is not one of ours.
MAX_COOKIE_LENGTH = 512
_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
# URL-safe base64 without padding, in parts joined by dots (itsdangerous' signed tokens).
_COOKIE_CHARACTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(frozen=True, slots=True)
class Copy:
    session_id: str
    user_id: int
    body: bytes
    valid_until: float  # seconds since the epoch: the session's own limits
    fresh_until: float  # time.monotonic(): how long a copy may be kept at all


class LocalSessions:
    """One worker's copies of signed-in answers, kept current by the invalidation channel."""

    def __init__(self) -> None:
        self.channel: InvalidationChannel | None = None  # set by `init_signed_in`
        # Bumped by every message and every loss. A fill whose reads began (at the edge) under
        # an older generation is refused if its session ended, its user changed, or the channel
        # was lost or (re)subscribed since.
        self.generation = 0
        self._lost_at = 0
        self._ended: dict[str, int] = {}  # session id -> generation that ended it
        self._changed: dict[int, int] = {}  # user id -> generation that changed it
        self._copies: dict[str, Copy] = {}  # by cookie value
        self._by_session: dict[str, set[str]] = {}
        self._by_user: dict[int, set[str]] = {}

    def __len__(self) -> int:
        return len(self._copies)

    def answer(self, cookie: str) -> Copy | None:
        """The copy for this cookie, if it may be used now."""
        copy = self._copies.get(cookie)
        if copy is None:
            return None
        if time.monotonic() >= copy.fresh_until or time.time() >= copy.valid_until:
            self._drop(cookie)
            return None
        if self.channel is None or not self.channel.trusted():
            return None
        return copy

    def remember(self, scope: Mapping[str, object], cookie: str, copy: Copy) -> None:
        """Keep `copy` for `cookie`, unless its session ended, its user changed or the channel
        was lost since this request's reads began (or the edge did not see the request, or the
        channel is down, or the cookie is not in the one form its signature has)."""
        seen = scope.get(SCOPE_KEY)
        if not (isinstance(seen, tuple) and seen[0] == cookie):
            return
        began: int = seen[1]
        if (
            self._lost_at > began
            or self._ended.get(copy.session_id, -1) > began
            or self._changed.get(copy.user_id, -1) > began
        ):
            return
        if self.channel is None or not self.channel.connected or not _canonical(cookie):
            return
        if len(self._copies) >= MAX_COPIES and cookie not in self._copies:
            self._forget_copies()  # a flood of sessions: start again rather than scan
        self._drop(cookie)
        self._copies[cookie] = copy
        self._by_session.setdefault(copy.session_id, set()).add(cookie)
        self._by_user.setdefault(copy.user_id, set()).add(cookie)

    def heard(self, message: str | None) -> None:
        """A message from the channel (`session <id> …`, `user <id>`), or None: the channel
        was lost or has just (re)subscribed, anything may have been missed."""
        self.generation += 1
        kind, _, rest = (message or "").partition(" ")
        if kind == "session":
            for session_id in rest.split():
                self._ended[session_id] = self.generation
                for cookie in list(self._by_session.get(session_id, ())):
                    self._drop(cookie)
        elif kind == "user":
            for user_id in rest.split():
                if user_id.isdigit():
                    self._changed[int(user_id)] = self.generation
                    for cookie in list(self._by_user.get(int(user_id), ())):
                        self._drop(cookie)
        else:
            self.forget_all()
        if len(self._ended) + len(self._changed) > MAX_HEARD:
            # The copies are current (each message dropped its own); only the fills in flight
            # can no longer be checked one by one: they are refused, as after a loss.
            self._lost_at = self.generation
            self._ended.clear()
            self._changed.clear()

    def forget_all(self) -> None:
        """No copy, and no fill in flight, is believed."""
        self._lost_at = self.generation
        self._ended.clear()
        self._changed.clear()
        self._forget_copies()

    def _forget_copies(self) -> None:
        self._copies.clear()
        self._by_session.clear()
        self._by_user.clear()

    def _drop(self, cookie: str) -> None:
        copy = self._copies.pop(cookie, None)
        if copy is None:
            return
        _unlink(self._by_session, copy.session_id, cookie)
        _unlink(self._by_user, copy.user_id, cookie)


def _unlink(index: dict[Any, set[str]], key: object, cookie: str) -> None:
    cookies = index.get(key)
    if cookies is not None:
        cookies.discard(cookie)
        if not cookies:
            del index[key]


def _canonical(cookie: str) -> bool:
    """Whether each dot-separated part is URL-safe base64 exactly as it encodes back: a
    signature admits other spellings (unused low bits of its last character), and a copy
    kept under one of those would outlive the ending that drops the copy of another."""
    for part in cookie.split("."):
        try:
            decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except (ValueError, binascii.Error):
            return False
        if base64.urlsafe_b64encode(decoded).rstrip(b"=").decode() != part:
            return False
    return True


class SignedInEdge:
    """`GET /api/auth/me` from this worker's copy, or on to Quart (which makes one)."""

    def __init__(
        self,
        app: ASGIFramework,
        local: LocalSessions,
        active_users: ActiveUsers,
        cookie: str,
        requests: Counter,
    ) -> None:
        self.app = app
        self.local = local
        self.active_users = active_users
        self.cookie_prefix = cookie.encode() + b"="
        # cache_requests_total{operation="copy"}: a hit answered here, a miss passed on.
        self._hit = {"operation": "copy", "result": "hit"}
        self._miss = {"operation": "copy", "result": "miss"}
        self._requests = requests

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == PATH
            and scope["method"] == "GET"
            and not scope.get("root_path")
        ):
            cookie = self._cookie(scope["headers"])
            if cookie is not None:
                copy = self.local.answer(cookie)
                if copy is not None and not self.active_users.due(copy.user_id):
                    self._requests.inc(self._hit)
                    bind_route(PATH)
                    bind_user(copy.user_id)
                    headers = [*_HEADERS, (b"content-length", b"%d" % len(copy.body))]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    await send(
                        {"type": "http.response.body", "body": copy.body, "more_body": False}
                    )
                    return
                self._requests.inc(self._miss)
                scope[SCOPE_KEY] = (cookie, self.local.generation)  # type: ignore[literal-required]
        await self.app(scope, receive, send)

    def _cookie(self, headers: Any) -> str | None:
        """The session cookie's value when the request is plain: the cookie named once in all
        its Cookie headers (HTTP/2 sends one per cookie; werkzeug joins them), in the characters
        a signed token has, and no body. Else None (Quart decides)."""
        token: bytes | None = None
        for name, value in headers:
            if name == b"cookie":
                if b'"' in value:  # a quoted value may hide `;` from werkzeug, not from here
                    return None
                for part in value.split(b";"):
                    part = part.strip()
                    if part.startswith(self.cookie_prefix):
                        if token is not None:
                            return None
                        token = part[len(self.cookie_prefix) :]
            elif (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
                return None
        if not token or len(token) > MAX_COOKIE_LENGTH or not _COOKIE_CHARACTERS.issuperset(token):
            return None
        return token.decode()


def init_signed_in(app: Quart, local: LocalSessions, settings: Settings) -> None:
    """Listen on the invalidation channel while `app` serves."""
    assert settings.redis_url is not None
    channel = InvalidationChannel(
        settings.redis_url.get_secret_value(),
        settings.cache_key_prefix,
        settings.redis_socket_timeout,
        local.heard,
    )
    local.channel = channel
    app.before_serving(channel.start)
    app.after_serving(channel.stop)
