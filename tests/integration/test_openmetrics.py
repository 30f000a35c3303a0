"""OpenMetrics with exemplars, by content negotiation: from a latency bucket or an error count
to the very request behind it. Checked with prometheus_client's strict OpenMetrics parser."""

from __future__ import annotations

from pydantic import SecretStr

from service.app import create_app
from service.settings import Settings
from tests.support.client import login
from tests.support.metrics_helpers import OPENMETRICS, parse_openmetrics
from tests.support.server import free_port


async def test_a_5xx_count_names_its_latest_request(settings: Settings) -> None:
    closed = f"postgresql+asyncpg://x@127.0.0.1:{free_port()}/x"
    app = create_app(settings.model_copy(update={"database_url": SecretStr(closed)}))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        first = await login(client)
        second = await login(client)
        assert (first.status_code, second.status_code) == (503, 503)
        text = await (await client.get("/metrics", headers={"Accept": OPENMETRICS})).get_data(
            as_text=True
        )
    labels = frozenset({("method", "POST"), ("endpoint", "/api/auth/login"), ("status", "503")})
    sample = parse_openmetrics(text)[("http_requests_total", labels)]
    assert sample.value == 2
    assert sample.exemplar.labels == {"request_id": second.headers["X-Request-ID"]}
