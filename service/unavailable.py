"""The error a lower layer raises when a backing service cannot do what was asked.

It knows nothing of HTTP: `service.errors` answers it with 503 `service_unavailable` and its
message, which must be safe to show a client.
"""

from __future__ import annotations


class DependencyUnavailable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
