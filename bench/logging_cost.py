"""Per-request cost of logging: bind the request context and write one JSON line.

Production configuration, output to /dev/null, in-process: this is the CPU the logging adds to
every request, without any network or server noise.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import structlog

from bench.machine import summary, write
from service.http.request_record import REQUEST_LOGGER
from service.observability.context import bind_route, bind_user, start_request
from service.observability.logging import configure_logging
from service.settings import load_settings
from tests.support.server import embedded_backends

ITERATIONS = 20_000
RUNS = 7


def run() -> None:
    with TemporaryDirectory() as tmp, open(os.devnull, "w") as devnull:
        settings = load_settings(
            environment="production",
            secret_key="x" * 40,
            data_dir=Path(tmp),
            **{k.lower(): v for k, v in embedded_backends(Path(tmp)).items()},
        )
        configure_logging(settings, devnull)
        logger = structlog.get_logger(REQUEST_LOGGER)
        bind_only = [_measure(lambda: _bind(), ITERATIONS) for _ in range(RUNS)]
        full = [_measure(lambda: _request(logger), ITERATIONS) for _ in range(RUNS)]
    results = {"bind_context_us": summary(bind_only), "bind_and_log_line_us": summary(full)}
    table = "| part | median µs/request | min–max |\n| --- | --- | --- |\n"
    for label, key in (
        ("context binding", "bind_context_us"),
        ("binding + JSON line", "bind_and_log_line_us"),
    ):
        row = results[key]
        table += f"| {label} | {row['median']:.2f} | {row['min']:.2f}–{row['max']:.2f} |\n"
    write("logging", results, table)
    sys.stdout.flush()


def _bind() -> None:
    start_request("0123456789abcdef0123456789abcdef", "GET", "/api/auth/me", "127.0.0.1")
    bind_route("/api/auth/me")
    bind_user(42)


def _request(logger: structlog.typing.FilteringBoundLogger) -> None:
    context = start_request("0123456789abcdef0123456789abcdef", "GET", "/api/auth/me", "127.0.0.1")
    bind_route("/api/auth/me")
    bind_user(42)
    logger.info(
        "request_finished",
        status=200,
        duration_ms=1.234,
        response_bytes=117,
        route=context.route,
        user_id=context.user_id,
    )


def _measure(step: object, iterations: int) -> float:
    assert callable(step)
    started = time.perf_counter()
    for _ in range(iterations):
        step()
    return (time.perf_counter() - started) / iterations * 1e6
