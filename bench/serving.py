"""Start hypercorn and drive it with wrk, each pinned to its own core."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.support.server import SCENE_PACKER, stop, to_toml

ROOT = Path(__file__).resolve().parents[1]
SERVER_CPU, LOAD_CPU = "0", "1"


@dataclass(frozen=True)
class Server:
    """A started server: its base URL and the process id of its master."""

    url: str
    pid: int
    process: subprocess.Popen[bytes] | None = None  # hypercorn() only: signal it, read its exit
    log: Path | None = None  # hypercorn() only: stdout and stderr

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server's processes (master and workers), user + system.

        Unlike requests per second, it does not count the time the machine gave to others, so
        CPU per request compares servers steadily on a shared machine.
        """
        master = psutil.Process(self.pid)
        total = 0.0
        for process in [master, *master.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total


@contextmanager
def hypercorn(
    app: str,
    env: Mapping[str, str],
    *,
    workers: int = 1,
    config: Mapping[str, Any] | None = None,
    ready_path: str = "/api/health/live",
    supervised: bool = False,
) -> Iterator[Server]:
    """Serve `app` on a free loopback port, pinned to SERVER_CPU; `supervised`: the service
    under `scene-packer serve` (its own app only) instead of hypercorn's master."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = tomllib.loads((ROOT / "hypercorn.toml").read_text())
    settings.update({"bind": [f"127.0.0.1:{port}"], "workers": workers, **(config or {})})
    settings = {key: value for key, value in settings.items() if value is not None}  # None: unset
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "hypercorn.toml"
        config_path.write_text(to_toml(settings))
        command = (
            [*SCENE_PACKER, "serve", "--config", str(config_path)]
            if supervised
            else [sys.executable, "-m", "hypercorn", "--config", str(config_path), app]
        )
        if shutil.which("taskset"):
            command = ["taskset", "-c", SERVER_CPU, *command]
        full_env = {"PATH": os.environ["PATH"], "DATA_DIR": str(Path(tmp) / "data"), **env}
        log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base_url, process, path=ready_path)
            yield Server(base_url, process.pid, process, Path(tmp) / "server.log")
        finally:
            stop(process)
            log.close()


@contextmanager
def gunicorn(app: str, env: Mapping[str, str], *, workers: int = 1) -> Iterator[Server]:
    """The reference Flask design under gunicorn sync workers, pinned to SERVER_CPU."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = str(ROOT / "bench/reference_flask/gunicorn.conf.py")
    command = [sys.executable, "-m", "gunicorn", "-c", config, app]
    if shutil.which("taskset"):
        command = ["taskset", "-c", SERVER_CPU, *command]
    full_env = {
        "PATH": os.environ["PATH"],
        "BIND": f"127.0.0.1:{port}",
        "WORKERS": str(workers),
        **env,
    }
    process = subprocess.Popen(
        command, cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, process, path="/")
        yield Server(base_url, process.pid)
    finally:
        stop(process)


def wrk(
    url: str,
    *,
    connections: int,
    seconds: int,
    script: Path | None = None,
    server: Server | None = None,
) -> dict[str, float]:
    """Requests per second and latency percentiles (ms) from one wrk run pinned to LOAD_CPU;
    with `server`, also the server's CPU time per request answered (µs)."""
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    threads = min(2, connections)
    command = [
        binary, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "60s",
        "--latency", url,
    ]  # fmt: skip
    if script is not None:
        command[1:1] = ["-s", str(script)]
    if shutil.which("taskset"):
        command = ["taskset", "-c", LOAD_CPU, *command]
    cpu_before = server.cpu_seconds() if server is not None else 0.0
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    if server is not None and requests:
        result["cpu_us_per_request"] = (server.cpu_seconds() - cpu_before) / requests * 1e6
    for percentile in ("50", "99"):
        match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)", output, re.MULTILINE)
        if match:
            result[f"p{percentile}_ms"] = float(match.group(1)) * _UNIT[match.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = float(errors.group(1)) if errors else 0.0
    return result


_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wait_ready(
    base_url: str, process: subprocess.Popen[bytes], path: str, *, seconds: float = 60
) -> None:
    """Until `path` answers; fails if the server exits or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("server exited during start-up")
        try:
            httpx.get(base_url + path, timeout=min(seconds / 20, 30))
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")
