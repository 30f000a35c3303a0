"""Every metric family the service exports, declared once as data: name, kind, help, label
names, buckets, how workers combine it, and the series that exist from start-up.

`Metrics` (metrics.py) makes one collector per row, docs/metrics.md's table is checked against
the rows, and a label set whose names are not the declared ones fails at once (collectors.py),
so a typo cannot make a new series. Names and labels are a contract: dashboards and alerts in
`monitoring/` are built on them. Label values come only from bounded sets (route templates, a
fixed method list, known error classes, fixed operation names), never from raw client input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from service.unavailable import DEPENDENCIES, FAILURE_REASONS

Kind = Literal["counter", "gauge", "histogram"]
Merge = Literal["sum", "max", "min"]
Labels = dict[str, str]

HTTP_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0,
)  # fmt: skip
DB_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
HEALTH_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
EVENT_LOOP_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
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
SnapshotWriteError = Literal["disk_full", "other"]
SNAPSHOT_WRITE_ERRORS: tuple[SnapshotWriteError, ...] = get_args(SnapshotWriteError)
LoginResult = Literal["success", "invalid_credentials", "invalid_input", "rate_limited"]
LOGIN_RESULTS: tuple[LoginResult, ...] = get_args(LoginResult)
LogoutScope = Literal["session", "all"]
LOGOUT_SCOPES: tuple[LogoutScope, ...] = get_args(LogoutScope)
# Why POST /api/rum refuses a beacon or an entry of one (observability/rum.py gives each a message).
BeaconRejection = Literal[
    "body_too_large", "malformed", "too_many_entries", "unknown_metric", "invalid_value",
    "foreign_origin", "rate_limited",
]  # fmt: skip
BEACON_REJECTIONS: tuple[BeaconRejection, ...] = get_args(BeaconRejection)
# The lines beacons can cause, each under a log budget.
LoggedBeaconEvent = Literal["frontend_error", "web_vital_poor"]
LOGGED_BEACON_EVENTS: tuple[LoggedBeaconEvent, ...] = get_args(LoggedBeaconEvent)


@dataclass(frozen=True)
class MetricFamily:
    attribute: str  # the `Metrics` attribute that holds its collector
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # histograms only
    # Gauges only: how workers combine it, summed (each worker holds a part), or the max or min
    # (each worker sees the same global value, or any worker's low value matters).
    merge: Merge | None = None
    # Present from the first scrape, so rate() and increase() see the first event of every
    # process and a panel shows 0 rather than "No data".
    zeros: tuple[Labels, ...] = ()


def _each(label: str, values: tuple[str, ...] | list[str]) -> tuple[Labels, ...]:
    return tuple({label: value} for value in values)


def _every(**values: tuple[str, ...]) -> tuple[Labels, ...]:
    """Every combination of the given values, one label set each."""
    sets: list[Labels] = [{}]
    for name, options in values.items():
        sets = [{**labels, name: option} for labels in sets for option in options]
    return tuple(sets)


FAMILIES: tuple[MetricFamily, ...] = (
    # ---- HTTP, recorded by the request record (service/http/request_record.py)
    MetricFamily("http_requests", "http_requests_total", "counter",
           "HTTP requests answered, by route template.", ("method", "endpoint", "status")),
    MetricFamily("http_duration", "http_request_duration_seconds", "histogram",
           "The service's time on a request: from its start until the response body was fully "
           "sent, less the time spent waiting for the client to send its body.",
           ("method", "endpoint"), buckets=HTTP_DURATION_BUCKETS),
    MetricFamily("http_body_wait", "http_request_body_wait_seconds", "histogram",
           "Time spent waiting for the client to send a request body (requests with one).",
           ("endpoint",), buckets=HTTP_DURATION_BUCKETS),
    MetricFamily("http_in_progress", "http_requests_in_progress", "gauge",
           "HTTP requests being handled now.", ("method",), merge="sum"),
    MetricFamily("app_errors", "app_errors_total", "counter",
           "Unhandled exceptions, by exception class.", ("type",),
           zeros=_each("type", [*sorted(KNOWN_ERROR_TYPES), OTHER])),
    MetricFamily("rate_limited", "rate_limited_requests_total", "counter",
           "Requests answered 429, by route.", ("endpoint",)),
    # ---- backends
    MetricFamily("db_queries", "db_queries_total", "counter",
           "Database statements executed.", ("operation",)),
    MetricFamily("db_duration", "db_query_duration_seconds", "histogram",
           "Database statement execution time.", ("operation",), buckets=DB_DURATION_BUCKETS),
    MetricFamily("db_errors", "db_query_errors_total", "counter",
           "Database statements that failed.", zeros=({},)),
    MetricFamily("db_pool", "db_pool_connections", "gauge",
           "Database pool connections by state.", ("state",), merge="sum"),
    MetricFamily("db_pool_max", "db_pool_max_connections", "gauge",
           "Connections the pool may open: DB_POOL_SIZE + DB_MAX_OVERFLOW, per worker.",
           merge="sum"),
    MetricFamily("cache_requests", "cache_requests_total", "counter",
           "Cache operations; reads are a hit or a miss.", ("operation", "result")),
    MetricFamily("cache_errors", "cache_errors_total", "counter",
           "Cache operations that failed.", zeros=({},)),
    MetricFamily("dependency_errors", "dependency_errors_total", "counter",
           "Failures to reach a backing service, by dependency and cause.",
           ("dependency", "reason"),
           zeros=_every(dependency=DEPENDENCIES, reason=FAILURE_REASONS)),
    # ---- sign-in
    MetricFamily("active_users", "active_users", "gauge",
           "Distinct authenticated users seen recently (global; aggregate with max).",
           merge="max"),
    MetricFamily("auth_sessions_active", "auth_sessions_active", "gauge",
           "Live sign-in sessions in the shared store (global; aggregate with max).",
           merge="max"),
    MetricFamily("auth_logins", "auth_logins_total", "counter",
           "Login attempts answered 200, 400, 401, 413 or 429, by result.", ("result",),
           zeros=_each("result", LOGIN_RESULTS)),
    MetricFamily("auth_logouts", "auth_logouts_total", "counter",
           "Logouts that ended sessions: one per logout, one per logout-all, by scope.",
           ("scope",), zeros=_each("scope", LOGOUT_SCOPES)),
    # ---- health
    MetricFamily("health_status", "health_check_status", "gauge",
           "1 healthy, 0 unhealthy or warning, per check.", ("check",), merge="min"),
    MetricFamily("health_duration", "health_check_duration_seconds", "histogram",
           "Duration of each health check.", ("check",), buckets=HEALTH_DURATION_BUCKETS),
    MetricFamily("disk_free", "system_disk_free_ratio", "gauge",
           "Free fraction of the data filesystem, read by the health check.", merge="min"),
    MetricFamily("memory_used", "system_memory_used_ratio", "gauge",
           "Used fraction of the memory the service may use (its cgroup's limit, else the "
           "host's), read by the health check; source says which.", ("source",), merge="max"),
    # ---- browsers (service/observability/rum.py)
    MetricFamily("frontend_vitals", "frontend_web_vital_seconds", "histogram",
           "Web vitals (FCP, LCP, INP, TTFB) reported by browsers, by page template.",
           ("metric", "page"), buckets=VITAL_BUCKETS),
    MetricFamily("frontend_cls", "frontend_cls", "histogram",
           "Cumulative Layout Shift (unitless) reported by browsers, by page template.",
           ("page",), buckets=CLS_BUCKETS),
    MetricFamily("frontend_js_errors", "frontend_js_errors_total", "counter",
           "JavaScript errors in browsers, by page and kind.", ("page", "kind")),
    MetricFamily("frontend_api_duration", "frontend_api_request_duration_seconds", "histogram",
           "API request time as browsers measured it, by route template.",
           ("endpoint", "method"), buckets=FRONTEND_API_BUCKETS),
    MetricFamily("frontend_api_errors", "frontend_api_errors_total", "counter",
           "API requests that failed in browsers (network error or 5xx), by route template.",
           ("endpoint",)),
    MetricFamily("frontend_rejected", "frontend_beacons_rejected_total", "counter",
           "Beacons or beacon entries refused by POST /api/rum, by reason.", ("reason",),
           zeros=_each("reason", BEACON_REJECTIONS)),
    MetricFamily("frontend_log_dropped", "frontend_log_lines_dropped_total", "counter",
           "Log lines from beacons (frontend_error, web_vital_poor) over the log budget (per "
           "client address, per worker), not written, by event.", ("event",),
           zeros=_each("event", LOGGED_BEACON_EVENTS)),
    # ---- the process and its workers
    MetricFamily("process_cpu", "process_cpu_seconds_total", "counter",
           "User and system CPU time of the process."),
    MetricFamily("process_memory", "process_resident_memory_bytes", "gauge",
           "Resident memory of the process.", merge="sum"),
    MetricFamily("process_fds", "process_open_fds", "gauge", "Open file descriptors.", merge="sum"),
    MetricFamily("process_start", "process_start_time_seconds", "gauge",
           "Process start, seconds since the epoch.", merge="min"),
    MetricFamily("process_max_fds", "process_max_fds", "gauge",
           "Open file descriptors allowed (the soft limit).", merge="sum"),
    MetricFamily("event_loop_lag", "event_loop_lag_seconds", "histogram",
           "How late the event loop ran a timer (sampled twice a second): its saturation.",
           buckets=EVENT_LOOP_LAG_BUCKETS),
    MetricFamily("workers", "app_workers", "gauge",
           "Worker processes serving now (each counts itself).", merge="sum"),
    MetricFamily("worker_starts", "app_worker_starts_total", "counter",
           "Worker processes started since the server started, by reason: start, recycle "
           "(a successor for max_requests or SIGHUP), replace (after a worker died).",
           ("reason",), zeros=_each("reason", WORKER_STARTS)),
    MetricFamily("snapshot_write_errors", "metrics_snapshot_write_errors_total", "counter",
           "Failed writes of a worker's metrics snapshot (METRICS_DIR), by reason: disk_full "
           "(or over quota), other. Scrapes still answer, this worker's part from memory.",
           ("reason",), zeros=_each("reason", SNAPSHOT_WRITE_ERRORS)),
    MetricFamily("python_info", "python_info", "gauge", "Python platform information.",
           ("implementation", "major", "minor", "patchlevel", "version"), merge="max"),
    MetricFamily("gc_objects_collected", "python_gc_objects_collected_total", "counter",
           "Objects collected during gc, by generation.", ("generation",)),
    MetricFamily("gc_objects_uncollectable", "python_gc_objects_uncollectable_total", "counter",
           "Uncollectable objects found during GC, by generation.", ("generation",)),
    MetricFamily("gc_collections", "python_gc_collections_total", "counter",
           "Number of times this generation was collected.", ("generation",)),
    MetricFamily("app_info", "app_info", "gauge", "Version and environment of the service.",
           ("version", "environment"), merge="max"),
)  # fmt: skip
