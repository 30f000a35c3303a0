"""`GET /metrics`: the Prometheus exposition, optionally behind a bearer token."""

from __future__ import annotations

import asyncio
import gzip
import hmac
import math
import time

import structlog
from quart import Blueprint, Response, request
from quart_schema import hide

from service.http.errors import APIError
from service.observability import exposition
from service.observability.context import METRICS_PATH
from service.observability.metrics import Metrics
from service.observability.multiprocess import SharedMetrics
from service.settings import Settings

logger = structlog.get_logger(__name__)
REFUSAL_LOG_SECONDS = 60


def create_blueprint(settings: Settings, collected: Metrics, shared: SharedMetrics) -> Blueprint:
    blueprint = Blueprint("metrics", __name__)
    refusals = _RefusalLog()

    @blueprint.get(METRICS_PATH)
    @hide  # Prometheus' format, for Prometheus: described in docs/metrics.md, not an API answer
    async def metrics() -> Response:
        if settings.metrics_token is not None:
            _require_token(settings.metrics_token.get_secret_value(), refusals)
        await collected.refresh_scrape_time_values()
        # Several hypercorn workers: report all of them.
        families = await shared.collect(collected.snapshot())
        # Content negotiation: OpenMetrics (with exemplars) for whoever asks, as Prometheus
        # does; the classic text format, unchanged, for everyone else.
        openmetrics = "application/openmetrics-text" in request.headers.get("Accept", "")
        gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
        # Formatting is CPU work proportional to the series count: keep it off the event loop.
        body = await asyncio.to_thread(_encode, families, openmetrics, gzipped)
        headers = {"Cache-Control": "no-store", "Vary": "Accept, Accept-Encoding"}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        content_type = (
            exposition.OPENMETRICS_CONTENT_TYPE if openmetrics else exposition.CONTENT_TYPE
        )
        return Response(body, content_type=content_type, headers=headers)

    return blueprint


def _encode(families: exposition.Snapshot, openmetrics: bool, gzipped: bool) -> bytes:
    body = (exposition.render_openmetrics if openmetrics else exposition.render)(families)
    # Level 1: most of the size for a fraction of the CPU of the default 9 (docs/benchmarks.md).
    return gzip.compress(body, compresslevel=1) if gzipped else body


class _RefusalLog:
    """Refused scrapes are not in the request log (probes are left out of it), yet a Prometheus
    with a stale token is exactly what an on-call must see: one `metrics_scrape_refused` line at
    most every REFUSAL_LOG_SECONDS per worker, with how many were refused since the last."""

    def __init__(self) -> None:
        self._logged_at = -math.inf
        self._refused = 0

    def refused(self, reason: str) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._logged_at >= REFUSAL_LOG_SECONDS:
            logger.warning("metrics_scrape_refused", reason=reason, refused=self._refused)
            self._logged_at, self._refused = now, 0


def _require_token(expected: str, refusals: _RefusalLog) -> None:
    supplied = request.headers.get("Authorization", "")
    scheme, _, token = supplied.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        refusals.refused("missing_token" if not supplied else "wrong_token")
        raise APIError(
            401,
            "unauthorized",
            "A valid bearer token is required for /metrics.",
            {"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
