"""Instructions per request, observability on and off, counted by valgrind's callgrind: the
figures do not move with what else the shared machine is doing (requests per second and even CPU
time do, by ±10-30 % between identical runs).

In-process: each variant serves `GET /` through the real ASGI app (`create_app`, production
settings, logs to /dev/null, no network) N times in a child process under callgrind. Variants:
`off` (REQUEST_OBSERVABILITY=false), `on`, and `on, no log line` (LOG_LEVEL=WARNING, so the 2xx
`request_finished` line is filtered out before any processor runs).

End to end: hypercorn itself (`workers = 0`: one process, the repository's hypercorn.toml
otherwise) under callgrind, on the embedded default, answering N sequential keep-alive `GET /`
from a client outside valgrind; on and off. This is what a CPU-bound worker spends per request,
the HTTP server included, so its on/off ratio is the requests-per-second ratio without the noise.

Each count is taken twice, with FEW and MANY requests; the difference divided by the extra
requests is the cost per request, start-up and shutdown excluded.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.machine import write
from bench.serving import ROOT, wait_ready
from tests.support.server import embedded_backends, to_toml

FEW, MANY = 200, 1_200
# Through hypercorn the count still moves by a few thousand instructions per request between
# identical runs (how the event loop's turns fall); more requests shrink that share.
SERVER_FEW, SERVER_MANY = 200, 2_200
SERVER_ROUNDS = 3
WARM_UP = 200
# `ceiling`: the bare Quart app of bench/ceiling_app.py answering the same `GET /` (the
# performance issue's framework tax is `off` against it).
CEILING_APP = "bench.ceiling_app:app"
VARIANTS = {
    "ceiling": {"BENCH_APP": CEILING_APP},
    "off": {"REQUEST_OBSERVABILITY": "false"},
    "on": {},
    "on, no log line": {"LOG_LEVEL": "WARNING"},
}
SERVER_VARIANTS = {
    "ceiling": {"BENCH_APP": CEILING_APP},
    "off": {"REQUEST_OBSERVABILITY": "false"},
    "on": {},
}
_ENV = {
    "ENVIRONMENT": "production",
    "SECRET_KEY": "bench-secret-key-bench-secret-key-0123456789",
    "LOG_LEVEL": "INFO",
    # Hash randomisation moves dict layouts and garbage collections: ±7,000 per request between
    # identical runs; one seed makes the count repeatable to a few instructions.
    "PYTHONHASHSEED": "0",
}


def run() -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing: apt-get install valgrind")
    jobs = [(name, count) for name in VARIANTS for count in (FEW, MANY)]
    server_jobs = [
        (name, count, round_)
        for round_ in range(SERVER_ROUNDS)
        for name in SERVER_VARIANTS
        for count in (SERVER_FEW, SERVER_MANY)
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = dict(zip(jobs, pool.map(lambda job: _count(*job), jobs), strict=True))
        served_counts = pool.map(lambda job: _count_server(job[0], job[1]), server_jobs)
        served = dict(zip(server_jobs, served_counts, strict=True))
    # Each round: on and off, few and many requests; the median round is reported.
    rounds = [
        {
            name: (served[name, SERVER_MANY, round_] - served[name, SERVER_FEW, round_])
            / (SERVER_MANY - SERVER_FEW)
            for name in SERVER_VARIANTS
        }
        for round_ in range(SERVER_ROUNDS)
    ]
    round_percents = [(r["on"] / r["off"] - 1) * 100 for r in rounds]
    end_to_end = rounds[round_percents.index(statistics.median_high(round_percents))]
    per_request = {
        name: (counts[name, MANY] - counts[name, FEW]) / (MANY - FEW) for name in VARIANTS
    }
    off = per_request["off"]
    results: dict[str, Any] = {
        "instructions_per_request": per_request,
        "observability_percent": (per_request["on"] / off - 1) * 100,
        "log_line_instructions": per_request["on"] - per_request["on, no log line"],
        "rest_instructions": per_request["on, no log line"] - off,
        "end_to_end_instructions_per_request": end_to_end,
        "end_to_end_observability_percent": (end_to_end["on"] / end_to_end["off"] - 1) * 100,
        "end_to_end_rounds": rounds,
        "end_to_end_round_percents": round_percents,
        # The framework tax: the service without observability against bare Quart.
        "framework_tax_percent": (off / per_request["ceiling"] - 1) * 100,
        "end_to_end_framework_tax_percent": (end_to_end["off"] / end_to_end["ceiling"] - 1) * 100,
    }
    lines = [
        f"`GET /` in-process, {MANY} vs {FEW} requests under callgrind:",
        "",
        *_table(per_request, decimals=1),
        "",
        f"Observability adds {per_request['on'] - off:,.0f} instructions per request: the "
        f"`request_finished` line {results['log_line_instructions']:,.0f}, the rest (middleware, "
        f"context, route binding, metrics) {results['rest_instructions']:,.0f}.",
        "",
        f"End to end through hypercorn (one process), {SERVER_MANY} vs {SERVER_FEW} keep-alive "
        f"requests, the median of {SERVER_ROUNDS} rounds:",
        "",
        *_table(end_to_end, decimals=2),
        "",
        "Observability on vs off in each round: "
        + ", ".join(f"{percent:+.2f} %" for percent in round_percents)
        + ".",
        "",
        f"Framework tax (off against the bare-Quart ceiling): "
        f"{results['framework_tax_percent']:+.1f} % in-process, "
        f"{results['end_to_end_framework_tax_percent']:+.1f} % end to end.",
    ]
    write("instructions", results, "\n".join(lines) + "\n")


def _table(per_request: dict[str, float], decimals: int) -> list[str]:
    """Markdown rows: each variant's instructions per request and its difference from `off`."""
    off = per_request["off"]
    return [
        "| variant | instructions per request | vs off |",
        "| --- | --- | --- |",
        *(
            f"| {name} | {value:,.0f} | {(value / off - 1) * 100:+.{decimals}f} % |"
            for name, value in per_request.items()
        ),
    ]


def _count(variant: str, requests: int) -> int:
    env = {**os.environ, **embedded_backends(Path("var")), **_ENV, **VARIANTS[variant]}
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, "-m", "bench.instructions", "--serve", str(requests),
    ]  # fmt: skip
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stderr
    return instructions_in(output)


def _count_server(variant: str, requests: int) -> int:
    """hypercorn under callgrind answering `requests` keep-alive requests, then SIGTERM."""
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        settings = tomllib.loads((ROOT / "hypercorn.toml").read_text())
        settings.update({"bind": [f"127.0.0.1:{port}"], "workers": 0})
        config = Path(tmp) / "hypercorn.toml"
        config.write_text(to_toml(settings))
        env = {
            "PATH": os.environ["PATH"], "DATA_DIR": str(Path(tmp) / "data"),
            **embedded_backends(Path(tmp) / "data"),
            "HEALTH_REFRESH_SECONDS": "0", **_ENV, **SERVER_VARIANTS[variant],
        }  # fmt: skip
        command = [
            "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            sys.executable, "-m", "hypercorn", "--config", str(config),
            env.get("BENCH_APP", "service.asgi:app"),
        ]  # fmt: skip
        log = Path(tmp) / "server.log"
        with open(log, "wb") as output:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
            )
            try:
                base_url = f"http://127.0.0.1:{port}"
                # start-up under valgrind is slow
                ready_path = "/" if "BENCH_APP" in env else "/api/health/live"
                wait_ready(base_url, process, ready_path, seconds=600)
                with httpx.Client(base_url=base_url, timeout=120) as client:
                    for _ in range(WARM_UP + requests):
                        client.get("/").raise_for_status()
                        _wait_idle(process.pid)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=600)
        text = log.read_text(errors="replace")
    return instructions_in(text)


def instructions_in(output: str) -> int:
    """The total instruction count callgrind prints when its process exits (`I refs: 1,234`)."""
    match = re.search(r"refs:\s+([\d,]+)", output)
    if match is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{output[-2000:]}")
    return int(match.group(1).replace(",", ""))


def _wait_idle(pid: int) -> None:
    """Wait until the server has finished the request's tail (log line, clean-up) and sleeps.

    The next request must not arrive while the last one is still being finished: the event loop
    would then take its two pieces of work in a varying number of turns, which moved the count
    by ±25,000 instructions per request between identical runs.
    """
    schedstat = Path(f"/proc/{pid}/schedstat")
    last = schedstat.read_text().split()[0]
    while True:
        time.sleep(0.002)
        now = schedstat.read_text().split()[0]
        if now == last:
            return
        last = now


async def _serve(requests: int) -> None:
    app = _load_app()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000), "extensions": {},
    }  # fmt: skip

    async def send(_message: Any) -> None:
        pass

    def receiver() -> Any:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # no disconnect: Quart cancels this when done
            raise AssertionError("unreachable")

        return receive

    for _ in range(WARM_UP + requests):
        await app(scope, receiver(), send)


def _load_app() -> Any:
    """The service as `create_app` makes it, or the app BENCH_APP names (`module:attribute`)."""
    if "BENCH_APP" in os.environ:
        module, _, attribute = os.environ["BENCH_APP"].partition(":")
        return getattr(importlib.import_module(module), attribute)
    from service.app import create_app
    from service.settings import load_settings

    return create_app(load_settings())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the logs; the process ends after
        asyncio.run(_serve(int(sys.argv[2])))
