"""What the tests need from outside Python, found or reported once.

Locally, a test whose tool or service is missing is skipped, and the run ends with one line per
missing thing naming it and how to get it. In CI (`CI=true`) the same test fails instead: a CI run
that skipped the monitoring stack would pass without testing it.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

import pytest

MISSING_PREFIX = "missing: "
"""Starts the reason of every skip for a missing tool or service (the run's summary groups them)."""

# Debian installs daemons (haproxy) under sbin, which a normal user's PATH leaves out.
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


@dataclass(frozen=True)
class Tool:
    names: tuple[str, ...]
    package: str
    """Debian's package that provides it."""


TOOLS = {
    "prometheus": Tool(("prometheus",), "prometheus"),
    "promtool": Tool(("promtool",), "prometheus"),
    "alertmanager": Tool(("prometheus-alertmanager", "alertmanager"), "prometheus-alertmanager"),
    "amtool": Tool(("amtool",), "prometheus-alertmanager"),
    "chromium": Tool(("chromium", "chromium-browser"), "chromium"),
    "haproxy": Tool(("haproxy",), "haproxy"),
    "node": Tool(("node", "nodejs"), "nodejs"),
    "npm": Tool(("npm",), "npm"),
    "curl": Tool(("curl",), "curl"),
    "prometheus-blackbox-exporter": Tool(
        ("prometheus-blackbox-exporter", "blackbox_exporter"), "prometheus-blackbox-exporter"
    ),
    "victoria-metrics": Tool(("victoria-metrics",), "victoria-metrics"),
    "psql": Tool(("psql",), "postgresql-client"),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def find(tool: str) -> str | None:
    """The path of `tool`, looked up on PATH and in the sbin directories."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *SBIN])
    for name in TOOLS[tool].names:
        path = shutil.which(name, path=search)
        if path:
            return path
    return None


def require(tool: str) -> str:
    """The path of `tool`; without it, the calling test is skipped (locally) or fails (CI)."""
    path = find(tool)
    if path is None:
        package = TOOLS[tool].package
        missing(f"{tool} is not installed (apt-get install {package}, or run scripts/test as root)")
    return path  # type: ignore[return-value]


def require_services(*services: tuple[str, str, str]) -> None:
    """Skip (or in CI fail) unless something accepts connections at each (name, url, hint)'s
    host and port; the reason names every one that does not."""
    down = [
        f"{name} is not answering at {_address(url)} ({hint})"
        for name, url, hint in services
        if not _accepts(url)
    ]
    if down:
        missing("; ".join(down))


def missing(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so a missing tool fails the run", pytrace=False)
    pytest.skip(MISSING_PREFIX + reason)


@cache
def _accepts(url: str) -> bool:
    host, port = _address(url).rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3):
            return True
    except OSError:
        return False


def _address(url: str) -> str:
    parts = urlsplit(url)
    default = {"postgresql": 5432, "redis": 6379}.get(parts.scheme.split("+")[0], 0)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or default}"
