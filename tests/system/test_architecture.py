"""The shape of the code, as policy, where it takes a process to see: importing the service does
no work."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT


def test_importing_the_service_does_no_work() -> None:
    """`import service` defines things and opens nothing: no password hash, no thread, no
    connection (engines, pools and clients are made when an app starts serving)."""
    probe = (
        "import threading, psutil\n"
        "import service, service.app, sys\n"
        "from service.auth.passwords import _dummy_hash\n"
        "print(threading.active_count(), len(psutil.Process().net_connections()),"
        " _dummy_hash.cache_info().currsize, 'zxcvbn' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "0", "0", "False"]
