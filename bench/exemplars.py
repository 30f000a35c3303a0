"""What exemplars, trace context and OpenMetrics cost.

1. Per request, in-process (as `python -m bench metrics`): the metrics recording with and without
   an exemplar, and the whole middleware for a request without and with a `traceparent`
   (parsed, a span id made, carried on the log line and answered in a header). Interleaved runs.
2. Per scrape, at 10,000 counter series plus 1,000 histogram series with an exemplar in a bucket
   each: the classic text render against OpenMetrics (with the exemplars), each raw and gzipped
   (level 1, as `/metrics` does, and the default level 6 for comparison): time and size.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from types import SimpleNamespace
from typing import Any

from bench.machine import spread, summary, write
from bench.metrics_cost import (
    _SCOPE,
    REQUESTS,
    RUNS,
    _configure,
    _per_request_us,
    _time_ms,
    _trivial_app,
    populate,
)
from service.http.request_record import RequestObserver
from service.observability import exposition
from service.observability.metrics import Metrics
from service.settings import load_settings
from tests.support.server import embedded_backends

_PLAIN = _SCOPE
_TRACED = {
    **_PLAIN,
    "headers": [
        *_PLAIN["headers"],
        (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ],
}


def _recording_us(metrics: Metrics, request_id: str | None) -> float:
    started = time.perf_counter()
    for _ in range(REQUESTS):
        metrics.request_started("GET")
        metrics.request_finished("GET", "/api/auth/me", 200, 0.0012, request_id)
    return (time.perf_counter() - started) / REQUESTS * 1e6


def run() -> None:
    results: dict[str, Any] = {}
    with TemporaryDirectory() as tmp, open(os.devnull, "w") as devnull:
        settings = load_settings(
            environment="production",
            secret_key="x" * 40,
            data_dir=Path(tmp),
            **{k.lower(): v for k, v in embedded_backends(Path(tmp)).items()},
        )
        _configure(settings, devnull)  # before the observer, which binds its logger when made
        metrics = Metrics(settings)
        observed = RequestObserver(
            _trivial_app, settings, metrics, SimpleNamespace(abandoned=set())
        )
        bare, plain, traced, without, with_ = [], [], [], [], []
        for _ in range(RUNS):
            bare.append(asyncio.run(_per_request_us(_trivial_app, _PLAIN)))
            plain.append(asyncio.run(_per_request_us(observed, _PLAIN)))
            traced.append(asyncio.run(_per_request_us(observed, _TRACED)))
            without.append(_recording_us(metrics, None))
            with_.append(_recording_us(metrics, "bench-request-0001"))
        results["recording_without_exemplar_us"] = summary(without)
        results["recording_with_exemplar_us"] = summary(with_)
        results["middleware_us"] = summary([p - b for p, b in zip(plain, bare, strict=True)])
        results["middleware_traced_us"] = summary(
            [t - b for t, b in zip(traced, bare, strict=True)]
        )

        big, _ = populate(10_000, Path(tmp))
        for i in range(1_000):
            big.request_finished("GET", f"/api/items/{i}", 200, 0.01 + i / 100_000, f"req-{i:08d}")
        families = big.snapshot()
        classic, openmetrics = exposition.render(families), exposition.render_openmetrics(families)
        for name, body, render in (
            ("classic", classic, lambda: exposition.render(families)),
            ("openmetrics", openmetrics, lambda: exposition.render_openmetrics(families)),
        ):
            results[name] = {
                "render_ms": summary(_time_ms(render)),
                "gzip1_ms": summary(_time_ms(lambda b=body: gzip.compress(b, compresslevel=1))),
                "gzip6_ms": summary(_time_ms(lambda b=body: gzip.compress(b, compresslevel=6))),
                "bytes": len(body),
                "gzip1_bytes": len(gzip.compress(body, compresslevel=1)),
                "gzip6_bytes": len(gzip.compress(body, compresslevel=6)),
            }
    write("exemplars", results, _table(results))


def _table(results: dict[str, Any]) -> str:
    text = "| per request (µs, in-process) | median (min–max) |\n| --- | --- |\n"
    for key, label in (
        ("recording_without_exemplar_us", "metrics recording, no exemplar"),
        ("recording_with_exemplar_us", "metrics recording with its exemplar"),
        ("middleware_us", "whole middleware, no traceparent"),
        ("middleware_traced_us", "whole middleware with a traceparent"),
    ):
        text += f"| {label} | {spread(results[key], 2)} |\n"
    text += (
        "\n| 11,000 series (1,000 with exemplars) | render ms | bytes | gzip 1 ms | gzip 1 bytes "
    )
    text += "| gzip 6 ms | gzip 6 bytes |\n| --- | --- | --- | --- | --- | --- | --- |\n"
    for name in ("classic", "openmetrics"):
        row = results[name]
        text += (
            f"| {name} | {spread(row['render_ms'], 1)} | {row['bytes']:,} "
            f"| {spread(row['gzip1_ms'], 1)} | {row['gzip1_bytes']:,} "
            f"| {spread(row['gzip6_ms'], 1)} | {row['gzip6_bytes']:,} |\n"
        )
    return text
