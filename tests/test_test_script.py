"""scripts/test, the README's test command: on a machine without what the tests need, it stops at
once with one line naming what to install, instead of a suite that half-fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop")
def test_without_the_tools_it_names_them_and_stops(tmp_path: Path) -> None:
    # A PATH with a shell and nothing else: no promtool, amtool or chromium; run as nobody.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash",):
        (bin_dir / tool).symlink_to(shutil.which(tool) or tool)
    result = subprocess.run(
        [
            shutil.which("setpriv") or "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            str(bin_dir / "bash"),
            str(ROOT / "scripts" / "test"),
        ],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "scripts/test: install Debian's prometheus prometheus-alertmanager chromium "
        "(apt-get install prometheus prometheus-alertmanager chromium), or run this as root"
    ]
