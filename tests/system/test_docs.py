"""The documentation site builds, and what README and the getting-started page tell a newcomer to
type works as they say, against a live server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT
from tests.support.server import running_server
from tests.support.tools import require

TOUR_URL = "http://127.0.0.1:8000"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link, a missing page or a failing generated part fails."""
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    configuration = (tmp_path / "configuration" / "index.html").read_text()
    assert "DB_POOL_SIZE" in configuration and "generated:" not in configuration
    assert "POST /api/auth/login" in (tmp_path / "api" / "index.html").read_text()


def _tour(text: str) -> list[str]:
    """The commands of the page's five-request tour."""
    section = text.split("## A five-request tour", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "no tour"
    return block.group(1).strip().splitlines()


def test_the_curl_tour_works_word_for_word(tmp_path: Path) -> None:
    require("curl")
    commands = _tour((ROOT / "README.md").read_text())
    assert commands == _tour((ROOT / "docs" / "getting-started.md").read_text())
    assert len(commands) == 5
    workdir = tmp_path / "newcomer"
    workdir.mkdir()
    # The checks get time to spare on a busy machine; the tour is about what a newcomer types.
    with running_server(tmp_path, {"HEALTH_CHECK_TIMEOUT": "10"}) as server:
        outputs = [
            subprocess.run(
                ["bash", "-c", command.replace(TOUR_URL, server.base_url)],
                cwd=workdir,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
            for command in commands
        ]
    registered, signed_in, me, health = (json.loads(out) for out in outputs[:4])
    assert registered["username"] == "reader"
    assert signed_in["username"] == "reader"
    assert (me["id"], me["username"]) == (registered["id"], "reader")
    # Disk and memory only warn, and depend on the machine: the critical checks are the tour's.
    assert health["status"] == "healthy"
    assert (
        health["checks"]["database"]["status"] == health["checks"]["cache"]["status"] == "healthy"
    )
    counted = outputs[4].splitlines()
    assert counted and all(line.startswith("http_requests_total{") for line in counted)
    assert any('endpoint="/api/auth/me"' in line and 'status="200"' in line for line in counted)
