"""Every metric the service exports, defined once, and what records them.

Names and labels are a contract: dashboards and alerts in `monitoring/` are built on them.
Label values come only from bounded sets (route templates, a fixed method list, known error
classes, fixed operation names), never from raw client input, so a scan of random URLs cannot
create series.
"""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import resource
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import lru_cache
from typing import Any

import psutil
from aioprometheus.collectors import Counter, Gauge, Histogram, Registry
from quart import Quart
from quart.signals import got_request_exception
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from service.observability import exposition
from service.observability.collectors import Series, collector_for
from service.observability.context import current_context
from service.observability.families import (
    FAMILIES,
    KNOWN_ERROR_TYPES,
    OTHER,
    WORKER_STARTS,
    LoginResult,
    LogoutScope,
    Merge,
    WorkerStart,
)
from service.settings import Settings
from service.unavailable import Dependency, FailureReason
from service.version import VERSION

EVENT_LOOP_PROBE_SECONDS = 0.5
# The most a value read at scrape time (a count in the database or the cache) may take; past it
# the last value is reported. Two readers (sessions, active users) stay well inside Prometheus'
# default 10 s scrape timeout.
SCRAPE_READ_SECONDS = 0.5
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"
WORKER_START_ENV = "SCENE_PACKER_WORKER_START"
_STATUS_TEXT = {status: str(status) for status in range(100, 600)}


class Metrics:
    """One registry per app (tests build many apps); each family of `FAMILIES` (families.py) an
    attribute of the same name as its row's `attribute`, typed here."""

    http_requests: Counter
    http_duration: Histogram
    http_body_wait: Histogram
    http_in_progress: Gauge
    app_errors: Counter
    rate_limited: Counter
    db_queries: Counter
    db_duration: Histogram
    db_errors: Counter
    db_pool: Gauge
    db_pool_max: Gauge
    cache_requests: Counter
    cache_errors: Counter
    dependency_errors: Counter
    active_users: Gauge
    auth_sessions_active: Gauge
    auth_logins: Counter
    auth_logouts: Counter
    health_status: Gauge
    health_duration: Histogram
    disk_free: Gauge
    memory_used: Gauge
    frontend_vitals: Histogram
    frontend_cls: Histogram
    frontend_js_errors: Counter
    frontend_api_duration: Histogram
    frontend_api_errors: Counter
    frontend_rejected: Counter
    frontend_log_dropped: Counter
    process_cpu: Counter
    process_memory: Gauge
    process_fds: Gauge
    process_start: Gauge
    process_max_fds: Gauge
    event_loop_lag: Histogram
    workers: Gauge
    worker_starts: Counter
    snapshot_write_errors: Counter
    python_info: Gauge
    gc_objects_collected: Counter
    gc_objects_uncollectable: Counter
    gc_collections: Counter
    app_info: Gauge

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry()
        for family in FAMILIES:
            setattr(self, family.attribute, collector_for(family, self.registry))
        self._gauge_merge: dict[str, Merge] = {
            family.name: family.merge for family in FAMILIES if family.merge is not None
        }
        self.python_info.set(_python_labels(), 1)
        self.app_info.set({"version": VERSION, "environment": settings.environment.value}, 1)
        self._gc_seen: dict[tuple[str, str], float] = {}
        self._requests = Series(self.http_requests, "method", "endpoint", "status")
        self._durations = Series(self.http_duration, "method", "endpoint")
        self._in_progress = Series(self.http_in_progress, "method")
        self._finished_keys: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        # The latest request behind chosen counter series (5xx answers, unhandled errors).
        self._counter_examples: dict[str, dict[exposition.LabelKey, exposition.RawExemplar]] = {
            "http_requests_total": {},
            "app_errors_total": {},
        }
        self._process = psutil.Process(os.getpid())
        self._last_cpu = 0.0
        self._scrape_readers: list[Callable[[], Awaitable[None]]] = []
        self._pool: QueuePool | None = None

    def dependency_failed(self, dependency: Dependency, reason: FailureReason) -> None:
        self.dependency_errors.inc({"dependency": dependency, "reason": reason})

    def expect_rate_limits(self, endpoints: list[str]) -> None:
        """The routes that carry a rate limit: their 429 counts are exported from 0."""
        for endpoint in endpoints:
            self.rate_limited.add({"endpoint": endpoint}, 0)

    def add_scrape_reader(self, reader: Callable[[], Awaitable[None]]) -> None:
        """A part's own values to read when a scrape comes (it sets its gauges itself), within
        SCRAPE_READ_SECONDS."""
        self._scrape_readers.append(reader)

    def body_waited(self, endpoint: str, seconds: float) -> None:
        """A request with a body waited this long for it in all (the client's part)."""
        self.http_body_wait.observe({"endpoint": endpoint}, seconds)

    def request_started(self, method: str) -> None:
        self._in_progress.add((method,), 1)

    def request_finished(
        self,
        method: str,
        endpoint: str,
        status: int,
        seconds: float,
        request_id: str | None = None,
        trace_id: str | None = None,
    ) -> None:
        # One lookup finds the three series a finished request changes (in progress, count,
        # duration): the hottest path of the metrics, once per request.
        example = (request_id, trace_id, seconds, time.time()) if request_id is not None else None
        keys = self._finished_keys.get((method, endpoint, status))
        if keys is None:
            self._first_finished(method, endpoint, status, seconds, example)
        else:
            in_progress, requests, duration = keys
            self._in_progress.store[in_progress] -= 1
            self._requests.store[requests] += 1
            self._durations.store[duration].observe(seconds, example)
        if status >= 500 and example is not None:
            text = _STATUS_TEXT.get(status) or str(status)
            sample = (("endpoint", endpoint), ("method", method), ("status", text))
            self._counter_examples["http_requests_total"][sample] = (*example[:2], 1.0, example[3])
        if status == 429:
            self.rate_limited.inc({"endpoint": endpoint})

    def _first_finished(
        self,
        method: str,
        endpoint: str,
        status: int,
        seconds: float,
        example: exposition.RawExemplar | None,
    ) -> None:
        labels = (method, endpoint, _STATUS_TEXT.get(status) or str(status))
        self._in_progress.add((method,), -1)
        self._requests.add(labels)
        self._durations.observe((method, endpoint), seconds, example)
        self._finished_keys[method, endpoint, status] = (
            self._in_progress.key((method,)),
            self._requests.key(labels),
            self._durations.key((method, endpoint)),
        )

    def login_answered(self, result: LoginResult) -> None:
        self.auth_logins.inc({"result": result})

    def logged_out(self, scope: LogoutScope) -> None:
        self.auth_logouts.inc({"scope": scope})

    def record_error(self, exception: BaseException) -> None:
        label = error_type_label(exception)
        self.app_errors.inc({"type": label})
        context = current_context()
        if context is not None:
            example = (context.request_id, context.trace_id, 1.0, time.time())
            self._counter_examples["app_errors_total"][(("type", label),)] = example

    def snapshot(self) -> exposition.Snapshot:
        return exposition.snapshot(self.registry, self._gauge_merge, self._counter_examples)

    def watch_pool(self, engine: AsyncEngine) -> None:
        """The engine whose connection pool `db_pool_connections` reports (handed in by the
        database when it opens)."""
        pool = engine.sync_engine.pool
        self._pool = pool if isinstance(pool, QueuePool) else None
        if self._pool is not None:
            settings = self.settings
            self.db_pool_max.set({}, settings.db_pool_size + settings.db_max_overflow)

    def worker_started(self, reason: WorkerStart) -> None:
        """This process serves from now on: counted, and a live worker until it stops."""
        self.workers.set({}, 1)
        self.worker_starts.inc({"reason": reason})

    async def watch_event_loop(self, interval: float = EVENT_LOOP_PROBE_SECONDS) -> None:
        """Sleep `interval` again and again; how much later than asked the loop woke up is the
        time other work held it (a blocking call, a long render, too many requests)."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + interval
            await asyncio.sleep(interval)
            self.event_loop_lag.observe({}, max(0.0, loop.time() - asked))

    async def refresh_scrape_time_values(self) -> None:
        """Values that are read rather than counted: the process, the pool, and what the other
        parts registered with `add_scrape_reader`."""
        await asyncio.to_thread(self._read_process)
        if self._pool is not None:
            self.db_pool.set({"state": "in_use"}, self._pool.checkedout())
            self.db_pool.set({"state": "idle"}, self._pool.checkedin())
        for reader in self._scrape_readers:
            try:
                async with asyncio.timeout(SCRAPE_READ_SECONDS):
                    await reader()
            except TimeoutError:
                pass  # the reader's last value stays: a hung backend must not hold the scrape

    def _read_process(self) -> None:
        with self._process.oneshot():
            cpu = self._process.cpu_times()
            memory = self._process.memory_info()
            fds = self._process.num_fds()
            started = self._process.create_time()
        total_cpu = cpu.user + cpu.system
        self.process_cpu.add({}, max(0.0, total_cpu - self._last_cpu))
        self._last_cpu = total_cpu
        self.process_memory.set({}, memory.rss)
        self.process_fds.set({}, fds)
        self.process_start.set({}, started)
        self.process_max_fds.set({}, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        for generation, stats in enumerate(gc.get_stats()):
            labels = {"generation": str(generation)}
            for counter, key in (
                (self.gc_collections, "collections"),
                (self.gc_objects_collected, "collected"),
                (self.gc_objects_uncollectable, "uncollectable"),
            ):
                seen = self._gc_seen.get((key, labels["generation"]), 0.0)
                counter.add(labels, max(0.0, stats[key] - seen))
                self._gc_seen[key, labels["generation"]] = stats[key]


def _python_labels() -> dict[str, str]:
    version = sys.version_info
    return {
        "implementation": platform.python_implementation(),
        "major": str(version.major),
        "minor": str(version.minor),
        "patchlevel": str(version.micro),
        "version": platform.python_version(),
    }


def method_label(method: str) -> str:
    return method if method in STANDARD_METHODS else "OTHER"


def error_type_label(exception: BaseException) -> str:
    name = type(exception).__name__
    return name if name in KNOWN_ERROR_TYPES else OTHER


def init_metrics(app: Quart, metrics: Metrics) -> None:
    """Count `app`'s unhandled exceptions; while it serves, note the worker's start and watch
    its event loop."""

    async def _record_exception(sender: Quart, exception: BaseException, **_: Any) -> None:
        metrics.record_error(exception)

    got_request_exception.connect(_record_exception, app, weak=False)

    @app.while_serving
    async def _saturation() -> AsyncGenerator[None, None]:
        told = os.environ.get(WORKER_START_ENV)
        reason: WorkerStart = next((start for start in WORKER_STARTS if start == told), "start")
        metrics.worker_started(reason)
        probe = asyncio.create_task(metrics.watch_event_loop())
        yield
        probe.cancel()
        await asyncio.gather(probe, return_exceptions=True)
        metrics.workers.set({}, 0)


def instrument_engine(engine: AsyncEngine, metrics: Metrics) -> None:
    """Count and time every statement through SQLAlchemy's engine events (any backend)."""
    metrics.watch_pool(engine)
    sync_engine = engine.sync_engine

    def before(
        _conn: Any, _cursor: Any, _stmt: str, _params: Any, context: Any, _many: Any
    ) -> None:
        if context is not None:
            context._scene_packer_started = time.perf_counter()

    def after(
        _conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _m: Any
    ) -> None:
        started = getattr(context, "_scene_packer_started", None)
        labels = {"operation": statement_operation(statement)}
        metrics.db_queries.inc(labels)
        if started is not None:
            metrics.db_duration.observe(labels, time.perf_counter() - started)

    def failed(_context: Any) -> None:
        metrics.db_errors.inc({})

    event.listen(sync_engine, "before_cursor_execute", before)
    event.listen(sync_engine, "after_cursor_execute", after)
    event.listen(sync_engine, "handle_error", failed)


@lru_cache(maxsize=1024)
def statement_operation(statement: str) -> str:
    head = statement.lstrip()[:6].upper()
    for operation in ("SELECT", "INSERT", "UPDATE", "DELETE"):
        if head == operation:
            return operation
    return "OTHER"
