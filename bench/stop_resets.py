"""New connections during a stop without a drain: served, refused or reset.

`scene-packer serve` with 2 workers and `DRAIN_SECONDS=0` (the default: no load balancer to
take the instance out first) is stopped with SIGTERM while 20 clients keep opening a new
connection for each request (`GET /api/health/live`, `Connection: close`). Each attempt is
served (200), refused (nothing listens any more: a client can retry elsewhere at once) or reset
(the kernel took the connection into the listening socket's queue and it was dropped unanswered
when the last copy of the socket closed). Only the resets are lost requests.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import Counter
from typing import Any

from bench.machine import summary, write
from bench.serving import Server, hypercorn

STOPS = 10
CLIENTS = 20
REQUEST = b"GET /api/health/live HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def run() -> None:
    runs = [_stop_once() for _ in range(STOPS)]
    results: dict[str, Any] = {
        "stops": STOPS,
        "clients": CLIENTS,
        "runs": runs,
        "reset": summary([run.get("reset", 0) for run in runs]),
        "reset_total": sum(run.get("reset", 0) for run in runs),
        "served_total": sum(run.get("served", 0) for run in runs),
    }
    write("stop_resets", results, _table(results))


def _stop_once() -> dict[str, int]:
    env = {"DRAIN_SECONDS": "0", "LOG_LEVEL": "WARNING"}
    with hypercorn("service.asgi:app", env, workers=2, supervised=True) as server:
        return _count_while_stopping(server)


def _count_while_stopping(server: Server) -> dict[str, int]:
    assert server.process is not None
    host, port = server.url.removeprefix("http://").split(":")
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection((host, int(port)), timeout=5) as sock:
                    sock.sendall(REQUEST)
                    answer = b""
                    while chunk := sock.recv(4096):
                        answer += chunk
                outcome = "served" if answer.startswith(b"HTTP/1.1 200") else "unanswered"
            except ConnectionRefusedError:
                outcome = "refused"
                time.sleep(0.005)
            except ConnectionResetError:
                outcome = "reset"
            except OSError as error:
                outcome = type(error).__name__
            with lock:
                counts[outcome] += 1

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    os.kill(server.pid, signal.SIGTERM)
    server.process.wait(60)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()
    return dict(counts)


def _table(results: dict[str, Any]) -> str:
    text = (
        f"SIGTERM to `scene-packer serve` (2 workers, `DRAIN_SECONDS=0`) while {CLIENTS} clients "
        "open a new connection per request; per stop:\n\n"
        "| stop | served | refused | reset (lost) | other |\n| --- | --- | --- | --- | --- |\n"
    )
    for index, run in enumerate(results["runs"], 1):
        other = sum(v for k, v in run.items() if k not in ("served", "refused", "reset"))
        text += (
            f"| {index} | {run.get('served', 0)} | {run.get('refused', 0)} | "
            f"{run.get('reset', 0)} | {other} |\n"
        )
    text += (
        f"\nResets: {results['reset_total']} in {results['stops']} stops (median "
        f"{results['reset']['median']:g} per stop), against {results['served_total']} served.\n"
    )
    return text
