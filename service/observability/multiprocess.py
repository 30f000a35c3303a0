"""Exact metrics under several hypercorn workers: each scrape reports the sum of all of them.

Every worker records in memory, as with one worker. Sharing happens through files in a directory
per server run (`METRICS_DIR/run-<master pid>-<master start time>`, so a previous run never
leaks into this one):

- `worker-<pid>.json`: a worker's snapshot, written (write then rename) every
  `METRICS_SYNC_INTERVAL` seconds while other workers exist, and whenever it serves a scrape.
- `archive.json`: the counters and histograms of workers that have exited, folded in by the
  exiting worker itself or, if it died, by a survivor; its gauges are dropped.

A scrape writes the serving worker's own snapshot first and then reads everything else, so any
value ever reported for a worker is already on disk: later scrapes read files that can only have
grown, and counters never go backwards, even when the worker that reported them dies. Other
workers' numbers lag by at most the sync interval. With a single worker nothing is written
between scrapes and a scrape reports live numbers. A file that cannot be parsed is skipped with a
warning. Folding and reading are serialised by `flock` on `archive.lock`.

When a snapshot cannot be written (a full disk), the scrape still answers, with this worker's part
from memory (a counter may then go back if the worker dies before a write succeeds); the failure
is counted by reason (`metrics_snapshot_write_errors_total`) and logged once until a write
succeeds, and no temporary file is left behind.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import itertools
import multiprocessing
import multiprocessing.util
import os
import shutil
import threading
import uuid
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import structlog
from quart import Quart

from service.observability import exposition
from service.observability.exposition import Snapshot
from service.observability.families import SnapshotWriteError
from service.observability.metrics import Metrics
from service.settings import Settings

logger = structlog.get_logger(__name__)

_ARCHIVE = "archive.json"
_LOCK = "archive.lock"
_PREFIX = "worker-"


class WorkerSnapshots:
    def __init__(self, metrics: Metrics, settings: Settings, master_pid: int) -> None:
        self.metrics = metrics
        self.interval = settings.metrics_sync_interval
        self.master_pid = master_pid
        self.pid = os.getpid()
        self.base = settings.metrics_dir or settings.data_dir / "metrics"
        self.run_dir = self.base / f"run-{master_pid}-{_start_ticks(master_pid)}"
        self.own_file = self.run_dir / f"{_PREFIX}{self.pid}.json"
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # Own-snapshot writes come from several threads (scrapes, the sync loop); they are
        # numbered on the event loop and never let an older snapshot replace a newer one.
        self._sequence = itertools.count(1)
        self._written = 0
        self._write_lock = threading.Lock()
        self._failing: SnapshotWriteError | None = None  # since the last write that worked
        self._failures = 0

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._prepare)
        except OSError as exc:
            raise RuntimeError(f"METRICS_DIR: cannot use {self.base}: {exc.strerror}") from None
        await self._publish()  # announces this worker to the others
        self._task = asyncio.create_task(self._sync_forever())

    async def stop(self) -> None:
        self._stopping.set()  # ends the loop between rounds, never in the middle of one
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        # Graceful exit (including hypercorn's max_requests recycling): keep every count.
        await self._publish()
        # The move into the archive waits for the process to exit: a recycled hypercorn worker
        # can still finish a request after the application's shutdown (a connection accepted as
        # it stopped, cancelled when its event loop closes), and that request's counts must
        # reach the archive too. If the process dies before, the other workers fold its file.
        multiprocessing.util.Finalize(None, self._publish_and_fold, exitpriority=10)

    def _publish_and_fold(self) -> None:
        self._write_own(next(self._sequence), self.metrics.snapshot())
        self._fold(self.own_file)

    async def collect(self, own: Snapshot) -> Snapshot:
        """The whole server's metrics: this worker's `own` snapshot plus every other's."""
        return await asyncio.to_thread(self._collect, next(self._sequence), own)

    async def _publish(self) -> None:
        await self.metrics.refresh_scrape_time_values()
        sequence, own = next(self._sequence), self.metrics.snapshot()
        await asyncio.to_thread(self._write_own, sequence, own)

    def _write_own(self, sequence: int, own: Snapshot) -> bool:
        """Write this worker's snapshot unless a newer one is already on disk; False when a
        newer one is there. A write that fails is counted and logged, and True is returned: the
        caller reports `own` from memory."""
        with self._write_lock:
            if sequence < self._written:
                return False
            try:
                _write_atomically(self.own_file, exposition.to_json(own))
            except OSError as exc:
                self._write_failed(exc)
                return True
            self._written = sequence
            if self._failing is not None:
                logger.info("metrics_snapshot_write_recovered", failed_writes=self._failures)
                self._failing, self._failures = None, 0
            return True

    def _write_failed(self, exc: OSError) -> None:
        """Counted every time, logged once per run of failures (not a traceback a second)."""
        reason: SnapshotWriteError = (
            "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "other"
        )
        self.metrics.snapshot_write_errors.inc({"reason": reason})
        self._failures += 1
        if self._failing is None:
            self._failing = reason
            logger.error(
                "metrics_snapshot_write_failed",
                reason=reason,
                error=exc.strerror or type(exc).__name__,
                directory=str(self.run_dir),
            )

    async def _sync_forever(self) -> None:
        while not self._stopping.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            if self._stopping.is_set():
                return
            try:
                others = await asyncio.to_thread(self._other_files)
                if others:
                    await self._publish()
                for path in others:
                    if not self._alive(_pid_of(path)):
                        await asyncio.to_thread(self._fold, path)
            except OSError as exc:  # the archive could not be written: the file stays to fold
                self._write_failed(exc)
            except Exception:
                logger.exception("metrics_sync_failed")

    def _prepare(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for run in self.base.glob("run-*"):
            if run != self.run_dir and not _is_live_run(run.name):
                shutil.rmtree(run, ignore_errors=True)

    def _collect(self, sequence: int, own: Snapshot) -> Snapshot:
        # What is reported for this worker must already be on disk (see the module docstring);
        # if a newer snapshot got there first, report that one.
        if not self._write_own(sequence, own):
            own = self._read(self.own_file) or own
        parts = [own]
        with self._locked(fcntl.LOCK_SH):
            archive = self._read(self.run_dir / _ARCHIVE)
            if archive is not None:
                parts.append(archive)
            for path in self._other_files():
                snapshot = self._read(path)
                if snapshot is None:
                    continue
                if self._alive(_pid_of(path)):
                    parts.append(snapshot)
                else:  # exited but not yet folded: its counts still count, its gauges do not
                    parts.append(exposition.merge([snapshot], gauges=False))
        return exposition.merge(parts)

    def _fold(self, path: Path) -> None:
        """Move a finished worker's counters and histograms into the archive, once."""
        with self._locked(fcntl.LOCK_EX):
            if not path.exists():
                return
            finished = self._read(path)
            archive_path = self.run_dir / _ARCHIVE
            archive = self._read(archive_path) or {}
            if finished is not None:
                merged = exposition.merge([archive, finished], gauges=False)
                _write_atomically(archive_path, exposition.to_json(merged))
            path.unlink(missing_ok=True)

    def _other_files(self) -> list[Path]:
        return [
            path
            for path in self.run_dir.glob(f"{_PREFIX}*.json")
            if path != self.own_file and _pid_of(path) > 0
        ]

    def _alive(self, pid: int) -> bool:
        try:
            process = psutil.Process(pid)
            return process.ppid() == self.master_pid and process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _read(self, path: Path) -> Snapshot | None:
        try:
            return exposition.from_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("metrics_snapshot_skipped", file=path.name, reason=str(exc)[:200])
            return None

    @contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        with (self.run_dir / _LOCK).open("a") as lock:
            fcntl.flock(lock, mode)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class SharedMetrics:
    """What /metrics reports: every worker's metrics when this process is a worker of a
    multi-process server (through WorkerSnapshots), its own otherwise."""

    def __init__(self, metrics: Metrics, settings: Settings) -> None:
        self.metrics = metrics
        self.settings = settings
        self.snapshots: WorkerSnapshots | None = None

    async def start(self) -> None:
        parent = multiprocessing.parent_process()
        if parent is None or parent.pid is None:
            return  # a single process (tests, hypercorn with workers = 0): nothing to share
        snapshots = WorkerSnapshots(self.metrics, self.settings, parent.pid)
        await snapshots.start()
        self.snapshots = snapshots

    async def stop(self) -> None:
        snapshots, self.snapshots = self.snapshots, None
        if snapshots is not None:
            await snapshots.stop()

    async def collect(self, own: Snapshot) -> Snapshot:
        return own if self.snapshots is None else await self.snapshots.collect(own)


def init_shared_metrics(app: Quart, shared: SharedMetrics) -> None:
    """Share while `app` serves: starts once the cache and database are open, stops before they
    close (while_serving)."""

    @app.while_serving
    async def _sharing() -> AsyncGenerator[None, None]:
        await shared.start()
        yield
        await shared.stop()


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def _pid_of(path: Path) -> int:
    try:
        return int(path.stem.removeprefix(_PREFIX))
    except ValueError:
        return -1


def _start_ticks(pid: int) -> int:
    """When the process started, in clock ticks since boot: an exact integer that names a run.
    (psutil's create_time() is a float derived from the boot time, which can drift by fractions
    of a second between readings; rounding it could give two workers two different names.)"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rpartition(")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        try:
            return round(psutil.Process(pid).create_time())
        except psutil.Error:
            return 0


def _is_live_run(name: str) -> bool:
    try:
        _, pid, started = name.split("-")
        return psutil.pid_exists(int(pid)) and _start_ticks(int(pid)) == int(started)
    except ValueError:
        return False
