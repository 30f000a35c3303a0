"""The tiers as a policy (tests/conftest.py): a unit test stays in its process, and the tools the
other tiers need are found where Debian puts them."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TierViolation
from tests.support import ROOT, server, tools


def test_a_unit_test_cannot_start_a_process(refused_calls: list[str]) -> None:
    with pytest.raises(TierViolation, match="move it to tests/integration or tests/system"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    assert refused_calls == [f"starts {[sys.executable, '-c', 'pass']!r}"]
    refused_calls.clear()  # seen: the test is not failed for it


async def test_a_unit_test_cannot_connect_even_to_loopback(refused_calls: list[str]) -> None:
    with pytest.raises(TierViolation):
        await asyncio.open_connection("127.0.0.1", 5432)
    with socket.socket() as sock, pytest.raises(TierViolation):
        sock.connect_ex(("127.0.0.1", 6379))
    assert len(refused_calls) == 2
    refused_calls.clear()


def test_tools_are_found_in_sbin_off_a_users_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Debian installs haproxy in /usr/sbin, which a normal user's PATH leaves out."""
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    (sbin / "haproxy").write_text("#!/bin/sh\n")
    (sbin / "haproxy").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(tools, "SBIN", (str(sbin),))
    assert tools.find("haproxy") == str(sbin / "haproxy")
    assert tools.find("chromium") is None


def test_every_test_module_sits_in_a_tier() -> None:
    stray = sorted(path.name for path in (ROOT / "tests").glob("test_*.py"))
    assert stray == [], f"move {stray} into tests/unit, tests/integration or tests/system"


def test_test_ports_are_divided_between_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert server._ports("20000-20099") == range(20050, 20100)
    assert server._ports("") is None
    for bad in ("20000", "x-y", "20100-20000", "80-1000", "20000-20015"):
        with pytest.raises(ValueError, match="TEST_PORTS"):
            server._ports(bad)
