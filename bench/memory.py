"""Resident memory after 100k requests over 1,000 users and 1,000 distinct paths, versus after 1k.

One worker on the embedded default (SQLite, in-process cache: the worst case, since the cache
lives in the worker), pinned to core 0; wrk on core 1 cycles through 1,000 signed-in users'
`GET /api/auth/me` and 1,000 distinct unknown paths. Resident memory is the worker's own
`process_resident_memory_bytes`; the request count is the sum of `http_requests_total`.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from quart_auth.extension import _AuthSerializer

from bench.machine import write
from bench.serving import hypercorn, wrk
from tests.support.metrics_helpers import parse
from tests.support.server import embedded_backends

USERS = 1000
PATHS = 1000
TARGET = 100_000
SECRET = "bench-secret-key-bench-secret-key-0123456789"


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "service-data"
        env = {
            "ENVIRONMENT": "production",
            "SECRET_KEY": SECRET,
            "DATA_DIR": str(data_dir),
            **embedded_backends(data_dir),
            "LOG_LEVEL": "WARNING",
            "HEALTH_REFRESH_SECONDS": "0",
        }
        with hypercorn("service.asgi:app", env) as server:
            base_url = server.url
            cookies = _create_users(data_dir / "scene_packer.db")
            script = Path(tmp) / "mixed.lua"
            script.write_text(_lua(cookies))
            wrk(base_url + "/", connections=16, seconds=1, script=script)
            while _reading(base_url)["requests"] < 1_000:
                wrk(base_url + "/", connections=16, seconds=1, script=script)
            early = _reading(base_url)
            started = time.monotonic()
            while _reading(base_url)["requests"] < TARGET:
                wrk(base_url + "/", connections=64, seconds=10, script=script)
            late = _reading(base_url)
            late["seconds"] = time.monotonic() - started
    results: dict[str, Any] = {"after_1k": early, "after_100k": late}
    growth = (late["rss_bytes"] - early["rss_bytes"]) / 1e6
    table = (
        "| after | requests | resident MB | series in /metrics |\n| --- | --- | --- | --- |\n"
        f"| ~1k requests | {early['requests']:,.0f} | {early['rss_bytes'] / 1e6:.1f} "
        f"| {early['series']} |\n"
        f"| ~100k requests | {late['requests']:,.0f} | {late['rss_bytes'] / 1e6:.1f} "
        f"| {late['series']} |\n\nGrowth: {growth:.1f} MB.\n"
    )
    write("memory", results, table)


def _create_users(database: Path) -> list[str]:
    serializer = _AuthSerializer(SECRET, "scene-packer-session")
    with sqlite3.connect(database) as connection:
        connection.executemany(
            "INSERT OR IGNORE INTO users (id, username, password_hash, created_at) "
            "VALUES (?, ?, 'not-a-hash', CURRENT_TIMESTAMP)",
            [(i, f"user{i:04d}") for i in range(1, USERS + 1)],
        )
    return [serializer.dumps(str(i)) for i in range(1, USERS + 1)]


def _lua(cookies: list[str]) -> str:
    quoted = ",\n".join(f'"{cookie}"' for cookie in cookies)
    return f"""
local cookies = {{
{quoted}
}}
local i = 0
request = function()
  i = i + 1
  if i % 2 == 0 then
    local cookie = cookies[(i / 2) % {USERS} + 1]
    return wrk.format("GET", "/api/auth/me", {{["Cookie"] = "scene_packer_session=" .. cookie}})
  end
  return wrk.format("GET", "/missing/" .. (i % {PATHS}))
end
"""


def _reading(base_url: str) -> dict[str, Any]:
    samples = parse(httpx.get(base_url + "/metrics", timeout=30).text)
    rss = next(v for (name, _), v in samples.items() if name == "process_resident_memory_bytes")
    requests = sum(v for (name, _), v in samples.items() if name == "http_requests_total")
    return {"rss_bytes": rss, "requests": requests, "series": len(samples)}
