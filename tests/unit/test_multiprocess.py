"""Several real hypercorn workers: every scrape reports the exact total of all of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.observability import exposition
from service.observability.metrics import Metrics
from service.settings import load_settings
from tests.support.metrics_helpers import parse, value


def test_snapshots_round_trip_and_merge(tmp_path: Path) -> None:
    first, second = (Metrics(load_settings(data_dir=tmp_path)) for _ in range(2))
    for metrics, count in ((first, 3), (second, 4)):
        for _ in range(count):
            metrics.request_started("GET")
            metrics.request_finished("GET", "/", 200, 0.3)
        metrics.active_users.set({}, count)
    parts = [exposition.from_json(exposition.to_json(m.snapshot())) for m in (first, second)]
    merged = parse(exposition.render(exposition.merge(parts)).decode())
    assert value(merged, "http_requests_total", method="GET", endpoint="/", status="200") == 7
    labels = {"method": "GET", "endpoint": "/", "le": "0.5"}
    assert value(merged, "http_request_duration_seconds_bucket", **labels) == 7
    assert value(merged, "active_users") == 4  # max, not sum
    with pytest.raises(ValueError):
        exposition.from_json(b'{"x": {"kind": "counter"}}')
