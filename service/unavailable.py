"""The error a lower layer raises when a backing service cannot do what was asked.

It knows nothing of HTTP: `service.errors` answers it with 503 `service_unavailable` and its
message (safe to show a client) or, without one, the standard message.
"""

from __future__ import annotations


class DependencyUnavailable(Exception):
    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self.message = message  # None: the standard 503 message
