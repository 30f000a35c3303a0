"""scripts/test, the README's test command: on a machine without what the tests need, it stops at
once with one line naming what to install, instead of a suite that half-fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support import ROOT


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop")
def test_without_the_tools_it_names_them_and_stops() -> None:
    # The script in a directory anyone may read (a clone may sit in a private one), a PATH with
    # a shell and nothing else (no promtool, amtool or chromium), run as nobody.
    work = Path(tempfile.mkdtemp())
    try:
        for directory in (work, work / "scripts", work / "bin"):
            directory.mkdir(exist_ok=True)
            directory.chmod(0o755)
        script = work / "scripts" / "test"
        shutil.copy(ROOT / "scripts" / "test", script)
        script.chmod(0o755)
        (work / "bin" / "bash").symlink_to(shutil.which("bash") or "bash")
        result = subprocess.run(
            [
                shutil.which("setpriv") or "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                str(work / "bin" / "bash"),
                str(script),
            ],
            env={"PATH": str(work / "bin")},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        shutil.rmtree(work)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "scripts/test: install Debian's prometheus prometheus-alertmanager chromium nodejs npm "
        "haproxy (apt-get install prometheus prometheus-alertmanager chromium nodejs npm "
        "haproxy), or run this as root"
    ]
