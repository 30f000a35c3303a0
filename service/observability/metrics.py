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
from bisect import bisect_left
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import lru_cache
from itertools import accumulate
from typing import Any, Literal, get_args

import psutil
from aioprometheus.collectors import Counter, Gauge, Histogram, Registry
from quart import Quart
from quart.signals import got_request_exception
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from service.observability import exposition
from service.observability.context import current_context
from service.settings import Settings
from service.unavailable import DEPENDENCIES, FAILURE_REASONS, Dependency, FailureReason
from service.version import VERSION

HTTP_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0,
)  # fmt: skip
DB_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
HEALTH_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
EVENT_LOOP_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
EVENT_LOOP_PROBE_SECONDS = 0.5
# Each web vital's (good, poor) thresholds, as web.dev and the web-vitals library rate them: at
# or under the first is good, over the second poor. Seconds, CLS unitless. The buckets hold them
# exactly, so the dashboard's "good" share is a bucket over the count; the receiver logs a poor
# value; the dashboard draws them (tests/unit/test_monitoring.py checks it).
VITAL_THRESHOLDS: dict[str, tuple[float, float]] = {
    "FCP": (1.8, 3.0), "LCP": (2.5, 4.0), "INP": (0.2, 0.5), "TTFB": (0.8, 1.8),
    "CLS": (0.1, 0.25),
}  # fmt: skip
VITAL_BUCKETS = tuple(
    sorted(
        {0.05, 0.1, 0.3, 1.0, 6.0, 10.0, 20.0, 60.0}
        | {bound for name, pair in VITAL_THRESHOLDS.items() if name != "CLS" for bound in pair}
    )
)
CLS_BUCKETS = tuple(sorted({0.01, 0.05, 0.15, 0.5, 1.0, *VITAL_THRESHOLDS["CLS"]}))
FRONTEND_API_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"
OTHER = "other"
# Exception classes that may name an `app_errors_total` series; anything else counts as "other".
KNOWN_ERROR_TYPES = frozenset(
    {
        "OperationalError", "InterfaceError", "DBAPIError", "IntegrityError", "TimeoutError",
        "CacheError", "ConnectionError", "OSError", "RuntimeError", "ValueError", "TypeError",
        "KeyError", "AttributeError", "AssertionError", "NotImplementedError", "ZeroDivisionError",
    }
)  # fmt: skip
# Why a worker process started, as `scene-packer serve` tells it (the environment variable);
# under plain hypercorn every start is a "start".
WorkerStart = Literal["start", "recycle", "replace"]
WORKER_STARTS: tuple[WorkerStart, ...] = get_args(WorkerStart)
WORKER_START_ENV = "SCENE_PACKER_WORKER_START"
SnapshotWriteError = Literal["disk_full", "other"]
SNAPSHOT_WRITE_ERRORS: tuple[SnapshotWriteError, ...] = get_args(SnapshotWriteError)
LoginResult = Literal["success", "invalid_credentials", "invalid_input", "rate_limited"]
LOGIN_RESULTS: tuple[LoginResult, ...] = get_args(LoginResult)
LogoutScope = Literal["session", "all"]
LOGOUT_SCOPES: tuple[LogoutScope, ...] = get_args(LogoutScope)
_STATUS_TEXT = {status: str(status) for status in range(100, 600)}


class Series:
    """A fast path over one aioprometheus collector for a fixed list of label names.

    The first observation of a label set goes through aioprometheus's public API (which checks
    the labels); its storage key is then remembered, so later observations cost one dict lookup
    instead of re-encoding the labels every time. A histogram's value is then replaced by
    `BucketCounts`. Relies on `MetricDict.store` (aioprometheus 23.x, pinned in pyproject.toml);
    `tests/unit/test_metrics.py` checks the counts it produces.
    """

    __slots__ = ("_collector", "_keys", "_names", "_store")

    def __init__(self, collector: Counter | Gauge | Histogram, *names: str) -> None:
        self._collector = collector
        self._names = names
        self._keys: dict[tuple[str, ...], Any] = {}
        self._store: dict[Any, Any] = collector.values.store

    def add(self, values: tuple[str, ...], amount: float = 1) -> None:
        key = self._keys.get(values)
        if key is None:
            self._collector.add(self._remember(values), amount)
        else:
            self._store[key] += amount

    def observe(
        self, values: tuple[str, ...], amount: float, example: exposition.RawExemplar | None = None
    ) -> None:
        key = self._keys.get(values)
        if key is None:
            self._collector.add(self._remember(values), amount)
            key = self._keys[values]
            self._store[key] = BucketCounts.replacing(self._store[key])
            if example is not None:
                self._store[key].remember(amount, example)
        else:
            self._store[key].observe(amount, example)

    def key(self, values: tuple[str, ...]) -> Any:
        """The storage key of a label set already observed: `store[key]` is its value."""
        return self._keys[values]

    @property
    def store(self) -> dict[Any, Any]:
        return self._store

    def _remember(self, values: tuple[str, ...]) -> dict[str, str]:
        labels = dict(zip(self._names, values, strict=True))
        self._keys[values] = self._collector.values.__keytransform__(labels)  # type: ignore[no-untyped-call]
        return labels


class BucketCounts:
    """One label set's histogram, read like aioprometheus's own (`buckets`, `observations`,
    `sum`), with an O(log n) `observe`.

    aioprometheus's `observe` adds one to every bucket the value falls in: a Python loop over all
    15 buckets on every request, the largest part of the metrics' cost per request. This keeps one
    count per bucket and makes them cumulative only when read (a scrape).
    """

    __slots__ = ("_bounds", "_counts", "exemplars", "observations", "sum")

    def __init__(self, bounds: list[float], counts: list[int], observations: int, total: float):
        self._bounds = bounds  # ascending, +Inf last
        self._counts = counts
        self.observations = observations
        self.sum = total
        # The latest request seen in each bucket; its labels are made only when scraped.
        self.exemplars: list[exposition.RawExemplar | None] = [None] * len(bounds)

    @classmethod
    def replacing(cls, histogram: Any) -> BucketCounts:
        """The same counts as an aioprometheus `histogram.Histogram`."""
        cumulative = list(histogram.buckets.values())
        counts = [now - before for now, before in zip(cumulative, [0, *cumulative], strict=False)]
        return cls(list(histogram.buckets), counts, histogram.observations, histogram.sum)

    def observe(self, value: float, example: exposition.RawExemplar | None = None) -> None:
        # The first bound >= value: Prometheus buckets are "less than or equal".
        index = bisect_left(self._bounds, value)
        self._counts[index] += 1
        self.sum += value
        self.observations += 1
        if example is not None:
            self.exemplars[index] = example

    def remember(self, value: float, example: exposition.RawExemplar) -> None:
        """Keep `example` for the bucket of `value`, already counted."""
        self.exemplars[bisect_left(self._bounds, value)] = example

    @property
    def buckets(self) -> dict[float, int]:
        return dict(zip(self._bounds, accumulate(self._counts), strict=True))


class Metrics:
    """One registry per app (tests build many apps); each metric an attribute."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = r = Registry()
        self._gauge_merge: dict[str, exposition.Merge] = {}
        self.http_requests = Counter(
            "http_requests_total", "HTTP requests answered, by route template.", registry=r
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Time from request start until the response body was fully sent.",
            registry=r,
            buckets=HTTP_DURATION_BUCKETS,
        )
        self.http_in_progress = self._gauge(
            "http_requests_in_progress", "HTTP requests being handled now.", merge="sum"
        )
        self.app_errors = Counter(
            "app_errors_total", "Unhandled exceptions, by exception class.", registry=r
        )
        self.db_queries = Counter("db_queries_total", "Database statements executed.", registry=r)
        self.db_duration = Histogram(
            "db_query_duration_seconds",
            "Database statement execution time.",
            registry=r,
            buckets=DB_DURATION_BUCKETS,
        )
        self.db_errors = Counter(
            "db_query_errors_total", "Database statements that failed.", registry=r
        )
        self.db_pool = self._gauge(
            "db_pool_connections", "Database pool connections by state.", merge="sum"
        )
        self.db_pool_max = self._gauge(
            "db_pool_max_connections",
            "Connections the pool may open: DB_POOL_SIZE + DB_MAX_OVERFLOW, per worker.",
            merge="sum",
        )
        self.cache_requests = Counter(
            "cache_requests_total", "Cache operations; reads are a hit or a miss.", registry=r
        )
        self.cache_errors = Counter(
            "cache_errors_total", "Cache operations that failed.", registry=r
        )
        self.dependency_errors = Counter(
            "dependency_errors_total",
            "Failures to reach a backing service, by dependency and cause.",
            registry=r,
        )
        self.active_users = self._gauge(
            "active_users",
            "Distinct authenticated users seen recently (global; aggregate with max).",
            merge="max",
        )
        self.auth_sessions_active = self._gauge(
            "auth_sessions_active",
            "Live sign-in sessions in the shared store (global; aggregate with max).",
            merge="max",
        )
        self.auth_logins = Counter(
            "auth_logins_total",
            "Login attempts answered 200, 400, 401, 413 or 429, by result.",
            registry=r,
        )
        self.auth_logouts = Counter(
            "auth_logouts_total",
            "Logouts that ended sessions: one per logout, one per logout-all, by scope.",
            registry=r,
        )
        self.rate_limited = Counter(
            "rate_limited_requests_total", "Requests answered 429, by route.", registry=r
        )
        # Present from the first scrape, so rate() and increase() see the first event of every
        # process and a panel shows 0 rather than "No data" (labels from a known set only).
        for result in LOGIN_RESULTS:
            self.auth_logins.add({"result": result}, 0)
        for scope in LOGOUT_SCOPES:
            self.auth_logouts.add({"scope": scope}, 0)
        for error_type in (*sorted(KNOWN_ERROR_TYPES), OTHER):
            self.app_errors.add({"type": error_type}, 0)
        self.db_errors.add({}, 0)
        self.cache_errors.add({}, 0)
        for dependency in DEPENDENCIES:
            for reason in FAILURE_REASONS:
                self.dependency_errors.add({"dependency": dependency, "reason": reason}, 0)
        self.health_status = self._gauge(
            "health_check_status", "1 healthy, 0 unhealthy or warning, per check.", merge="min"
        )
        self.health_duration = Histogram(
            "health_check_duration_seconds",
            "Duration of each health check.",
            registry=r,
            buckets=HEALTH_DURATION_BUCKETS,
        )
        self.disk_free = self._gauge(
            "system_disk_free_ratio",
            "Free fraction of the data filesystem, read by the health check.",
            merge="min",
        )
        self.memory_used = self._gauge(
            "system_memory_used_ratio",
            "Used fraction of the memory the service may use (its cgroup's limit, else the "
            "host's), read by the health check; source says which.",
            merge="max",
        )
        self.frontend_vitals = Histogram(
            "frontend_web_vital_seconds",
            "Web vitals (FCP, LCP, INP, TTFB) reported by browsers, by page template.",
            registry=r,
            buckets=VITAL_BUCKETS,
        )
        self.frontend_cls = Histogram(
            "frontend_cls",
            "Cumulative Layout Shift (unitless) reported by browsers, by page template.",
            registry=r,
            buckets=CLS_BUCKETS,
        )
        self.frontend_js_errors = Counter(
            "frontend_js_errors_total",
            "JavaScript errors in browsers, by page and kind.",
            registry=r,
        )
        self.frontend_api_duration = Histogram(
            "frontend_api_request_duration_seconds",
            "API request time as browsers measured it, by route template.",
            registry=r,
            buckets=FRONTEND_API_BUCKETS,
        )
        self.frontend_api_errors = Counter(
            "frontend_api_errors_total",
            "API requests that failed in browsers (network error or 5xx), by route template.",
            registry=r,
        )
        self.frontend_rejected = Counter(
            "frontend_beacons_rejected_total",
            "Beacons or beacon entries refused by POST /api/rum, by reason.",
            registry=r,
        )
        self.frontend_log_dropped = Counter(
            "frontend_log_lines_dropped_total",
            "Log lines from beacons (frontend_error, web_vital_poor) over the log budget (per "
            "client address, per worker), not written, by event.",
            registry=r,
        )
        self.process_cpu = Counter(
            "process_cpu_seconds_total", "User and system CPU time of the process.", registry=r
        )
        self.process_memory = self._gauge(
            "process_resident_memory_bytes", "Resident memory of the process.", merge="sum"
        )
        self.process_fds = self._gauge("process_open_fds", "Open file descriptors.", merge="sum")
        self.process_start = self._gauge(
            "process_start_time_seconds", "Process start, seconds since the epoch.", merge="min"
        )
        self.process_max_fds = self._gauge(
            "process_max_fds", "Open file descriptors allowed (the soft limit).", merge="sum"
        )
        self.event_loop_lag = Histogram(
            "event_loop_lag_seconds",
            "How late the event loop ran a timer (sampled twice a second): its saturation.",
            registry=r,
            buckets=EVENT_LOOP_LAG_BUCKETS,
        )
        self.workers = self._gauge(
            "app_workers", "Worker processes serving now (each counts itself).", merge="sum"
        )
        self.worker_starts = Counter(
            "app_worker_starts_total",
            "Worker processes started since the server started, by reason: start, recycle "
            "(a successor for max_requests or SIGHUP), replace (after a worker died).",
            registry=r,
        )
        for start in WORKER_STARTS:
            self.worker_starts.add({"reason": start}, 0)
        self.snapshot_write_errors = Counter(
            "metrics_snapshot_write_errors_total",
            "Failed writes of a worker's metrics snapshot (METRICS_DIR), by reason: disk_full "
            "(or over quota), other. Scrapes still answer, this worker's part from memory.",
            registry=r,
        )
        for write_error in SNAPSHOT_WRITE_ERRORS:
            self.snapshot_write_errors.add({"reason": write_error}, 0)
        self.python_info = self._gauge("python_info", "Python platform information.", merge="max")
        self.python_info.set(_python_labels(), 1)
        self.gc_objects_collected = Counter(
            "python_gc_objects_collected_total",
            "Objects collected during gc, by generation.",
            registry=r,
        )
        self.gc_objects_uncollectable = Counter(
            "python_gc_objects_uncollectable_total",
            "Uncollectable objects found during GC, by generation.",
            registry=r,
        )
        self.gc_collections = Counter(
            "python_gc_collections_total",
            "Number of times this generation was collected.",
            registry=r,
        )
        self._gc_seen: dict[tuple[str, str], float] = {}
        self.app_info = self._gauge(
            "app_info", "Version and environment of the service.", merge="max"
        )
        self.app_info.set({"version": VERSION, "environment": settings.environment.value}, 1)
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

    def _gauge(self, name: str, doc: str, *, merge: exposition.Merge) -> Gauge:
        """A gauge and how it combines across worker processes: summed (each worker holds a
        part), or the max or min (each worker sees the same global value, or any worker's low
        value matters)."""
        self._gauge_merge[name] = merge
        return Gauge(name, doc, registry=self.registry)

    def dependency_failed(self, dependency: Dependency, reason: FailureReason) -> None:
        self.dependency_errors.inc({"dependency": dependency, "reason": reason})

    def expect_rate_limits(self, endpoints: list[str]) -> None:
        """The routes that carry a rate limit: their 429 counts are exported from 0."""
        for endpoint in endpoints:
            self.rate_limited.add({"endpoint": endpoint}, 0)

    def add_scrape_reader(self, reader: Callable[[], Awaitable[None]]) -> None:
        """A part's own values to read when a scrape comes (it sets its gauges itself)."""
        self._scrape_readers.append(reader)

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
            self.db_pool_max.set({}, self._pool.size() + self._pool._max_overflow)

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
            await reader()

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
