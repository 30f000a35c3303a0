"""HAProxy running deploy/haproxy/haproxy.cfg unchanged in front of instances the test started."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support import ROOT
from tests.support.server import free_port
from tests.support.tools import require

HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
# Generous bounds that only tell "HAProxy acted on its checks" from "it never did"
# (inter 2 s, fall 2, rise 3 in the config: about 4-6 s down, 6-8 s up).
MARK_BOUND = 30


class HAProxy:
    def __init__(self, tmp: Path, servers: dict[str, str]) -> None:
        self.port = free_port()
        self.socket = tmp / "haproxy.sock"
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_address = f"127.0.0.1:{free_port()}"  # its exporter (HAPROXY_METRICS_BIND)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/bin"),
            "HAPROXY_BIND": f"127.0.0.1:{self.port}",
            "HAPROXY_STATS_SOCKET": str(self.socket),
            "HAPROXY_METRICS_BIND": self.metrics_address,
            **{f"SCENE_PACKER_{name.upper()}": address for name, address in servers.items()},
        }
        binary = require("haproxy")
        self.log = (tmp / "haproxy.log").open("wb")
        self.process = subprocess.Popen(
            [binary, "-db", "-f", str(HAPROXY_CFG)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def status(self, server: str) -> str:
        """UP, DOWN, or a transition ("UP 1/3"), from HAProxy's stats socket."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        header, *rows = data.decode().splitlines()
        columns = header.lstrip("# ").split(",")
        for row in rows:
            values = dict(zip(columns, row.split(","), strict=False))
            if values.get("pxname") == "scene_packer" and values.get("svname") == server:
                return values["status"]
        raise AssertionError(f"no server {server} in HAProxy's stats")

    async def wait_for(self, server: str, status: str, bound: float = MARK_BOUND) -> float:
        started = time.monotonic()
        while time.monotonic() - started < bound:
            if self.process.poll() is not None:
                raise AssertionError("haproxy exited")
            try:
                if self.status(server) == status:
                    return time.monotonic()
            except OSError:
                pass  # the socket is not there yet
            await asyncio.sleep(0.1)
        raise AssertionError(f"server {server} never became {status}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR1)  # soft stop
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()


@contextmanager
def running_haproxy(tmp: Path, servers: dict[str, str]) -> Iterator[HAProxy]:
    proxy = HAProxy(tmp, servers)
    try:
        yield proxy
    finally:
        proxy.close()
