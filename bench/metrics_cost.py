"""Metrics: the middleware's per-request cost, and `/metrics` render time against prometheus_client.

In-process and single-threaded, so the figures are CPU cost, free of network and server noise.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from types import SimpleNamespace
from typing import Any

import prometheus_client

from bench.machine import summary, write
from service.http.request_record import RequestObserver
from service.observability import exposition
from service.observability.context import bind_route
from service.observability.logging import configure_logging
from service.observability.metrics import Metrics
from service.settings import Settings, load_settings
from tests.support.server import embedded_backends

REQUESTS = 20_000
RUNS = 7
SERIES = (1_000, 10_000)

_SCOPE = {
    "type": "http",
    "method": "GET",
    "path": "/api/auth/me",
    "headers": [(b"host", b"localhost"), (b"x-request-id", b"bench-request-0001")],
    "client": ("127.0.0.1", 50000),
}
_START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
_BODY = {"type": "http.response.body", "body": b"ok", "more_body": False}


async def _trivial_app(scope: Any, receive: Any, send: Any) -> None:
    bind_route("/api/auth/me")
    await send(_START)
    await send(_BODY)


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    return None


async def _per_request_us(app: Any, scope: dict[str, Any] = _SCOPE) -> float:
    started = time.perf_counter()
    for _ in range(REQUESTS):
        await app(dict(scope), _receive, _send)
    return (time.perf_counter() - started) / REQUESTS * 1e6


def _metrics_only_us(metrics: Metrics) -> float:
    started = time.perf_counter()
    for _ in range(REQUESTS):
        metrics.request_started("GET")
        metrics.request_finished("GET", "/api/auth/me", 200, 0.0012)
    return (time.perf_counter() - started) / REQUESTS * 1e6


def populate(count: int, tmp: Path) -> tuple[Metrics, prometheus_client.CollectorRegistry]:
    metrics = Metrics(load_settings(data_dir=tmp))
    registry = prometheus_client.CollectorRegistry()
    reference = prometheus_client.Counter(
        "http_requests", "x", ["method", "endpoint", "status"], registry=registry
    )
    for i in range(count):
        labels = {"method": "GET", "endpoint": f"/api/items/{i}", "status": "200"}
        metrics.http_requests.inc(labels)
        reference.labels(**labels).inc()
    return metrics, registry


def _time_ms(step: Any, repeat: int = 5) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def _configure(settings: Settings, stream: Any) -> None:
    # Each RequestObserver binds its logger when it is made, after this configuration.
    configure_logging(settings, stream)


def run() -> None:
    results: dict[str, Any] = {}
    with TemporaryDirectory() as tmp, open(os.devnull, "w") as devnull:
        settings = load_settings(
            environment="production",
            secret_key="x" * 40,
            data_dir=Path(tmp),
            **{k.lower(): v for k, v in embedded_backends(Path(tmp)).items()},
        )
        quiet = settings.model_copy(update={"log_level": "WARNING"})
        metrics = Metrics(settings)
        observed = RequestObserver(
            _trivial_app, settings, metrics, SimpleNamespace(abandoned=set())
        )
        bare, full, unlogged = [], [], []
        for _ in range(RUNS):  # interleaved A/B/C
            _configure(settings, devnull)
            bare.append(asyncio.run(_per_request_us(_trivial_app)))
            full.append(asyncio.run(_per_request_us(observed)))
            _configure(quiet, devnull)  # request_finished (info) is filtered out
            unlogged.append(asyncio.run(_per_request_us(observed)))
        results["bare_app_us"] = summary(bare)
        results["middleware_cost_us"] = summary([f - b for f, b in zip(full, bare, strict=True)])
        results["middleware_without_log_line_us"] = summary(
            [u - b for u, b in zip(unlogged, bare, strict=True)]
        )
        results["metrics_recording_us"] = summary([_metrics_only_us(metrics) for _ in range(RUNS)])
        for count in SERIES:
            ours, reference = populate(count, Path(tmp))
            families = ours.snapshot()
            results[f"render_{count}"] = {
                "snapshot_on_loop_ms": summary(_time_ms(ours.snapshot)),
                "render_text_ms": summary(_time_ms(lambda f=families: exposition.render(f))),
                "prometheus_client_ms": summary(
                    _time_ms(lambda r=reference: prometheus_client.generate_latest(r))
                ),
            }
    table = "| per request | median µs | min–max |\n| --- | --- | --- |\n"
    for label, key in (
        ("whole middleware (context, metrics, log line)", "middleware_cost_us"),
        ("middleware without the log line (context, metrics)", "middleware_without_log_line_us"),
        ("metrics recording alone", "metrics_recording_us"),
    ):
        row = results[key]
        table += f"| {label} | {row['median']:.2f} | {row['min']:.2f}–{row['max']:.2f} |\n"
    table += "\n| series | snapshot (on the loop) ms | render (in a thread) ms "
    table += "| prometheus_client ms |\n"
    table += "| --- | --- | --- | --- |\n"
    for count in SERIES:
        row = results[f"render_{count}"]
        table += (
            f"| {count:,} | {row['snapshot_on_loop_ms']['median']:.2f} "
            f"| {row['render_text_ms']['median']:.2f} "
            f"| {row['prometheus_client_ms']['median']:.2f} |\n"
        )
    write("metrics", results, table)
