"""Instructions per request of the whole app in-process, observability on, off, and without the
log line: counted by valgrind's callgrind, so the figures do not move with what else the shared
machine is doing (requests per second and even CPU time do, by ±10-30 %).

Each variant serves `GET /` through the real ASGI app (`create_app`, production settings, logs to
/dev/null, no network) N times in a child process under callgrind; two runs with different N and
the difference divided by the extra requests give instructions per request, start-up excluded.
Variants: `off` (REQUEST_OBSERVABILITY=false), `on`, and `on, no log line` (LOG_LEVEL=WARNING, so
the 2xx `request_finished` line is filtered out before any processor runs).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.machine import write

FEW, MANY = 200, 1_200
WARM_UP = 200
VARIANTS = {
    "off": {"REQUEST_OBSERVABILITY": "false"},
    "on": {},
    "on, no log line": {"LOG_LEVEL": "WARNING"},
}
_ENV = {
    "ENVIRONMENT": "production",
    "SECRET_KEY": "bench-secret-key-bench-secret-key-0123456789",
    "LOG_LEVEL": "INFO",
}


def run() -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing: apt-get install valgrind")
    jobs = [(name, count) for name in VARIANTS for count in (FEW, MANY)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = dict(zip(jobs, pool.map(lambda job: _count(*job), jobs), strict=True))
    per_request = {
        name: (counts[name, MANY] - counts[name, FEW]) / (MANY - FEW) for name in VARIANTS
    }
    off = per_request["off"]
    results: dict[str, Any] = {
        "instructions_per_request": per_request,
        "observability_percent": (per_request["on"] / off - 1) * 100,
        "log_line_instructions": per_request["on"] - per_request["on, no log line"],
        "rest_instructions": per_request["on, no log line"] - off,
    }
    lines = [
        f"`GET /` in-process, {MANY} vs {FEW} requests under callgrind:",
        "",
        "| variant | instructions per request | vs off |",
        "| --- | --- | --- |",
    ]
    for name, value in per_request.items():
        lines.append(f"| {name} | {value:,.0f} | {(value / off - 1) * 100:+.1f} % |")
    lines += [
        "",
        f"Observability adds {per_request['on'] - off:,.0f} instructions per request: the "
        f"`request_finished` line {results['log_line_instructions']:,.0f}, the rest (middleware, "
        f"context, route hook, metrics) {results['rest_instructions']:,.0f}.",
    ]
    write("instructions", results, "\n".join(lines) + "\n")


def _count(variant: str, requests: int) -> int:
    env = {**os.environ, **_ENV, **VARIANTS[variant]}
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, "-m", "bench.instructions", "--serve", str(requests),
    ]  # fmt: skip
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stderr
    match = re.search(r"refs:\s+([\d,]+)", output)
    if match is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{output[-2000:]}")
    return int(match.group(1).replace(",", ""))


async def _serve(requests: int) -> None:
    from service.app import create_app
    from service.settings import load_settings

    app = create_app(load_settings())
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


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the logs; the process ends after
        asyncio.run(_serve(int(sys.argv[2])))
