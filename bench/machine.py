"""What a result was measured on: written next to every figure."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# Set by `python -m bench NAME --save`: only then are the tracked result files rewritten.
SAVE = False
PACKAGES = ("quart", "hypercorn", "structlog", "aioprometheus", "orjson", "sqlalchemy")


def describe() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "packages": {name: _version(name) for name in PACKAGES},
        "command": "python -m bench " + shlex.join(sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "runs": len(samples),
    }


def spread(row: dict[str, float], digits: int) -> str:
    """A `summary` as "median (min–max)"."""
    return f"{row['median']:.{digits}f} ({row['min']:.{digits}f}–{row['max']:.{digits}f})"


def write(name: str, results: dict[str, Any], table: str) -> None:
    """Print the results; with --save also write bench/results/NAME.{json,md}."""
    machine = describe()
    header = (
        f"Measured {machine['date']} on {machine['cores']} cores, {machine['cpu']}, "
        f"Python {machine['python']}; command `{machine['command']}`.\n\n"
    )
    print(header + table)
    if not SAVE:
        print(f"(not saved: `python -m bench {name} --save` writes bench/results/{name}.*)")
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"machine": machine, "results": results}, indent=2) + "\n"
    )
    (RESULTS / f"{name}.md").write_text(header + table + "\n")


def _version(name: str) -> str:
    try:
        return version(name)
    except Exception:
        return "not installed"
