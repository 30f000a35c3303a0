"""`/metrics` render cost and the longest event-loop stall it causes, at 1k, 10k and 100k series.

The scrape path as `/metrics` runs it (snapshot on the loop, text rendering in a thread) while a
probe task measures how late the event loop wakes it (the stall another request would see), next
to `prometheus_client.generate_latest` rendering the same series. Target: no stall over 50 ms at
10k series, in every run.

The process holds what a worker holds (the app `create_app` builds, every module it imports),
because a stall's worst part is a full garbage collection, whose cost is the number of objects
the collector walks. Two variants: `as served` (service/asgi.py freezes start-up's objects with
`gc.freeze()`) and `no freeze`. Each scrape runs on a fresh event loop (a fresh thread pool, as on
a worker's first scrape), and each variant also times one full collection (`gc.collect()`): the
worst a scrape can meet when the collector's turn falls inside it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import prometheus_client

from bench.machine import spread, summary, write
from bench.metrics_cost import populate
from service.observability import exposition
from service.observability.metrics import Metrics
from service.observability.multiprocess import WorkerSnapshots, _write_atomically
from service.settings import load_settings

SERIES = (1_000, 10_000, 100_000)
RUNS = 5
VARIANTS = ("as served", "no freeze")
TWO_WORKER_SERIES = 10_000


async def _scrape_with_probe(
    metrics: Metrics, sharing: WorkerSnapshots | None = None
) -> tuple[float, float]:
    """(scrape ms, longest loop stall ms) for one scrape the way /metrics performs it; with
    `sharing`, merging the other workers' snapshots too (in a thread, as /metrics does)."""
    stalls: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0)
            stalls.append(time.perf_counter() - started)

    task = asyncio.create_task(probe())
    await asyncio.sleep(0)
    started = time.perf_counter()
    families = metrics.snapshot()
    if sharing is not None:
        families = await sharing.collect(families)
    await asyncio.to_thread(exposition.render, families)
    elapsed = time.perf_counter() - started
    done.set()
    await task
    return elapsed * 1000, max(stalls, default=0.0) * 1000


def _full_collection_ms() -> float:
    started = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - started) * 1000


def _two_workers(tmp: Path) -> dict[str, Any]:
    tmp.mkdir(parents=True)
    settings = load_settings(data_dir=tmp, metrics_dir=tmp / "metrics")
    own, _ = populate(TWO_WORKER_SERIES, tmp)
    other, _ = populate(TWO_WORKER_SERIES, tmp)
    sharing = WorkerSnapshots(None, own, settings, master_pid=os.getpid())  # type: ignore[arg-type]
    sharing.run_dir.mkdir(parents=True)
    _write_atomically(sharing.run_dir / "worker-4000001.json", exposition.to_json(other.snapshot()))
    scrape_ms, stall_ms = [], []
    for _ in range(RUNS):
        scrape, stall = asyncio.run(_scrape_with_probe(own, sharing))
        scrape_ms.append(scrape)
        stall_ms.append(stall)
    return {"scrape_ms": summary(scrape_ms), "max_loop_stall_ms": summary(stall_ms)}


def run() -> None:
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    from service.app import create_app

    app = create_app()  # noqa: F841 - held, as a worker holds it
    results: dict[str, Any] = {}
    with TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            if variant == "as served":
                gc.freeze()  # as service/asgi.py does once the app is built
            results[f"{variant}, 2 workers"] = _two_workers(Path(tmp) / variant)
            for count in SERIES:
                metrics, reference = populate(count, Path(tmp))
                scrape_ms, stall_ms, reference_ms = [], [], []
                for _ in range(RUNS):
                    scrape, stall = asyncio.run(_scrape_with_probe(metrics))
                    scrape_ms.append(scrape)
                    stall_ms.append(stall)
                    started = time.perf_counter()
                    prometheus_client.generate_latest(reference)
                    reference_ms.append((time.perf_counter() - started) * 1000)
                del reference
                results[f"{variant}, {count}"] = {
                    "scrape_ms": summary(scrape_ms),
                    "max_loop_stall_ms": summary(stall_ms),
                    "full_collection_ms": summary([_full_collection_ms() for _ in range(3)]),
                    "tracked_objects": len(gc.get_objects()),
                    "prometheus_client_ms": summary(reference_ms),
                }
                del metrics
            gc.unfreeze()
    table = (
        "Two workers, 10,000 series each (this one's in memory, the other's snapshot on disk), "
        "merged as `/metrics` merges them, longest event-loop stall: "
        + "; ".join(
            f"{variant} {spread(results[f'{variant}, 2 workers']['max_loop_stall_ms'], 1)} ms "
            f"(scrape {spread(results[f'{variant}, 2 workers']['scrape_ms'], 1)} ms)"
            for variant in VARIANTS
        )
        + ".\n\n"
    )
    table += (
        "| series | variant | scrape ms | longest event-loop stall ms | a full collection ms "
        "| objects it walks | prometheus_client render ms |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
    )
    for count in SERIES:
        for variant in VARIANTS:
            row = results[f"{variant}, {count}"]
            table += (
                f"| {count:,} | {variant} | {spread(row['scrape_ms'], 1)} "
                f"| {spread(row['max_loop_stall_ms'], 1)} "
                f"| {spread(row['full_collection_ms'], 1)} | {row['tracked_objects']:,} "
                f"| {spread(row['prometheus_client_ms'], 1)} |\n"
            )
    write("scrape", results, table)
