"""Where the service reaches past a library's public API, the behaviour it relies on, pinned: an
upgrade that changes it fails here, by name, rather than somewhere in production.

Each pin names the place in service/ that depends on it."""

from __future__ import annotations

import inspect

import hypercorn.asyncio.run
import quart.wrappers.request
import sqlalchemy.connectors.asyncio
import sqlalchemy.pool.base
from aioprometheus.collectors import Counter, Gauge, Histogram, Registry
from quart import Quart, Response
from quart_schema import QuartSchema

from service.app import create_app
from service.settings import Settings


def test_hypercorn_starts_its_servers_through_asyncio_start_server() -> None:
    """service/serving/worker.py (`_capture_servers`) records hypercorn's listeners and
    connections by standing in for `asyncio.start_server`, whose first argument is the
    connection callback: hypercorn's worker has no hook of its own for either."""
    source = inspect.getsource(hypercorn.asyncio.run.worker_serve)
    assert "asyncio.start_server(_server_callback" in source
    assert "asyncio.start_server(\n                _server_callback" in source


def test_quart_schema_wraps_make_response_on_the_app() -> None:
    """service/http/api_docs.py (`_convert_only_models`) puts a fast path in front of the
    `make_response` quart-schema sets on the app instance."""
    app = Quart(__name__)
    QuartSchema(app)
    assert "make_response" in vars(app)


async def test_the_service_answers_finished_responses_without_conversion(
    settings: Settings,
) -> None:
    app = create_app(settings)
    response = Response("done", status=202)
    assert await app.make_response(response) is response


def test_quarts_request_caches_parsed_json_in_cached_json() -> None:
    """service/http/wrappers.py (`ServiceRequest.get_json`) parses with orjson and keeps the
    result where Quart's own `get_json` looks (quart < 0.23, pinned in pyproject.toml)."""
    source = inspect.getsource(quart.wrappers.request.Request.get_json)
    assert "self._cached_json[silent]" in source


def test_sqlalchemy_terminates_through_the_dialect_and_closes_gracefully_in_the_caller() -> None:
    """service/backends/db/engine.py (`_close_in_background`) replaces the engine dialect's
    `do_terminate`, through which the pool gives up a connection, because the asyncio adapter's
    `terminate()` awaits a graceful close (up to 2 s) in the caller's own time."""
    assert "self._dialect.do_terminate(connection)" in inspect.getsource(
        sqlalchemy.pool.base.Pool._close_connection
    )
    terminate = inspect.getsource(sqlalchemy.connectors.asyncio.AsyncAdapt_terminate.terminate)
    assert "_terminate_graceful_close" in terminate


def test_aioprometheus_stores_values_by_a_key_made_from_the_labels() -> None:
    """service/observability/collectors.py: `Series` remembers a label set's storage key
    (`values.__keytransform__`) and adds to `values.store[key]`; `stored` reads `values.store`
    for the exposition; the declared collectors check labels in `set_value`, through which
    `add`, `inc` and `set` all go."""
    registry = Registry()
    counter = Counter("pinned_total", "A pin.", registry=registry)
    counter.add({"a": "1"}, 2)
    key = counter.values.__keytransform__({"a": "1"})
    assert counter.values.store[key] == 2
    counter.values.store[key] += 3
    assert counter.get({"a": "1"}) == 5
    for method in (Counter.add, Counter.set, Gauge.set, Gauge.add, Histogram.add):
        assert "set_value" in inspect.getsource(method), method
