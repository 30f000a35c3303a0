"""Real hypercorn processes for tests that must see what an operator sees (stdout, workers)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support import ROOT

PRODUCTION_ENV = {
    "ENVIRONMENT": "production",
    "SECRET_KEY": "test-secret-key-that-is-long-enough-0123456789",
}


def embedded_backends(data_dir: Path) -> dict[str, str]:
    """The embedded database and the in-process cache, named as production must name them
    (the defaults a development run gets without saying)."""
    return {
        "DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'scene_packer.db'}",
        "REDIS_URL": "memory://",
    }


# The console script, run by this interpreter (the project's venv).
SCENE_PACKER = [sys.executable, "-c", "from service.serving.cli import run; run()"]


@dataclass
class Server:
    base_url: str
    output: Path
    process: subprocess.Popen[bytes]

    def lines(self) -> list[str]:
        return self.output.read_text().splitlines()

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines of its output (production format), parsed."""
        return [json.loads(line) for line in self.lines() if line.startswith("{")]


def raw_exchange(base_url: str, *parts: bytes, pause: float = 0.0) -> bytes:
    """Send `parts` over one plain connection, `pause` seconds apart, then read the answer until
    the server closes the connection: what an HTTP client library will not send (a body that
    stops or arrives late, an absolute-form target)."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        for index, part in enumerate(parts):
            if index:
                time.sleep(pause)
            sock.sendall(part)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def parse_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 answer as status, headers (lower-case names) and body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def is_live(base_url: str) -> bool:
    """The server answers its liveness probe 200 now."""
    try:
        return httpx.get(base_url + "/api/health/live", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: the next free one of `TEST_PORTS` (`low-high`,
    divided between pytest-xdist's workers) when it is set, else one the kernel picks."""
    ports = _PORTS
    if ports is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            return port
    for _ in range(len(ports)):
        candidate = ports[next(_port_turn) % len(ports)]
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise RuntimeError(f"TEST_PORTS: no free port among {ports.start}-{ports.stop - 1}")


def _ports(setting: str | None) -> range | None:
    """This process's share of TEST_PORTS."""
    if not setting:
        return None
    low, _, high = setting.partition("-")
    if not (low.isdigit() and high.isdigit() and 1024 <= int(low) <= int(high) <= 65535):
        raise ValueError(f"TEST_PORTS={setting!r}: write a range such as 20000-20999")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    share = (int(high) - int(low) + 1) // workers
    if share < 10:
        raise ValueError(f"TEST_PORTS={setting!r}: fewer than 10 ports for each of {workers}")
    start = int(low) + worker * share
    return range(start, start + share)


_PORTS = _ports(os.environ.get("TEST_PORTS"))
_port_turn = itertools.count()


@contextmanager
def running_server(
    tmp_path: Path,
    env: Mapping[str, str],
    *,
    app: str = "service.asgi:app",
    config: Mapping[str, Any] | None = None,
    ready_path: str = "/api/health/live",
    supervised: bool = False,
    wrapper: Sequence[str] = (),
    bare_config: bool = False,
) -> Iterator[Server]:
    """Serve `app` with the repository's hypercorn.toml (bind and `config` overridden), by
    hypercorn itself or, `supervised`, by `scene-packer serve` (the service's own app only),
    on the backends `env` names, else the embedded ones (`embedded_backends`).

    `bare_config`: a file of only `bind` and `config`, as an operator may write one.
    `wrapper` runs the command (`prlimit --nofile=256:4096 --`). Output (stdout and stderr
    together) goes to a file; the server is stopped with SIGTERM,
    by its own process id, when the block ends.
    """
    port = free_port()
    settings = {} if bare_config else tomllib.loads((ROOT / "hypercorn.toml").read_text())
    settings.update({"bind": [f"127.0.0.1:{port}"], **(config or {})})
    config_path = tmp_path / f"hypercorn-{port}.toml"
    config_path.write_text(to_toml(settings))
    output = tmp_path / f"server-{port}.log"
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATA_DIR": str(tmp_path / "data"),
        **env,
    }
    full_env = {**embedded_backends(Path(full_env["DATA_DIR"])), **full_env}
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [
                *wrapper,
                *(
                    [*SCENE_PACKER, "serve", "--config", str(config_path)]
                    if supervised
                    else [sys.executable, "-m", "hypercorn", "--config", str(config_path), app]
                ),
            ],
            cwd=ROOT,
            env=full_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", output, process)
    try:
        _wait_until_ready(server, ready_path)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """End a server this test started: SIGTERM to its master (a plain hypercorn worker that gets
    the signal itself dies at once, before it has written its last lines), then SIGKILL to the
    whole group if it does not exit."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _wait_until_ready(server: Server, path: str) -> None:
    """Until `path` answers 200: a server that answers 500 is not ready, and not started."""
    answer = "no answer"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.output.read_text()}")
        try:
            response = httpx.get(server.base_url + path, timeout=1)
            if response.status_code == 200:
                return
            answer = f"{response.status_code} {response.text[:200]}"
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server did not start ({path}: {answer}):\n{server.output.read_text()}")


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    scalars, tables = [], []
    for key, value in data.items():
        name = key if key.replace("_", "").isalnum() else f'"{key}"'
        if isinstance(value, Mapping):
            tables.append((f"{prefix}{name}", value))
        else:
            scalars.append(f"{name} = {_toml_value(value)}")
    text = "\n".join(scalars) + "\n"
    for table_name, table in tables:
        text += f"\n[{table_name}]\n" + to_toml(table, prefix=f"{table_name}.").lstrip("\n")
    return text


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
