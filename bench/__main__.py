"""`python -m bench NAME`: run one benchmark and write bench/results/NAME.{json,md}."""

from __future__ import annotations

import argparse
import importlib

from bench import machine

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
    "failure_paths": "bench.failure_paths",
    "exemplars": "bench.exemplars",
    "stop_resets": "bench.stop_resets",
    "signed_in": "bench.signed_in",
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("name", choices=sorted(BENCHMARKS))
    parser.add_argument(
        "--save",
        action="store_true",
        help="write the results to bench/results/NAME.{json,md} (tracked files); "
        "without it they are only printed",
    )
    args = parser.parse_args()
    machine.SAVE = args.save
    module, _, function = BENCHMARKS[args.name].partition(":")
    getattr(importlib.import_module(module), function or "run")()


if __name__ == "__main__":
    main()
