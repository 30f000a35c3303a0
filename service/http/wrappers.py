"""JSON in and out through orjson: the request class, with a body that cannot become a 500,
and the provider behind `jsonify`.

Quart decodes the body as UTF-8 before its own error handling and parses it with the standard
library, so invalid UTF-8 (`UnicodeDecodeError`) or a deeply nested document (`RecursionError`)
escaped as a 500 that any client could cause. Here the bytes go to orjson (the parser the beacons
and the logs already use): it checks UTF-8 itself (RFC 8259: JSON is UTF-8), stops at 1,024 levels
of nesting and refuses infinities, and every refusal is a `ValueError`, which Quart answers with
400 (`bad_request`).

`jsonify` renders with orjson too (the standard library's encoder was one of the larger costs of
a small answer, docs/benchmarks.md), keeping what the provider it replaces (quart-schema's, set up
in service/http/api_docs.py) promised: sorted keys, what JSON has no type for (dates, models) handed
to that provider's `default` (pydantic's conversion: dates in ISO 8601), anything orjson refuses
(an integer beyond 64 bits) rendered by the standard library, indented output in debug mode.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, ClassVar, Literal, cast, overload

import orjson
from quart import Quart
from quart.json.provider import DefaultJSONProvider
from quart.wrappers import Request

from service.http.deadlines import Deadlines
from service.observability.context import waiting_on

# A body already received is read in microseconds; only a real wait moves the deadline.
_BODY_WAIT_IGNORED = 0.001

# Dates go to the provider's `default`, as the standard library's encoder sent them there.
_DUMP_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


class ServiceRequest(Request):
    # Every body read (JSON, beacons) comes here. A client that declared a body and is still
    # sending it when the request's deadline passes is the client's delay: 408, not a 503
    # counted against a dependency (service/app.py).
    deadlines: ClassVar[Deadlines | None] = None  # the app's, in its subclass (`request_class`)

    @overload
    async def get_data(
        self, cache: bool, as_text: Literal[False], parse_form_data: bool
    ) -> bytes: ...

    @overload
    async def get_data(self, cache: bool, as_text: Literal[True], parse_form_data: bool) -> str: ...

    @overload
    async def get_data(
        self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False
    ) -> str | bytes: ...

    async def get_data(
        self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False
    ) -> str | bytes:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadlines = self.deadlines
        task = asyncio.current_task()
        with waiting_on("client"):
            data = await super().get_data(cache, as_text, parse_form_data)
            if deadlines is not None and task is not None and deadlines.expired(task):
                # The deadline passed as the body completed, and Quart's `asyncio.wait_for`
                # returned the body rather than the cancellation (Python 3.11 does): the request
                # is over all the same, or it would go on with no deadline at all.
                raise asyncio.CancelledError
        # And a body that arrived late leaves the service its whole REQUEST_TIMEOUT: the time the
        # client took to send it moves the deadline (else a client finishing its body just
        # before the deadline would make the service's own work time out, a 503). The time
        # includes a few turns of the event loop even for a body already there: under load a
        # deadline grows by the loop's lag.
        waited = loop.time() - started
        if waited > _BODY_WAIT_IGNORED and deadlines is not None and task is not None:
            deadlines.extend(task, waited)
        return data

    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        # Quart's own method, with the body read as bytes and parsed by orjson. `_cached_json` is
        # Quart's cache of the parsed body (quart < 0.23, pinned in pyproject.toml).
        if cache and self._cached_json[silent] is not Ellipsis:
            return self._cached_json[silent]
        if not (force or self.is_json):
            return None
        data = await self.get_data(cache=cache, as_text=False)
        try:
            result = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            result = None if silent else self.on_json_loading_failed(error)
        if cache:
            self._cached_json[silent] = result
        return result


def request_class(deadlines: Deadlines) -> type[ServiceRequest]:
    """The request class of an app whose requests keep `deadlines`."""
    return type("ServiceRequest", (ServiceRequest,), {"deadlines": deadlines})


class ServiceJSONProvider(DefaultJSONProvider):
    def __init__(self, app: Quart, default: Callable[[Any], Any] | None = None) -> None:
        super().__init__(app)
        if default is not None:
            self.default = default

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        # `dumps` has no final newline; `json_body` has, as `jsonify` writes it.
        if kwargs:  # indentation or other `json.dumps` options: the standard library's
            return super().dumps(obj, **kwargs)
        return json_body(obj, self.default)[:-1].decode()

    def response(self, *args: Any, **kwargs: Any) -> Any:
        if self._app.debug:
            return super().response(*args, **kwargs)
        body = json_body(self._prepare_response_obj(args, kwargs), self.default)
        return cast(Quart, self._app).response_class(body, mimetype=self.mimetype)


def json_body(obj: Any, default: Callable[[Any], Any] = DefaultJSONProvider.default) -> bytes:
    """`obj` as `jsonify` writes it (with its final newline); `default` renders what JSON has
    no type for."""
    try:
        return orjson.dumps(obj, default=default, option=_DUMP_OPTIONS) + b"\n"
    except TypeError:  # orjson.JSONEncodeError: let the standard library render or refuse it
        return json.dumps(obj, default=default, sort_keys=True).encode() + b"\n"
