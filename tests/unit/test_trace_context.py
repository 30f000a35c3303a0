"""W3C Trace Context: a valid `traceparent` joins the request to the caller's trace (logs and
the response say so); anything else is ignored, never an error."""

from __future__ import annotations

import pytest
import structlog

from service.observability.context import add_request_context
from service.observability.trace_context import accept_traceparent
from tests.support.client import Client

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"


@pytest.mark.parametrize(
    "header",
    [
        VALID,
        f"00-{TRACE}-{PARENT}-00",
        f" 00-{TRACE}-{PARENT}-01\t",  # optional whitespace around the value
        f"01-{TRACE}-{PARENT}-01-what-a-future-version-adds",  # a later version: its start
    ],
)
def test_valid_traceparents_are_joined(header: str) -> None:
    trace = accept_traceparent(header)
    assert trace is not None
    assert (trace.trace_id, trace.parent_id) == (TRACE, PARENT)
    assert len(trace.span_id) == 16 and trace.span_id not in (PARENT, "0" * 16)
    assert trace.traceparent() == f"00-{TRACE}-{trace.span_id}-{header.strip()[53:55]}"


@pytest.mark.parametrize(
    "header",
    [
        "",
        VALID.upper(),  # hex must be lower-case
        f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE[:-1]}-{PARENT}-01",
        f"00-{TRACE}-{PARENT[:-1]}-01",
        f"00-{TRACE}-{PARENT}-1",
        f"00-{TRACE}-{PARENT}",
        f"00-{TRACE.replace('4', 'g')}-{PARENT}-01",
        f"00_{TRACE}_{PARENT}_01",
        VALID + "x" * 600,
    ],
)
def test_malformed_traceparents_are_ignored(header: str) -> None:
    assert accept_traceparent(header) is None


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_a_traced_request_logs_and_answers_its_trace(client: Client) -> None:
    with structlog.testing.capture_logs(processors=[add_request_context]) as logs:
        response = await client.get("/", headers={"traceparent": VALID})
    assert response.status_code == 200
    version, trace_id, span_id, flags = response.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "01")
    assert span_id != PARENT
    (line,) = [line for line in logs if line["event"] == "request_finished"]
    assert (line["trace_id"], line["span_id"]) == (TRACE, span_id)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", VALID.upper())],
        [("traceparent", "garbage")],
        [("traceparent", VALID), ("traceparent", f"00-{TRACE}-{'1' * 16}-01")],  # ambiguous
    ],
)
async def test_a_malformed_traceparent_changes_nothing(
    client: Client, headers: list[tuple[str, str]]
) -> None:
    with structlog.testing.capture_logs(processors=[add_request_context]) as logs:
        response = await client.get("/", headers=headers)
    assert response.status_code == 200
    assert "traceparent" not in response.headers
    (line,) = [line for line in logs if line["event"] == "request_finished"]
    assert "trace_id" not in line and "span_id" not in line
