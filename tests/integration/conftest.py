"""Integration tests run on PostgreSQL and Redis only: `backend` has no embedded value here."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value
