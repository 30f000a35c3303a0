"""Several hypercorn workers: throughput with 1 and 2 workers, and the cost of an aggregated scrape.

Throughput: the service pinned to core 0 (so 2 workers share it: the figure shows what the
cross-worker aggregation costs, not scaling), wrk with 64 connections on core 1 against `GET /`,
10 s runs interleaved 1/2/1/2..., 5 each, after a warm-up.
Scrape: 4 workers' snapshots of 10k series each (one in memory, three on disk as the other
workers would leave them), merged and rendered by the code `/metrics` runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from bench.machine import spread, summary, write
from bench.serving import hypercorn, wrk
from service.observability import exposition
from service.observability.metrics import Metrics
from service.observability.multiprocess import WorkerSnapshots, _write_atomically
from service.settings import load_settings

RUNS = 5
SECONDS = 10
CONNECTIONS = 64
SERIES = 10_000


def _throughput() -> dict[str, Any]:
    env = {"LOG_LEVEL": "WARNING", "HEALTH_REFRESH_SECONDS": "0"}
    samples: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for _ in range(RUNS):
        for workers in (1, 2):
            with hypercorn("service.asgi:app", env, workers=workers) as server:
                wrk(server.url + "/", connections=CONNECTIONS, seconds=2)  # warm-up
                samples[workers].append(
                    wrk(server.url + "/", connections=CONNECTIONS, seconds=SECONDS)
                )
    return {
        f"{workers}_workers": {
            "rps": summary([run["rps"] for run in runs]),
            "p99_ms": summary([run["p99_ms"] for run in runs]),
        }
        for workers, runs in samples.items()
    }


def _populated(tmp: Path, offset: int) -> Metrics:
    metrics = Metrics(load_settings(data_dir=tmp))
    for i in range(SERIES):
        metrics.http_requests.inc(
            {"method": "GET", "endpoint": f"/r/{i}", "status": str(200 + offset)}
        )
    return metrics


def _scrape_cost() -> dict[str, Any]:
    with TemporaryDirectory() as tmp:
        settings = load_settings(data_dir=Path(tmp), metrics_dir=Path(tmp) / "metrics")
        own = _populated(Path(tmp), 0)
        sharing = WorkerSnapshots(None, own, settings, master_pid=os.getpid())  # type: ignore[arg-type]
        sharing.run_dir.mkdir(parents=True)
        for worker in range(1, 4):
            other = _populated(Path(tmp), worker)
            path = sharing.run_dir / f"worker-{4_000_000 + worker}.json"
            _write_atomically(path, exposition.to_json(other.snapshot()))
        file_bytes = sum(p.stat().st_size for p in sharing.run_dir.glob("worker-*.json"))
        snapshot_ms, collect_ms, render_ms, series = [], [], [], 0
        for _ in range(RUNS):
            started = time.perf_counter()
            families = own.snapshot()
            snapshot_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            merged = sharing._collect(1, families)
            collect_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            body = exposition.render(merged)
            render_ms.append((time.perf_counter() - started) * 1000)
            series = body.count(b"\nhttp_requests_total{")
    return {
        "series_rendered": series,
        "snapshot_files_bytes": file_bytes,
        "snapshot_on_loop_ms": summary(snapshot_ms),
        "write_read_merge_ms": summary(collect_ms),
        "render_ms": summary(render_ms),
    }


def run() -> None:
    results = {"throughput": _throughput(), "scrape_4x10k": _scrape_cost()}
    table = "| workers (one core) | requests/s median (min–max) | p99 ms median |\n"
    table += "| --- | --- | --- |\n"
    for workers in (1, 2):
        row = results["throughput"][f"{workers}_workers"]
        table += f"| {workers} | {spread(row['rps'], 0)} | {row['p99_ms']['median']:.2f} |\n"
    scrape = results["scrape_4x10k"]
    table += (
        f"\nScrape of 4 workers × 10k series ({scrape['series_rendered']:,} series out, "
        f"{scrape['snapshot_files_bytes'] / 1e6:.1f} MB of snapshots read): snapshot on the loop "
        f"{scrape['snapshot_on_loop_ms']['median']:.1f} ms, write own + read + merge (thread) "
        f"{scrape['write_read_merge_ms']['median']:.1f} ms, render (thread) "
        f"{scrape['render_ms']['median']:.1f} ms (medians of {RUNS}).\n"
    )
    write("workers", results, table)
