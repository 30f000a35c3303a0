"""OpenMetrics with exemplars, by content negotiation: from a latency bucket or an error count
to the very request behind it. Checked with prometheus_client's strict OpenMetrics parser."""

from __future__ import annotations

from typing import Any

from prometheus_client.openmetrics.parser import text_string_to_metric_families
from pydantic import SecretStr

from service.app import create_app
from service.settings import Settings
from tests.support.client import login
from tests.support.server import free_port

OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def _openmetrics(text: str) -> dict[str, Any]:
    """Every sample by name and labels (the parser refuses anything OpenMetrics forbids)."""
    assert text.endswith("# EOF\n")
    return {
        (sample.name, frozenset(sample.labels.items())): sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


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
    sample = _openmetrics(text)[("http_requests_total", labels)]
    assert sample.value == 2
    assert sample.exemplar.labels == {"request_id": second.headers["X-Request-ID"]}
