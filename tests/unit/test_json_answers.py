"""`jsonify` renders through orjson (service/http/wrappers.py) and says what the provider
quart-schema installs (the standard library's encoder, pydantic's conversion) said before: same
data, sorted keys, dates in ISO 8601."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from pydantic import BaseModel
from quart import jsonify
from quart_schema.extension import create_json_provider

from service.app import create_app
from service.settings import Settings


class _Book(BaseModel):
    title: str
    pages: int


async def test_answers_say_what_the_standard_provider_said(settings: Settings) -> None:
    app = create_app(settings)
    standard = create_json_provider(app)
    cases: list[object] = [
        {"b": 1, "a": "é ü 漢字", "nested": {"z": [1, 2.5, None, True], "y": "x"}},
        {"when": datetime(2026, 11, 29, 20, 30, tzinfo=UTC)},
        {"huge": 2**70},  # beyond orjson's 64 bits: the standard library renders it
        [{"id": 3}, {"id": 1}],
        {"amount": Decimal("1.50")},
    ]
    async with app.app_context():
        for case in cases:
            body = await jsonify(case).get_data()
            assert body.endswith(b"\n")
            assert json.loads(body) == json.loads(standard.dumps(case)), case
            if isinstance(case, dict):
                assert list(json.loads(body)) == sorted(case)
        # A model, as quart-schema converts it
        body = await jsonify(_Book(title="Dune", pages=412)).get_data()
        assert json.loads(body) == {"title": "Dune", "pages": 412}
        assert json.loads(app.json.dumps({"b": 1}, indent=2)) == {"b": 1}  # options: stdlib
