"""`python -m bench NAME`: run one benchmark and write bench/results/NAME.{json,md}."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "logging": "bench.logging_cost",
    "metrics": "bench.metrics_cost",
    "health": "bench.health_polling",
    "workers": "bench.workers",
    "compare": "bench.compare",
    "overhead": "bench.compare:run_overhead",
    "scrape": "bench.scrape_cost",
    "memory": "bench.memory",
    "instructions": "bench.instructions",
    "login": "bench.login_instructions",
    "login_timing": "bench.login_timing",
    "password_policy": "bench.password_policy",
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("name", choices=sorted(BENCHMARKS))
    args = parser.parse_args()
    module, _, function = BENCHMARKS[args.name].partition(":")
    getattr(importlib.import_module(module), function or "run")()


if __name__ == "__main__":
    main()
