"""File descriptors: `scene-packer serve` raises its soft limit to the hard one, and a worker that
runs out anyway (slow clients holding connections) logs a line per interval, not a traceback per
failed accept, and serves again once descriptors are free."""

from __future__ import annotations

import shutil
import socket
from contextlib import ExitStack, suppress
from pathlib import Path

import httpx

from tests.support.metrics_helpers import parse, value
from tests.support.server import PRODUCTION_ENV, is_live, running_server
from tests.support.tools import missing
from tests.support.waiting import wait_until

HANG_GUARD = 60  # seconds: only catches a hang
MAX_IDLE = 600  # idle connections at most (this process has descriptors of its own to spare)


def _prlimit(soft: int, hard: int) -> list[str]:
    path = shutil.which("prlimit")
    if path is None:
        missing("prlimit is not installed (apt-get install util-linux)")
    return [str(path), f"--nofile={soft}:{hard}", "--"]


def test_serve_raises_the_soft_limit_to_the_hard_one(tmp_path: Path) -> None:
    env = {**PRODUCTION_ENV, "METRICS_DIR": str(tmp_path / "metrics")}
    wrapper = _prlimit(256, 4096)
    with running_server(tmp_path, env, supervised=True, wrapper=wrapper) as server:
        samples = parse(httpx.get(server.base_url + "/metrics", timeout=HANG_GUARD).text)
        (started,) = [e for e in server.events() if e["event"] == "server_started"]
    assert started["open_files_limit"] == 4096
    assert value(samples, "process_max_fds") == 4096  # the worker inherited it


def test_a_worker_out_of_descriptors_logs_a_line_per_interval(tmp_path: Path) -> None:
    """Plain hypercorn (nothing raises the limit) with 64 descriptors, and 100 idle connections."""
    with running_server(tmp_path, PRODUCTION_ENV, wrapper=_prlimit(64, 64)) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        with ExitStack() as idle:
            held: list[socket.socket] = []

            def one_more() -> None:  # the server closes idle ones in time: keep some waiting
                if len(held) < MAX_IDLE:
                    with suppress(OSError):  # a full backlog may not take it: that is pressure too
                        connection = socket.create_connection((host, int(port)), timeout=5)
                        held.append(idle.enter_context(connection))

            for _ in range(100):
                one_more()

            def failed_lines() -> list[dict[str, object]]:
                return [e for e in server.events() if e["event"] == "accept_failed"]

            def second_line() -> bool:
                one_more()
                return len(failed_lines()) >= 2

            # The second line comes an interval after the first, with the failures between.
            wait_until(second_line, HANG_GUARD, "no second accept_failed")
            lines = failed_lines()
        # The idle clients are gone: the worker accepts again.
        wait_until(lambda: is_live(server.base_url), HANG_GUARD, "the worker never served again")
        output = server.output.read_text()
    assert lines[0]["reason"] == "EMFILE" and lines[0]["failures"] == 1
    assert lines[1]["failures"] > 1  # asyncio retries every second: counted, not logged
    # Other parts that met the limit said so once each (a health check, a metrics write); the
    # accepts, retried every second, added no traceback of their own.
    assert "socket.accept()" not in output
    assert len(output.splitlines()) < 100
