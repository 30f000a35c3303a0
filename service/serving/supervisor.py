"""The master process of `scene-packer serve`: hypercorn's own workers, stopped without dropping
a request.

hypercorn's master (`hypercorn.run.run`, 0.18) drops requests on a bad day:
- it `terminate()`s every other worker as soon as the first has stopped, mid-request;
- its workers install no SIGTERM handler, so a signal to the whole process group (systemd's
  default `KillMode`, Ctrl+C in a terminal) kills them at once;
- a worker that fails to start leaves the master exiting 0 (hypercorn issue #269);
- `max_requests` replaces a worker only after it has exited, and the connection that carried the
  last request is closed under a keep-alive client.

This module keeps hypercorn's worker (`hypercorn.asyncio.run.worker_serve`, run by worker.py),
its sockets (`Config.create_sockets`, made once here and inherited by every worker, so a
successor accepts from the same queue) and its configuration file; it replaces only the master
loop and the worker's shutdown trigger. A stop, on SIGTERM or SIGINT to the master or to every
process:
1. each worker's readiness turns 503 `draining` (`ServiceApp.begin_draining`) and HTTP/1
   responses carry `Connection: close`;
2. for DRAIN_SECONDS the worker keeps accepting, so a polling load balancer sees it leave first;
3. it stops accepting, serves what already arrived on open connections for a moment, then hands
   over to hypercorn: idle connections closed, in-flight requests finished (up to
   `graceful_timeout`), the app's shutdown run (pools closed, metrics folded);
4. the master waits for every worker and exits 0.
Recycling (`max_requests` in hypercorn.toml) starts the successor first and retires the old
worker once the successor accepts. SIGHUP recycles every worker the same way.
"""

from __future__ import annotations

import logging
import os
import random
import resource
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import wait
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import structlog
from hypercorn.config import Config, Sockets

from service.observability.families import WorkerStart
from service.serving.worker import (
    CLOSE_GRACE_SECONDS,
    EXIT_CANNOT_SERVE,
    POLL_SECONDS,
    STOP_SIGNALS,
    Plan,
    worker_main,
)

# Exit codes of `scene-packer serve` (docs/serving.md, exit codes).
EXIT_OK = 0
EXIT_UNCLEAN = 1  # a worker crashed while stopping, or had to be killed
# EXIT_CANNOT_SERVE (3): a worker failed to start (worker.py)

# A successor that failed to start is tried again after this long; the old worker serves on.
_RETRY_SUCCESSOR_SECONDS = 10.0

logger = structlog.get_logger("service.serving.supervisor")


@dataclass
class Worker:
    process: SpawnProcess
    ready: Event  # set by the worker once it accepts connections
    retire: Event  # set by the master: make way for a successor
    wants_successor: Event  # set by the worker: it has served its max_requests
    retry_successor_at: float = 0.0
    successor: Worker | None = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return self.process.exitcode is None


def serve(
    application_path: str,
    config: Config,
    sockets: Sockets,
    drain_seconds: float,
    config_file: str = "",
) -> int:
    """Run `config.workers` workers (at least one) on `sockets` (made by
    `config.create_sockets()`) until SIGTERM or SIGINT; the exit code. `config_file` names
    where `config` came from, for the start's log line."""
    context = get_context("spawn")
    requests_per_worker = (config.max_requests, config.max_requests_jitter)
    plan = Plan(
        application_path,
        _without_hypercorn_recycling(config),
        sockets,
        drain_seconds,
        context.Value("i", 0),
        context.Event(),
    )

    def start_worker(reason: WorkerStart = "start") -> Worker:
        return _start(context, plan, requests_per_worker, reason)

    # The signal handlers only note the signal and wake the master's wait, through a pipe it
    # waits on (a wait a signal interrupts is resumed, PEP 475); the loop acts on it. A handler
    # that set a multiprocessing Event itself could run while the loop held that Event's lock and
    # wait for it forever (and every worker polls the same lock). Woken at once, the master
    # closes its copies of the listening sockets before the workers, which see the stop within a
    # poll interval, close theirs: the other way round, connections that reached the socket
    # between the two were reset, never served.
    wake, wake_up = os.pipe()
    os.set_blocking(wake, False)
    os.set_blocking(wake_up, False)
    signalled: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        signalled.append(signum)
        with suppress(OSError):  # full: the loop has enough to wake for
            os.write(wake_up, b"\0")

    open_files = _raise_open_files_limit()  # before the workers, which inherit it
    slots = [start_worker() for _ in range(max(1, config.workers))]
    for signum in (*STOP_SIGNALS, signal.SIGHUP):
        signal.signal(signum, on_signal)
    logger.info(
        "server_started",
        workers=len(slots),
        bind=config.bind,
        config=config_file,
        pid=os.getpid(),
        open_files_limit=open_files,
    )

    retiring: list[Worker] = []
    boot_failed = False
    while not plan.shutdown.is_set():
        _wait_for_any([*slots, *_successors(slots), *retiring], wake)
        with suppress(BlockingIOError):
            os.read(wake, 4096)
        received, signalled[:] = list(signalled), []
        stops = [signum for signum in received if signum in STOP_SIGNALS]
        if stops:
            plan.stop_signal.value = stops[0]
            plan.shutdown.set()
            break
        if signal.SIGHUP in received:  # reload: a successor for every worker
            for worker in slots:
                worker.wants_successor.set()
        retiring = [worker for worker in retiring if worker.alive]
        for index, worker in enumerate(slots):
            if not worker.alive:
                if not worker.ready.is_set():
                    logger.error("worker_failed_to_start", pid=worker.process.pid)
                    boot_failed = True
                    plan.shutdown.set()
                    break
                logger.error(
                    "worker_exited", pid=worker.process.pid, exit_code=worker.process.exitcode
                )
                # A successor already starting takes the slot; it is not started twice.
                slots[index] = worker.successor or start_worker("replace")
            else:
                slots[index] = _recycle(worker, start_worker, retiring)

    code = _stop(plan, [*slots, *_successors(slots), *retiring], boot_failed)
    os.close(wake)
    os.close(wake_up)
    return code


def _recycle(
    worker: Worker, start_worker: Callable[[WorkerStart], Worker], retiring: list[Worker]
) -> Worker:
    """One step of replacing a worker that asked for a successor: the worker in its slot now."""
    successor = worker.successor
    if successor is None:
        if worker.wants_successor.is_set() and time.monotonic() >= worker.retry_successor_at:
            worker.successor = start_worker("recycle")
        return worker
    if successor.ready.is_set():
        worker.retire.set()
        worker.successor = None
        retiring.append(worker)
        return successor
    if not successor.alive:
        logger.error(
            "successor_failed_to_start", pid=successor.process.pid, serving=worker.process.pid
        )
        worker.successor = None
        worker.retry_successor_at = time.monotonic() + _RETRY_SUCCESSOR_SECONDS
    return worker


def stop_budget(config: Config, drain_seconds: float) -> float:
    """The longest a stop may take before the master kills what is left: the drain, closing the
    sockets, the requests in flight (graceful_timeout), the app's shutdown (shutdown_timeout),
    and 5 s to exit. A platform that kills sooner (Kubernetes' terminationGracePeriodSeconds)
    must allow at least this."""
    return (
        drain_seconds + CLOSE_GRACE_SECONDS + config.graceful_timeout + config.shutdown_timeout + 5
    )


def _stop(plan: Plan, workers: list[Worker], boot_failed: bool) -> int:
    started = time.monotonic()
    received = plan.stop_signal.value
    reason = STOP_SIGNALS[signal.Signals(received)] if received else "worker_failed_to_start"
    logger.info("server_stopping", reason=reason, workers=sum(w.alive for w in workers))
    # From here no worker is started: the master's copies of the listening sockets are closed,
    # so once the last worker closes its own, new connections are refused instead of queued.
    _close(plan.sockets)
    deadline = started + stop_budget(plan.config, plan.drain_seconds)
    killed = []
    while any(worker.alive for worker in workers):
        _wait_for_any(workers)
        if time.monotonic() > deadline:
            for worker in workers:
                if worker.alive:
                    killed.append(worker.process.pid)
                    worker.process.kill()
                    worker.process.join()
    codes = [worker.process.exitcode for worker in workers]
    if boot_failed:
        code = EXIT_CANNOT_SERVE
    elif killed or any(code != 0 for code in codes):
        code = EXIT_UNCLEAN
    else:
        code = EXIT_OK
    logger.log(
        logging.INFO if code == EXIT_OK else logging.ERROR,
        "server_stopped",
        exit_code=code,
        stop_seconds=round(time.monotonic() - started, 3),
        killed=killed or None,
    )
    return code


def _start(
    context: SpawnContext,
    plan: Plan,
    requests_per_worker: tuple[int | None, int],
    reason: WorkerStart,
) -> Worker:
    limit, jitter = requests_per_worker
    max_requests = limit + random.randint(0, jitter) if limit else None
    ready, retire, wants_successor = context.Event(), context.Event(), context.Event()
    process = context.Process(
        target=worker_main,
        args=(plan, ready, retire, wants_successor, max_requests, reason),
        daemon=False,
    )
    worker = Worker(process, ready, retire, wants_successor)
    # The stop signals are blocked while the worker starts. The child inherits the mask (it
    # survives exec) and unblocks them once its own handlers are in place, so a signal cannot
    # kill it mid-start; and one for the master stays pending until the start is over (ignoring
    # it instead, SIG_IGN, would discard it and lose the stop).
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        worker.process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    return worker


def _wait_for_any(workers: list[Worker], wake: int | None = None) -> None:
    """Until one of `workers` exits, `wake` is readable, or a poll interval passes (events are
    polled)."""
    sentinels: list[int] = [worker.process.sentinel for worker in workers if worker.alive]
    wait([*sentinels, wake] if wake is not None else sentinels, timeout=POLL_SECONDS * 2)


def _successors(slots: list[Worker]) -> list[Worker]:
    return [worker.successor for worker in slots if worker.successor is not None]


def _without_hypercorn_recycling(config: Config) -> Config:
    # Recycling is done here (successor first); hypercorn's own would close the connection of
    # the request that reached the limit.
    config.max_requests = None
    return config


def _close(sockets: Sockets) -> None:
    for sock in [*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets]:
        sock.close()


def _raise_open_files_limit() -> int:
    """Every connection is a file descriptor, and the usual soft limit (1,024, systemd's default)
    is soon reached by slow clients: the soft limit is raised to the hard one, which the
    administrator set (the kernel's ceiling where the hard limit is unlimited). The limit now in
    force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _kernel_open_files_ceiling() if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _kernel_open_files_ceiling() -> int:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return 1 << 20
