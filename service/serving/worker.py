"""A worker process of `scene-packer serve`: hypercorn's own worker (`worker_serve`), with the
stop the supervisor (supervisor.py) asks for.

The worker serves the app's ASGI stack as it is and reaches the app only through its stop hooks
(`StoppableApp` below, which service/app.py's ServiceApp provides). A stop: readiness turns 503
and HTTP/1 answers say `Connection: close` (`begin_draining`); for DRAIN_SECONDS it keeps
accepting; it stops accepting, serves for a moment what already arrived on open connections,
then hands over to hypercorn (idle connections closed, requests in flight finished up to
`graceful_timeout`, the app's shutdown); a moment before `graceful_timeout` what is left is
ended on the app's terms (`_end_in_time`).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any, Protocol, cast, runtime_checkable

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.typing import ASGIFramework
from hypercorn.utils import wrap_app

from service.observability.families import WorkerStart
from service.observability.metrics import WORKER_START_ENV
from service.serving.lifecycle import StopReason

EXIT_CANNOT_SERVE = 3  # a worker failed to start (the master's exit code too)
STOP_SIGNALS: dict[signal.Signals, StopReason] = {
    signal.SIGTERM: "sigterm",
    signal.SIGINT: "sigint",
}
POLL_SECONDS = 0.1
# After a stopping worker closes its listener: requests already on an open connection are still
# served (with `Connection: close`) before hypercorn closes the idle ones.
CLOSE_GRACE_SECONDS = 1.0
# How long before graceful_timeout the requests still in flight are ended (at most a quarter of it).
_END_MARGIN_SECONDS = 1.0


@dataclass(frozen=True)
class Plan:
    """What every worker needs, handed over to the spawned process."""

    application_path: str
    config: Config
    sockets: Sockets
    drain_seconds: float
    stop_signal: Synchronized[int]  # the signal the master received; 0 until then
    shutdown: Event  # set by the master: every worker stops


def end_margin(graceful_timeout: float) -> float:
    """How long before graceful_timeout a stopping worker ends the requests still in flight:
    a request admitted as the drain ends must be able to finish within graceful_timeout less
    this."""
    return min(_END_MARGIN_SECONDS, graceful_timeout / 4)


@runtime_checkable
class StoppableApp(Protocol):
    """What a worker needs of the app it serves beyond ASGI (service/app.py, ServiceApp): told
    when to drain and when to make way for a successor; at the stop's end, to stop the requests
    still being worked on and to name the ones it abandons."""

    @property
    def requests_in_flight(self) -> int: ...
    def begin_draining(self, reason: StopReason) -> None: ...
    def stop_in_flight(self) -> int: ...
    def abandon_in_flight(self) -> int: ...
    def recycle_after(self, requests: int, then: Callable[[], None]) -> None: ...


def worker_main(
    plan: Plan,
    ready: Event,
    retire: Event,
    wants_successor: Event,
    max_requests: int | None,
    reason: WorkerStart,
) -> None:
    os.environ[WORKER_START_ENV] = reason  # read by the app's metrics (app_worker_starts_total)
    early: list[int] = []  # a stop signal before the event loop runs
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda received, _frame: early.append(received))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the master's _start
    servers = _capture_servers()
    try:
        module_name, _, attribute = plan.application_path.partition(":")
        app = getattr(importlib.import_module(module_name), attribute or "app")
        if not isinstance(app, StoppableApp):
            raise TypeError(f"{plan.application_path} is not the service's app (no stop hooks)")
        if max_requests is not None:
            app.recycle_after(max_requests, wants_successor.set)
        asyncio.run(_serve_worker(plan, app, servers, early, ready, retire))
    except BaseException:
        if ready.is_set():
            raise
        # The cause is on stderr once (it went through the app's logging when it could); the
        # master reports `worker_failed_to_start` and exits EXIT_CANNOT_SERVE.
        traceback.print_exc()
        sys.exit(EXIT_CANNOT_SERVE)


async def _serve_worker(
    plan: Plan,
    app: StoppableApp,
    servers: _Servers,
    early: list[int],
    ready: Event,
    retire: Event,
) -> None:
    loop = asyncio.get_running_loop()
    signalled: list[int] = []
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, signalled.append, signum)
    signalled.extend(early)
    master = os.getppid()

    async def shutdown_trigger() -> None:
        # hypercorn awaits this once the app has started and every listener accepts.
        ready.set()
        reason = None
        while reason is None:
            await asyncio.sleep(POLL_SECONDS)
            reason = _stop_reason(plan, signalled, retire, master)
        app.begin_draining(reason)
        if reason != "recycle":
            await asyncio.sleep(plan.drain_seconds)  # still accepting: readiness says 503
        for listener in servers.listeners:
            listener.close()
        grace = plan.config.keep_alive_timeout if reason == "recycle" else CLOSE_GRACE_SECONDS
        await asyncio.sleep(min(grace, plan.config.keep_alive_timeout))
        # Returning hands over to hypercorn: idle connections closed, in-flight requests
        # finished (up to graceful_timeout), then the app's shutdown.
        ending.append(asyncio.create_task(_end_in_time(app, servers, plan.config.graceful_timeout)))

    ending: list[asyncio.Task[None]] = []
    wrapped = wrap_app(cast(ASGIFramework, app), plan.config.wsgi_max_body_size, "asgi")
    try:
        await worker_serve(
            wrapped, plan.config, sockets=plan.sockets, shutdown_trigger=shutdown_trigger
        )
    finally:
        for task in ending:
            task.cancel()


async def _end_in_time(app: StoppableApp, servers: _Servers, graceful_timeout: float) -> None:
    """What hypercorn would find at `graceful_timeout`, ended a moment before it on the app's
    terms. hypercorn cancels every connection left then: a request still being worked on answers
    an empty 500, and a response blocked on a client that reads nothing (an HTTP/2 stream with a
    zero window) fails the cancellation itself, and the worker's exit. Here the requests still
    being worked on answer 503 `shutting_down` first; then the connections still open are
    closed, their unanswered requests logged as not delivered."""
    margin = end_margin(graceful_timeout)
    await asyncio.sleep(graceful_timeout - margin)
    if app.requests_in_flight:
        app.stop_in_flight()
        await asyncio.sleep(margin / 2)  # their answers go out
    app.abandon_in_flight()
    for writer in list(servers.connections):
        writer.transport.abort()


def _stop_reason(plan: Plan, signalled: list[int], retire: Event, master: int) -> StopReason | None:
    if signalled:
        return STOP_SIGNALS[signal.Signals(signalled[0])]
    if plan.shutdown.is_set():
        received = plan.stop_signal.value
        return STOP_SIGNALS[signal.Signals(received)] if received else "stopping"
    if retire.is_set():
        return "recycle"
    if os.getppid() != master:
        return "master_gone"
    return None


@dataclass
class _Servers:
    """The servers hypercorn's worker_serve starts, and their open connections."""

    listeners: list[asyncio.Server] = field(default_factory=list)
    connections: set[asyncio.StreamWriter] = field(default_factory=set)


def _capture_servers() -> _Servers:
    """Record the servers hypercorn's worker_serve starts, so a stopping worker can stop
    accepting before hypercorn closes idle connections (it does both at once), and their
    connections, so it can close the ones still open at the stop's end. This process only."""
    servers = _Servers()
    start_server = asyncio.start_server

    async def recording_start_server(
        client_connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        *args: Any,
        **kwargs: Any,
    ) -> asyncio.Server:
        async def recorded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            servers.connections.add(writer)
            try:
                await client_connected(reader, writer)
            finally:
                servers.connections.discard(writer)

        server = await start_server(recorded, *args, **kwargs)
        servers.listeners.append(server)
        if sys.version_info >= (3, 12, 1):
            # From 3.12.1 wait_closed() waits for every connection, so hypercorn's
            # graceful_timeout would never apply (hypercorn issue #308).
            server.wait_closed = _closed  # type: ignore[method-assign]
        return server

    asyncio.start_server = recording_start_server  # type: ignore[assignment]
    return servers


async def _closed() -> None:
    return None
