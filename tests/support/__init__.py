"""The test harness: real servers and their output, the monitoring stack, a browser, network
faults, and the exposition parser. It imports nothing from `tests.conftest`, so `bench/` can
start servers the same way."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
