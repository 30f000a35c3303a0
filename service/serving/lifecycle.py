"""A worker's life as an operator sees it: started, draining, stopped.

`service_started` is written once every part is open; `begin_draining` (called by the
supervisor, `service/serving/supervisor.py`, when the worker is asked to stop or to make way for
a successor) turns readiness to 503 `draining` and writes `service_draining`; `abandon` names
the requests whose answer a client had not taken when the stop's time ran out
(`requests_abandoned`; each one's `request_finished` line says `delivered: false`);
`service_stopped` closes the record once every request has finished, with the reason and how
long the stop took.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, Collection
from typing import Any, Literal

import structlog
from quart import Quart

from service.health.checks import HealthMonitor
from service.observability.loop_errors import quiet_accept_failures
from service.settings import Settings
from service.version import VERSION

# sigterm, sigint: the signal reached the worker or its master; recycle: the worker served its
# `max_requests` (or the master got SIGHUP) and makes way for a successor; master_gone: the
# supervising process disappeared; stopping: the master stops because another worker failed.
StopReason = Literal["sigterm", "sigint", "recycle", "master_gone", "stopping"]


class Lifecycle:
    def __init__(self, settings: Settings, health: HealthMonitor) -> None:
        self.settings = settings
        self.health = health
        self.logger = structlog.get_logger("service.serving.lifecycle")
        self.started_at: float | None = None
        self.draining_since: float | None = None
        self.stop_reason: StopReason | None = None
        # The tasks (one per request, hypercorn's) whose connection the stop closed mid-answer.
        self.abandoned: set[asyncio.Task[Any]] = set()

    def begin_draining(self, reason: StopReason, in_flight: int) -> None:
        """From now on readiness answers 503 `draining`; requests are still served."""
        if self.draining_since is not None:
            return
        self.draining_since = time.monotonic()
        self.stop_reason = reason
        self.health.draining = True
        self.logger.info(
            "service_draining",
            reason=reason,
            in_flight_requests=in_flight,
            drain_seconds=self.settings.drain_seconds if reason != "recycle" else 0,
        )

    def abandon(self, tasks: Collection[asyncio.Task[Any]]) -> None:
        """`tasks` are requests whose answer was not taken by the end of the stop's time: their
        connections are about to be closed."""
        self.abandoned.update(tasks)
        self.logger.warning("requests_abandoned", requests=len(tasks))

    def started(self) -> None:
        self.started_at = time.monotonic()
        self.logger.info(
            "service_started",
            version=VERSION,
            environment=self.settings.environment.value,
            pid=os.getpid(),
            database=self.settings.effective_database_url.split("://", 1)[0],
            cache="redis" if self.settings.uses_redis else "in-process",
            settings_changed=self.settings.changed(),
        )

    def stopped(self) -> None:
        now = time.monotonic()
        assert self.started_at is not None
        self.logger.info(
            "service_stopped",
            reason=self.stop_reason or "server",  # "server": stopped by a plain hypercorn
            served_seconds=round(now - self.started_at, 3),
            stop_seconds=None
            if self.draining_since is None
            else round(now - self.draining_since, 3),
        )


def init_lifecycle(app: Quart, lifecycle: Lifecycle) -> None:
    """Register last, so that `service_started` means every part is open."""

    @app.while_serving
    async def _lines() -> AsyncGenerator[None, None]:
        quiet_accept_failures(asyncio.get_running_loop())
        lifecycle.started()
        yield
        lifecycle.stopped()
