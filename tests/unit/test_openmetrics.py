"""OpenMetrics with exemplars, by content negotiation: from a latency bucket or an error count
to the very request behind it. Checked with prometheus_client's strict OpenMetrics parser."""

from __future__ import annotations

import gzip

import pytest

from service.observability import exposition
from tests.support.client import Client
from tests.support.metrics_helpers import OPENMETRICS, parse, parse_openmetrics

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_a_latency_bucket_names_the_request_that_landed_in_it(client: Client) -> None:
    traced = {"X-Request-ID": "exemplar-request-0001", "traceparent": f"00-{TRACE}-{'1' * 16}-01"}
    assert (await client.get("/", headers=traced)).status_code == 200
    response = await client.get("/metrics", headers={"Accept": OPENMETRICS})
    assert response.content_type == exposition.OPENMETRICS_CONTENT_TYPE
    samples = parse_openmetrics(await response.get_data(as_text=True))
    buckets = [
        sample
        for (name, labels), sample in samples.items()
        if name == "http_request_duration_seconds_bucket"
        and ("endpoint", "/") in labels
        and sample.exemplar is not None
    ]
    (bucket,) = buckets  # one observation: one bucket holds its exemplar
    assert bucket.exemplar.labels == {"request_id": "exemplar-request-0001", "trace_id": TRACE}
    empty = [
        float(dict(labels)["le"])
        for (name, labels), sample in samples.items()
        if name == "http_request_duration_seconds_bucket"
        and ("endpoint", "/") in labels
        and sample.value == 0
    ]
    low = max(empty, default=0.0)  # the bucket below the exemplar's holds nothing
    assert low < bucket.exemplar.value <= float(bucket.labels["le"])
    assert bucket.exemplar.timestamp is not None
    # Counters keep their `_total` samples; the classic format is unchanged and has no exemplar.
    assert (
        "http_requests_total",
        frozenset({("method", "GET"), ("endpoint", "/"), ("status", "200")}),
    ) in samples
    classic = await (await client.get("/metrics")).get_data(as_text=True)
    assert " # {" not in classic and "# EOF" not in classic
    parse(classic)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_exemplar_labels_keep_to_128_characters(client: Client) -> None:
    long_id = "L" * 120  # accepted as a request id (up to 128), too long for an exemplar
    await client.get("/", headers={"X-Request-ID": long_id})
    await client.get("/api/auth/me", headers={
        "X-Request-ID": long_id, "traceparent": f"00-{TRACE}-{'2' * 16}-00"
    })  # fmt: skip
    text = await (await client.get("/metrics", headers={"Accept": OPENMETRICS})).get_data(
        as_text=True
    )
    examples = [
        s.exemplar.labels for s in parse_openmetrics(text).values() if s.exemplar is not None
    ]
    assert examples == [{"trace_id": TRACE}]  # "/" alone had nothing that fits


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
@pytest.mark.parametrize("accept", [OPENMETRICS, "*/*"])
async def test_gzip_when_asked(client: Client, accept: str) -> None:
    plain = await (await client.get("/metrics", headers={"Accept": accept})).get_data()
    response = await client.get(
        "/metrics", headers={"Accept": accept, "Accept-Encoding": "gzip, deflate"}
    )
    assert response.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in response.headers["Vary"]
    unpacked = gzip.decompress(await response.get_data())
    assert unpacked.splitlines()[:5] == plain.splitlines()[:5]


def test_workers_merge_exemplars_latest_first() -> None:
    def worker(request_id: str, at: float) -> exposition.Snapshot:
        family = exposition.Family("errors_total", "counter", "Errors.")
        family.samples[(("type", "x"),)] = 1.0
        family.exemplars[(("type", "x"),)] = ((("request_id", request_id),), 1.0, at)
        return {"errors_total": family}

    older, newer = worker("older-request", 100.0), worker("newer-request", 200.0)
    for parts in ([older, newer], [newer, older]):
        round_trip = [exposition.from_json(exposition.to_json(part)) for part in parts]
        merged = exposition.merge(round_trip)
        text = exposition.render_openmetrics(merged).decode()
        (sample,) = [s for s in parse_openmetrics(text).values() if s.name == "errors_total"]
        assert sample.value == 2
        assert sample.exemplar.labels == {"request_id": "newer-request"}


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_hostile_ids_cannot_break_either_format(client: Client) -> None:
    hostile = [
        {"X-Request-ID": 'abc"} 1 # {x="y'},
        {"X-Request-ID": "with space-0123456789"},
        {"X-Request-ID": "a" * 129},
        {"traceparent": '00-4bf92f3577b34da6a3ce929d0e0e4736-"00f067aa0ba902b7-01'},
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 # {}"},
    ]
    for headers in hostile:
        await client.get("/nope/%C3%A9%22%7D", headers=headers)
        await client.get("/", headers=headers)
    openmetrics = await (await client.get("/metrics", headers={"Accept": OPENMETRICS})).get_data(
        as_text=True
    )
    samples = parse_openmetrics(openmetrics)
    examples = [s.exemplar.labels for s in samples.values() if s.exemplar is not None]
    assert examples and all(set(labels) == {"request_id"} for labels in examples)
    assert all(len(labels["request_id"]) == 32 for labels in examples)  # replaced, not kept
    parse(await (await client.get("/metrics")).get_data(as_text=True))
