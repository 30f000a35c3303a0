"""POST /api/rum: what browsers report becomes bounded metrics; hostile input never hurts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT
from tests.support.tools import require


def test_the_served_web_vitals_is_the_pinned_one() -> None:
    checked = subprocess.run(
        [sys.executable, ROOT / "scripts" / "vendor-web-vitals", "--check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    pin = json.loads((ROOT / "scripts" / "web-vitals.json").read_text())
    assert f"web-vitals {pin['version']} is served as pinned" in checked.stdout


def test_the_pin_check_fails_on_a_changed_file(tmp_path: Path) -> None:
    """The check on a copy of the repository's layout, its served file changed by one byte."""
    for part in ("scripts/vendor-web-vitals", "scripts/web-vitals.json", *_VENDORED):
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / part, tmp_path / part)
    served = tmp_path / _VENDORED[0]
    served.write_bytes(served.read_bytes().replace(b"webVitals", b"webVitalz", 1))
    (tmp_path / _VENDORED[1]).unlink()
    checked = subprocess.run(
        [sys.executable, tmp_path / "scripts" / "vendor-web-vitals", "--check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 1
    assert f"{_VENDORED[0]} is not web-vitals" in checked.stderr
    assert f"{_VENDORED[1]} is missing" in checked.stderr


def test_the_pin_is_what_the_registry_serves_for_that_version() -> None:
    """npm fetches the pinned version: its integrity and its file are the pinned ones."""
    require("npm")
    checked = subprocess.run(
        [sys.executable, ROOT / "scripts" / "vendor-web-vitals", "--check", "--remote"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr


_VENDORED = (
    "service/static/web-vitals.attribution.iife.js",
    "service/static/web-vitals.LICENSE.txt",
)
