"""One deadline per request (REQUEST_TIMEOUT): a hung dependency costs a client a bounded wait and
a 503 `dependency_timeout`, and the cancelled work gives back every connection it held."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import structlog

from service.app import ServiceApp, create_app
from service.settings import Settings
from tests.support.client import login
from tests.support.metrics_helpers import parse
from tests.support.waiting import until

# Generous: only tells "bounded by the deadline" from "waited for the client timeouts" (60 s).
DEADLINE = 1.0
BOUND = DEADLINE + 5


def _one_hashing_thread(settings: Settings, request_timeout: float) -> ServiceApp:
    """An app whose logins queue behind one hashing thread, with no login limit in the way."""
    update = {
        "request_timeout": request_timeout,
        "password_hash_threads": 1,
        "login_limit_per_ip": 1000,
        "login_limit_per_username": 1000,
    }
    return create_app(settings.model_copy(update=update))


@contextmanager
def _hashing_thread_held(app: ServiceApp) -> Iterator[ThreadPoolExecutor]:
    """The app's one hashing thread kept busy for the block (then released): the pool."""
    busy = threading.Event()
    pool = app.parts.passwords.pool
    pool.submit(busy.wait, BOUND * 3)
    try:
        yield pool
    finally:
        busy.set()


async def test_the_sweeper_stops_with_the_app(settings: Settings) -> None:
    app = create_app(settings)
    async with app.test_app() as test_app:
        assert (await test_app.test_client().get("/")).status_code == 200
        coroutines = {task: task.get_coro() for task in asyncio.all_tasks()}
        sweepers = [t for t, c in coroutines.items() if c.__qualname__ == "Deadlines._sweep"]
        assert len(sweepers) == 1
    assert sweepers[0].done()


async def test_logins_queued_for_the_hashing_pool_past_the_deadline_say_so(
    settings: Settings,
) -> None:
    """One hashing thread, held busy until every login has answered: the logins queued for the
    pool at their deadline answer 503 `dependency_timeout`, logged with `waiting_on`
    `password_hashing` (this worker's own capacity), and are counted against no dependency."""
    # Time to reach the pool (the body, the limits, the user's row) on a busy machine.
    app = _one_hashing_thread(settings, request_timeout=2 * DEADLINE)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        with _hashing_thread_held(app), structlog.testing.capture_logs() as logs:
            answers = await asyncio.wait_for(
                asyncio.gather(*(login(client, f"queued-{i}") for i in range(5))), BOUND
            )
        assert [answer.status_code for answer in answers] == [503] * 5
        bodies = [await answer.get_json() for answer in answers]
        assert {body["error"]["code"] for body in bodies} == {"dependency_timeout"}
        late = [line for line in logs if line["event"] == "request_deadline_exceeded"]
        assert [line["waiting_on"] for line in late] == ["password_hashing"] * 5
        samples = parse(await (await client.get("/metrics")).get_data(as_text=True))
    labels = frozenset({("dependency", "database"), ("reason", "timeout")})
    assert ("dependency_errors_total", labels) in samples  # the counters are there, at zero
    assert not [v for (name, _), v in samples.items() if name == "dependency_errors_total" and v]


async def test_requests_still_working_when_the_stop_runs_out_answer_503_shutting_down(
    settings: Settings,
) -> None:
    """What the supervisor does shortly before graceful_timeout (`ServiceApp.stop_in_flight`):
    logins queued behind a busy hashing thread, far from their deadline, each answer 503
    `shutting_down` with Retry-After and their request id (hypercorn would have cancelled them
    with an empty 500), and each is logged with what it was waiting on."""
    app = _one_hashing_thread(settings, request_timeout=BOUND * 10)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        with _hashing_thread_held(app) as pool, structlog.testing.capture_logs() as logs:
            logins = [asyncio.ensure_future(login(client, f"late-{i}")) for i in range(5)]
            await until(lambda: pool._work_queue.qsize() == 5, BOUND, "the logins never queued")
            assert app.stop_in_flight() == 5
            answers = await asyncio.wait_for(asyncio.gather(*logins), BOUND)
        assert [answer.status_code for answer in answers] == [503] * 5
        assert {answer.headers["Retry-After"] for answer in answers} == {"1"}
        errors = [(await answer.get_json())["error"] for answer in answers]
        assert {error["code"] for error in errors} == {"shutting_down"}
        assert {error["request_id"] for error in errors} == {
            answer.headers["X-Request-ID"] for answer in answers
        }
        stopped = [line for line in logs if line["event"] == "request_stopped"]
        assert [line["waiting_on"] for line in stopped] == ["password_hashing"] * 5
        assert app.stop_in_flight() == 0  # nothing left to stop; the app serves on
        assert (await client.get("/")).status_code == 200
