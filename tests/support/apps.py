"""An app with extra routes that only tests need, served by hypercorn like the real one."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import structlog
from quart import request

from service.app import create_app

logger = structlog.get_logger("tests.support.apps")

app = create_app()
# Quart's own wait for a body (60 s by default), shortened by a test that needs it to pass first.
app.config["BODY_TIMEOUT"] = float(os.environ.get("TEST_BODY_TIMEOUT", "60"))


@app.get("/test/boom")
async def boom() -> str:
    raise RuntimeError("internal detail: postgresql://app:hunter2@db.internal/x")


@app.get("/test/slow/<int:milliseconds>")
async def slow(milliseconds: int) -> str:
    await asyncio.sleep(milliseconds / 1000)
    return "slow"


@app.post("/test/read-then-work/<int:milliseconds>")
async def read_then_work(milliseconds: int) -> str:
    """Reads the whole body, then works `milliseconds` (as a login hashes after reading)."""
    await request.get_data()
    await asyncio.sleep(milliseconds / 1000)
    return "done"


@app.get("/test/background")
async def background() -> str:
    async def later() -> None:
        await asyncio.sleep(0.05)
        logger.info("background_done")

    app.add_background_task(later)
    return "started"


def _with_worker_pid(inner: Any) -> Any:
    """Which worker answered, on every answer (those given before Quart too): lets tests see
    that every worker was asked."""
    pid = (b"x-worker-pid", str(os.getpid()).encode())

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        async def tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), pid]}
            await send(message)

        await inner(scope, receive, tagged)

    return asgi


app.asgi_app = _with_worker_pid(app.asgi_app)  # type: ignore[method-assign]
