"""scripts/test, the README's test command, run by a user who is not root on a machine without
what the tests need: it names each missing thing in one line and goes on (pytest then skips
what needs it), instead of stopping or running a suite that half-fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT

# What scripts/test looks for, and the Debian package it names for each.
TOOLS = {
    "promtool": "prometheus",
    "amtool": "prometheus-alertmanager",
    "chromium": "chromium",
    "npm": "nodejs npm",
    "haproxy": "haproxy",
    "curl": "curl",
    "prometheus-blackbox-exporter": "prometheus-blackbox-exporter",
    "victoria-metrics": "victoria-metrics",
    "psql": "postgresql-client",
}
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


@pytest.fixture
def bare_checkout() -> Iterator[Path]:
    """The script in a directory anyone may read (a clone may sit in a private one), with a bin/
    of a shell and the few commands it uses, and no python3: it stops where it would install."""
    work = Path(tempfile.mkdtemp())
    try:
        for directory in (work, work / "scripts", work / "bin"):
            directory.mkdir(exist_ok=True)
            directory.chmod(0o755)
        script = work / "scripts" / "test"
        shutil.copy(ROOT / "scripts" / "test", script)
        for name in ("pyproject.toml", "constraints.txt"):
            shutil.copy(ROOT / name, work / name)
        script.chmod(0o755)
        for command in ("bash", "seq", "sleep", "sha256sum", "cut"):
            (work / "bin" / command).symlink_to(shutil.which(command) or command)
        yield work
    finally:
        shutil.rmtree(work)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop")
@pytest.mark.parametrize("marker", ["system", "unit"])
def test_as_a_user_without_the_tools_it_names_them_and_goes_on(
    bare_checkout: Path, marker: str
) -> None:
    result = subprocess.run(
        [
            shutil.which("setpriv") or "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            str(bare_checkout / "bin" / "bash"),
            str(bare_checkout / "scripts" / "test"),
            "-m",
            marker,
        ],
        # Ports where nothing listens stand for PostgreSQL and Redis that are down.
        env={
            "PATH": str(bare_checkout / "bin"),
            "TEST_POSTGRES_URL": "postgresql://postgres@127.0.0.1:1/postgres",
            "TEST_REDIS_URL": "redis://127.0.0.1:1/0",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Found in sbin although not on this PATH, as a user's PATH leaves sbin out.
    packages = " ".join(
        package
        for tool, package in TOOLS.items()
        if not any(Path(directory, tool).exists() for directory in SBIN)
    )
    lines = result.stderr.splitlines()
    if marker == "unit":  # needs nothing outside Python
        assert not [line for line in lines if line.startswith("scripts/test:")], lines
    else:
        assert lines[:3] == [
            f"scripts/test: missing Debian's {packages} (apt-get install {packages}): "
            "the system tests that need them are skipped",
            "scripts/test: PostgreSQL is not answering on 127.0.0.1:1 (trust auth for user "
            "postgres; or set TEST_POSTGRES_URL): its tests are skipped",
            "scripts/test: Redis is not answering on 127.0.0.1:1 (or set TEST_REDIS_URL): its "
            "tests are skipped",
        ]
    # It went on, to making the virtual environment, where this bare PATH has no python3.
    assert "python3: command not found" in lines[-1]
