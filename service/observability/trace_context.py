"""W3C Trace Context (https://www.w3.org/TR/trace-context/): the `traceparent` a caller sends.

A valid header makes the request part of the caller's trace: its `trace_id` and this server's own
`span_id` go on every log line of the request, and the response carries a `traceparent` naming
this span, so the caller (and, later, calls the service makes) can join them. A malformed header
is ignored, never an error: the request is served as if it had none. No tracing backend is
needed; nothing is recorded beyond the log lines.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

TRACEPARENT_HEADER = "traceparent"
# version "-" trace-id "-" parent-id "-" trace-flags, lower-case hex only. A future version may
# add fields after a further "-"; version 00 may not, and version ff is invalid.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str
    span_id: str  # this server's span: the parent of whatever the request calls next
    parent_id: str  # the caller's span
    flags: str

    def traceparent(self) -> str:
        """The header for the response and for calls made on behalf of this request."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def accept_traceparent(value: str | None) -> TraceContext | None:
    """The caller's trace joined by a new span of this server, or None when `value` is absent or
    not a valid traceparent."""
    if value is None or len(value) > 512:
        return None
    match = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, _new_span_id(), parent_id, flags)


def _new_span_id() -> str:
    while True:
        span_id = random.getrandbits(64).to_bytes(8).hex()
        if span_id != _ZERO_SPAN:
            return span_id
