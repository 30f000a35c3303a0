"""Health checks: database, cache, disk and memory, run concurrently, each under its own timeout.

A load balancer polls often and from many nodes, so results are shared: concurrent callers await
one in-flight run (single flight) and a result is reused for `HEALTH_CACHE_TTL` seconds. A
background task refreshes them every `HEALTH_REFRESH_SECONDS` so the health metrics stay current
when nobody polls. Failures are logged with the exception server-side, once per change of state;
responses carry only a status, numbers and a short reason code.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog
from quart import Quart
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.backends.cache import InstrumentedCache
from service.backends.db.engine import (
    SchemaRevisions,
    create_probe_engine,
    dispose,
    schema_revisions,
    select_schema_revision,
)
from service.health.memory import memory_use
from service.observability.metrics import Metrics
from service.settings import HEALTH_CHECKS, CheckName, Settings
from service.unavailable import FailureReason, failure_reason

logger = structlog.get_logger(__name__)

Status = Literal["healthy", "unhealthy", "warning"]
_Check = TypeVar("_Check", bound=Callable[..., Awaitable["CheckResult"]])


@dataclass(slots=True)
class CheckResult:
    status: Status
    duration_ms: float
    values: dict[str, float] = field(default_factory=dict)
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status, "duration_ms": self.duration_ms}
        body.update(self.values)
        if self.reason is not None:
            body["reason"] = self.reason
        return body


@dataclass(slots=True)
class HealthReport:
    checks: dict[CheckName, CheckResult]
    critical: tuple[CheckName, ...]
    checked_at: datetime
    # What each check reads (`reads`), for the `services` summary: none, a bare status.
    readings: dict[CheckName, tuple[str, ...]] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return all(self.checks[name].status == "healthy" for name in self.critical)

    def failing(self) -> dict[str, str]:
        """The critical checks that are not healthy, with their reason codes."""
        return {
            name: self.checks[name].reason or self.checks[name].status
            for name in self.critical
            if self.checks[name].status != "healthy"
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "status": "healthy" if self.ready else "degraded",
            "timestamp": self.checked_at.isoformat().replace("+00:00", "Z"),
            # Every registered check: its readings and status, or its status alone.
            "services": {
                name: _summary(result, self.readings.get(name, ()))
                for name, result in self.checks.items()
            },
            "checks": {name: result.as_json() for name, result in self.checks.items()},
        }


def reads(*names: str) -> Callable[[_Check], _Check]:
    """Declare the values a check reports (`free_percent`): the report's `services` summary
    gives them with the status, even when the check failed and read nothing."""

    def declare(check: _Check) -> _Check:
        check.__dict__["readings"] = names
        return check

    return declare


class HealthMonitor:
    def __init__(self, settings: Settings, metrics: Metrics, cache: InstrumentedCache) -> None:
        self.cache = cache
        self.schema: SchemaRevisions | None = None  # PostgreSQL: compared with the database's
        self.settings = settings
        self.metrics = metrics
        self.probe_engine: AsyncEngine | None = None
        self.draining = False  # set by the lifecycle when this worker is about to stop
        # A write failed for want of disk: the database check writes until a write works again.
        self.cannot_write = False
        self._report: HealthReport | None = None
        self._report_at = 0.0
        self._inflight: asyncio.Future[HealthReport] | None = None
        self._last_state: dict[CheckName, tuple[Status, str | None]] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._disposals: set[asyncio.Future[Any]] = set()  # unwinding in the background
        # One method per name of settings.CheckName: a name without its `_check_<name>` fails here,
        # when the app is built.
        self._checks: dict[CheckName, Callable[[], Awaitable[CheckResult]]] = {
            name: getattr(self, f"_check_{name}") for name in HEALTH_CHECKS
        }
        self._readings: dict[CheckName, tuple[str, ...]] = {
            name: check.__func__.__dict__.get("readings", ())  # type: ignore[attr-defined]
            for name, check in self._checks.items()
        }

    async def start(self) -> None:
        """Begin checking (the app's resources are open)."""
        if not self.settings.uses_embedded_database:
            self.schema = await asyncio.to_thread(schema_revisions)
        self.probe_engine = create_probe_engine(self.settings)
        if self.settings.health_refresh_seconds > 0:
            self._refresher = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()  # it only ever waits on the shielded run or sleeps
            await asyncio.gather(self._refresher, return_exceptions=True)
        if self._inflight is not None:
            # Let a running check finish (it is bounded by its timeout) rather than cancel it
            # mid-command, which would leave its connection for the garbage collector.
            inflight = self._inflight
            with suppress(Exception):
                await asyncio.wait_for(
                    asyncio.shield(inflight), self.settings.health_check_timeout + 1
                )
            if not inflight.done():
                inflight.cancel()
                await asyncio.gather(inflight, return_exceptions=True)
        await asyncio.gather(*self._disposals, return_exceptions=True)
        if self.probe_engine is not None:
            await dispose(self.probe_engine)

    async def report(self) -> HealthReport:
        """The latest report: cached for the TTL, else the one in flight, else a new run."""
        if self._report is not None and time.monotonic() - self._report_at < self._ttl():
            return self._report
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._run())
        # Shielded: a poller that hangs up must not cancel the run the others are waiting for.
        return await asyncio.shield(self._inflight)

    def _ttl(self) -> float:
        return self.settings.health_cache_ttl

    async def _run(self) -> HealthReport:
        try:
            names = list(self._checks)
            results = await asyncio.gather(*(self._timed(name) for name in names))
            report = HealthReport(
                dict(zip(names, results, strict=True)),
                tuple(self.settings.health_critical_checks),
                datetime.now(UTC),
                self._readings,
            )
            self._report, self._report_at = report, time.monotonic()
            return report
        finally:
            self._inflight = None

    async def _timed(self, name: CheckName) -> CheckResult:
        started = time.perf_counter()
        error: BaseException | None = None
        # The check runs as its own task and is abandoned at its timeout, not awaited until it
        # has unwound: a cancelled connect or query may take as long again to clean up (the
        # report waited 1 s on a 0.5 s timeout), and the load balancer must not wait for that.
        check = asyncio.ensure_future(self._checks[name]())
        await asyncio.wait((check,), timeout=self.settings.health_check_timeout)
        try:
            if not check.done():
                self._abandon(check)
                raise TimeoutError(f"{name} check took over {self.settings.health_check_timeout}s")
            result = check.result()
        except TimeoutError as exc:
            result, error = CheckResult("unhealthy", 0.0, reason="timeout"), exc
        except Exception as exc:
            result, error = CheckResult("unhealthy", 0.0, reason=classify(exc)), exc
        elapsed = time.perf_counter() - started
        result.duration_ms = round(elapsed * 1000, 3)
        self.metrics.health_status.set({"check": name}, 1 if result.status == "healthy" else 0)
        self.metrics.health_duration.observe({"check": name}, elapsed)
        self._log_change(name, result, error)
        if name == "database" and error is not None:
            self._reset_probe_engine()
        return result

    def _log_change(
        self, name: CheckName, result: CheckResult, error: BaseException | None
    ) -> None:
        state = (result.status, result.reason)
        previous = self._last_state.get(name)
        self._last_state[name] = state
        if state == previous:
            return
        if result.status == "unhealthy":
            logger.error(
                "health_check_failed",
                check=name,
                reason=result.reason,
                exc_info=(type(error), error, error.__traceback__) if error else None,
            )
        elif result.status == "warning":
            logger.warning("health_check_warning", check=name, **result.values)
        elif previous is not None:
            logger.info("health_check_recovered", check=name)

    def _abandon(self, check: asyncio.Future[CheckResult]) -> None:
        """Cancel a check that overran; it unwinds in the background (awaited by `stop`)."""
        check.cancel()
        self._disposals.add(check)
        check.add_done_callback(self._disposals.discard)
        check.add_done_callback(_retrieve_result)

    def _reset_probe_engine(self) -> None:
        # A timed-out or broken probe connection is dropped, so the next run starts afresh.
        engine = self.probe_engine
        if engine is not None:
            self.probe_engine = create_probe_engine(self.settings)
            task = asyncio.ensure_future(_dispose_quietly(engine))
            self._disposals.add(task)
            task.add_done_callback(self._disposals.discard)

    def database_failed(self, reason: FailureReason) -> None:
        """Told by the database layer why a request's transaction failed. A full disk leaves
        reads working (`SELECT 1` passes) while every write fails: from now on the check
        writes too, and says `disk_full` until a write works again."""
        if reason == "disk_full":
            self.cannot_write = True

    async def _check_database(self) -> CheckResult:
        assert self.probe_engine is not None
        if self.cannot_write:
            await self._write_probe()  # raises while the disk is full
            self.cannot_write = False
        async with self.probe_engine.connect() as connection:
            if self.schema is None:  # the embedded database migrates itself at start
                await connection.execute(text("SELECT 1"))
                return CheckResult("healthy", 0.0)
            revision = await select_schema_revision(connection)
        if self.schema.is_behind(revision):
            # Reachable, but every write would fail: not ready (`alembic upgrade head`).
            return CheckResult("unhealthy", 0.0, reason="schema_outdated")
        return CheckResult("healthy", 0.0)

    async def _write_probe(self) -> None:
        """A write that needs room on the database's disk and leaves the data as it was: the
        embedded database's header (`user_version`, which nothing else uses), or a temporary
        table on PostgreSQL (dropped at commit)."""
        assert self.probe_engine is not None
        async with self.probe_engine.begin() as connection:
            if self.settings.uses_embedded_database:
                stamp = uuid.uuid4().int % 2**31
                await connection.exec_driver_sql(f"PRAGMA user_version = {stamp}")
            else:
                await connection.exec_driver_sql(
                    "CREATE TEMPORARY TABLE health_write_probe (written integer) ON COMMIT DROP"
                )
                await connection.exec_driver_sql("INSERT INTO health_write_probe VALUES (1)")

    async def _check_cache(self) -> CheckResult:
        cache = self.cache
        key = f"health:{uuid.uuid4().hex}"
        token = uuid.uuid4().hex
        await cache.write(key, token, 10, operation="health_set")
        if await cache.read(key, operation="health_get") != token:
            return CheckResult("unhealthy", 0.0, reason="error")
        return CheckResult("healthy", 0.0)

    @reads("free_percent")
    async def _check_disk(self) -> CheckResult:
        usage = await asyncio.to_thread(shutil.disk_usage, _existing(self._disk_path()))
        self.metrics.disk_free.set({}, usage.free / usage.total)
        free_percent = round(usage.free / usage.total * 100, 1)
        threshold = self.settings.disk_warning_free_percent
        status: Status = "warning" if free_percent < threshold else "healthy"
        return CheckResult(status, 0.0, {"free_percent": free_percent})

    @reads("percent_used")
    async def _check_memory(self) -> CheckResult:
        memory = await asyncio.to_thread(memory_use)
        self.metrics.memory_used.set({"source": memory.source}, memory.used_ratio)
        percent_used = round(memory.used_ratio * 100, 1)
        threshold = self.settings.memory_warning_percent
        status: Status = "warning" if percent_used >= threshold else "healthy"
        return CheckResult(status, 0.0, {"percent_used": percent_used})

    def _disk_path(self) -> Path:
        return self.settings.health_disk_path or self.settings.data_dir

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.report()
            except Exception:
                logger.exception("health_refresh_failed")
            await asyncio.sleep(self.settings.health_refresh_seconds)


def classify(exc: BaseException) -> str:
    """A short, safe reason code for a failed check; the exception itself stays in the log."""
    return _CHECK_REASONS[failure_reason(exc)]


# The health report's reason codes (docs/health.md): coarser than the metrics' failure reasons, and
# named for a reader of the report (`connection_refused`, not `refused`).
_CHECK_REASONS: dict[FailureReason, str] = {
    "timeout": "timeout",
    "pool_exhausted": "timeout",
    "refused": "connection_refused",
    "auth": "auth_failed",
    "disk_full": "disk_full",
    "other": "error",
}


def init_health(app: Quart, monitor: HealthMonitor) -> None:
    """Run `monitor` while `app` serves: started once every resource is open (while_serving),
    stopped before any is closed."""

    @app.while_serving
    async def _running() -> AsyncGenerator[None, None]:
        await monitor.start()
        yield
        await monitor.stop()


async def _dispose_quietly(engine: AsyncEngine) -> None:
    try:
        async with asyncio.timeout(5):
            await dispose(engine)
    except Exception:
        logger.debug("probe_engine_dispose_failed", exc_info=True)


def _retrieve_result(future: asyncio.Future[Any]) -> None:
    # An abandoned check's late failure was already reported as a timeout.
    if not future.cancelled():
        future.exception()


def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _summary(result: CheckResult, readings: tuple[str, ...]) -> str | dict[str, Any]:
    if not readings:
        return "healthy" if result.status == "healthy" else "unhealthy"
    return {**{name: result.values.get(name) for name in readings}, "status": result.status}
