"""The invalidation channel: a Redis pub/sub subscription through which every worker hears at once
what another worker or instance has just made stale (a session ended, a profile changed).

A worker keeps copies of what it served only while it can prove it would have heard of their
end. Redis delivers a connection's messages in order, so a PING answered on the subscribed
connection proves that everything published before the answer was sent has arrived and been
applied (messages are applied in `data_received`, before any request's code runs in that turn of
the event loop). The proof is kept for `TRUST_SECONDS` from the moment the PING was *sent*:
a publisher that waits that long after its PUBLISH before it answers (`SessionStore.end`) knows
that every worker either heard the message or has stopped trusting its copies. While copies are
used, the channel is pinged every `PING_EVERY_SECONDS`; a closed connection forgets every copy at
once; one whose answer does not come within REDIS_SOCKET_TIMEOUT is closed as hung.

The connection is this module's own (an asyncio protocol, hiredis parsing), not a redis-py
client: redis-py reads a subscription in a task, which may run after a request that arrived in
the same turn of the loop; here the messages are applied as their bytes arrive.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import hiredis
import structlog
from redis.asyncio.connection import SSLConnection, parse_url

logger = structlog.get_logger(__name__)

CHANNEL = "invalidations"  # after the cache's key prefix
# How long a PING's answer proves the copies current, from when the PING was sent; also how long
# a publisher waits before it answers. A worker whose loop is too busy to ping this often stops
# using its copies (its requests take the ordinary path) until it catches up.
TRUST_SECONDS = 0.2
PING_EVERY_SECONDS = 0.05
# Pinging stops once the copies have not been asked for this long: an idle worker costs nothing.
IDLE_SECONDS = 1.0
_RETRY_SECONDS = (0.1, 5.0)  # reconnection backoff: first, longest


class InvalidationChannel:
    """One worker's subscription. `listener(message)` is called with each message's text, and
    with None when messages may have been missed (the connection was lost): forget everything."""

    def __init__(
        self, url: str, prefix: str, timeout: float, listener: Callable[[str | None], None]
    ) -> None:
        self.channel = (prefix + CHANNEL).encode()
        # A client name has no spaces or control characters.
        self.name = "".join(c if "!" <= c <= "~" else "_" for c in prefix + CHANNEL)
        self._url = url
        self._timeout = timeout
        self._listener = listener
        self._protocol: _Subscription | None = None
        self._trusted_until = 0.0
        self._ping_sent_at: float | None = None
        self._used_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def trusted(self) -> bool:
        """Whether copies may be used now (and keep them pinged while they are)."""
        now = time.monotonic()
        if now - self._used_at > PING_EVERY_SECONDS:
            self._used_at = now
            if self._ping_sent_at is None:
                self._wake.set()
        return now < self._trusted_until

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._protocol.subscribed

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="invalidation-channel")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._protocol is not None:
            self._protocol.close()

    async def _run(self) -> None:
        delay = _RETRY_SECONDS[0]
        lost_since: float | None = None
        while True:
            try:
                protocol = await asyncio.wait_for(self._connect(), self._timeout)
            except Exception as error:  # any failure to subscribe: no copy is believed, retry
                if lost_since is None:
                    lost_since = time.monotonic()
                    logger.warning("invalidations_unavailable", error=_describe(error))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, _RETRY_SECONDS[1])
                continue
            delay = _RETRY_SECONDS[0]
            if lost_since is not None:
                logger.info(
                    "invalidations_restored", seconds_lost=round(time.monotonic() - lost_since, 3)
                )
                lost_since = None
            self._protocol = protocol
            try:
                await self._ping_while_used(protocol)
            finally:
                protocol.current = False
                self._protocol = None
                self._forget()
                protocol.close()
            lost_since = time.monotonic()
            logger.warning("invalidations_unavailable", error="connection lost")

    async def _connect(self) -> _Subscription:
        loop = asyncio.get_running_loop()
        options: dict[str, Any] = dict(parse_url(self._url))
        connection_class = options.pop("connection_class", None)
        factory = lambda: _Subscription(self)  # noqa: E731
        if "path" in options:
            _, protocol = await loop.create_unix_connection(factory, options["path"])
        else:
            host, port = options.get("host", "localhost"), options.get("port", 6379)
            ssl = None
            if connection_class is SSLConnection:
                ssl = SSLConnection(**options).ssl_context.get()
            _, protocol = await loop.create_connection(
                factory, host, port, ssl=ssl, server_hostname=host if ssl else None
            )
        try:
            await protocol.subscribe(options.get("username"), options.get("password"))
        except BaseException:
            protocol.current = False
            protocol.close()
            raise
        return protocol

    async def _ping_while_used(self, protocol: _Subscription) -> None:
        while not protocol.lost.done():
            if time.monotonic() - self._used_at > IDLE_SECONDS:
                self._wake.clear()
                woken: asyncio.Future[Any] = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({protocol.lost, woken}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woken.cancel()
                continue
            sent_at = self._ping_sent_at = time.monotonic()
            protocol.ping()
            while True:
                done, _ = await asyncio.wait([protocol.lost], timeout=PING_EVERY_SECONDS)
                if done:
                    return
                if self._ping_sent_at != sent_at:
                    break  # answered: the next one
                # Unanswered for REDIS_SOCKET_TIMEOUT: a hung path; closed, so the copies go.
                if time.monotonic() - sent_at > self._timeout:
                    logger.warning("invalidations_hung", seconds=self._timeout)
                    return

    def _pong(self) -> None:
        if self._ping_sent_at is not None:
            self._trusted_until = self._ping_sent_at + TRUST_SECONDS
            self._ping_sent_at = None

    def _forget(self) -> None:
        self._trusted_until = 0.0
        self._ping_sent_at = None
        self._listener(None)


class _Refused(Exception):
    """Redis refused the subscription (authentication, ACL)."""


class _Subscription(asyncio.Protocol):
    """The subscribed connection: each reply parsed and acted on as its bytes arrive."""

    def __init__(self, channel: InvalidationChannel) -> None:
        self.owner = channel
        self.subscribed = False
        self.current = True  # until the channel gives this connection up
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader = hiredis.Reader(encoding="utf-8", errors="replace")
        self._transport: asyncio.Transport | None = None
        self._pending: list[str] = []  # AUTH and CLIENT SETNAME, answered in order

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    async def subscribe(self, username: str | None, password: str | None) -> None:
        assert self._transport is not None
        if password is not None:
            auth = ["AUTH", username, password] if username else ["AUTH", password]
            self._send(*auth)
            self._pending.append("AUTH")
        # Named, for CLIENT LIST (and CLIENT KILL) by an operator: prefix, then what it is.
        self._send("CLIENT", "SETNAME", self.owner.name)
        self._pending.append("CLIENT")
        self._send("SUBSCRIBE", self.owner.channel.decode())
        await self._ready

    def ping(self) -> None:
        self._send("PING")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError:
                self.close()
                return
            if reply is False:
                return
            self._reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.subscribed = False
        if not self._ready.done():
            self._ready.set_exception(ConnectionError("closed before subscribing"))
        if not self.lost.done():
            self.lost.set_result(None)

    def _reply(self, reply: Any) -> None:
        if not self.current:
            return  # a connection given up: its late bytes prove nothing
        command = self._pending.pop(0) if self._pending else None
        if command == "CLIENT":
            return  # the name is a courtesy: an ACL that forbids it does not stop the channel
        if isinstance(reply, hiredis.ReplyError):
            if not self._ready.done():
                self._ready.set_exception(_Refused(str(reply).split(" ", 1)[0]))
            self.close()
            return
        if not isinstance(reply, list):  # +OK to AUTH
            return
        if not reply:
            return
        kind = reply[0]
        if kind == "message" and len(reply) == 3:
            self.owner._listener(reply[2])
        elif kind == "pong":
            self.owner._pong()
        elif kind == "subscribe":
            self.subscribed = True
            # Whatever was published before this moment was not heard: reads that began
            # before it make no copy (a worker starting, or back after a loss).
            self.owner._listener(None)
            if not self._ready.done():
                self._ready.set_result(None)

    def _send(self, *parts: str) -> None:
        assert self._transport is not None
        encoded = [part.encode() for part in parts]
        self._transport.write(
            b"*%d\r\n" % len(encoded)
            + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in encoded)
        )


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "connect timed out"
    if isinstance(error, _Refused):
        return f"refused: {error}"
    return type(error).__name__
