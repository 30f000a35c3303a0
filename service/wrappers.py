"""The request class the app uses: Quart's, with a JSON body that cannot become a 500.

Quart decodes the body as UTF-8 before its own error handling and parses it with the standard
library, so invalid UTF-8 (`UnicodeDecodeError`) or a deeply nested document (`RecursionError`)
escaped as a 500 that any client could cause. Here the bytes go to orjson (the parser the beacons
and the logs already use): it checks UTF-8 itself (RFC 8259: JSON is UTF-8), stops at 1,024 levels
of nesting and refuses infinities, and every refusal is a `ValueError`, which Quart answers with
400 (`bad_request`).
"""

from __future__ import annotations

from typing import Any

import orjson
from quart.wrappers import Request


class ServiceRequest(Request):
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
