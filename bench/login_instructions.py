"""Instructions per login, the service against the original design, counted by callgrind.

wrk's login ratio at one connection moves by several percent between runs, while the argon2 hash
(one library, argon2-cffi's defaults, on both sides) is almost all of the work. This counts what
each design executes per successful login, in-process: the service through its ASGI app and
Quart's test client, the Flask design through Flask's test client, both on the bench's PostgreSQL
database and Redis (as `python -m bench compare`). Each design is counted twice: as it is, and with
the password check replaced by a constant `True`, which leaves everything but the hash.

Each count is taken with FEW and MANY logins; the difference divided by the extra logins is the
cost of one, start-up excluded. Kernel time and time spent waiting on PostgreSQL and Redis are not
instructions of the process and are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import types
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.compare import PASSWORD, _prepare_database, _service_env
from bench.instructions import instructions_in
from bench.machine import write

DESIGNS = ("service", "flask")
# An argon2 check is about a billion instructions: a few logins are enough, and slow under valgrind.
COUNTS = {"with the hash": (1, 4), "without the hash": (5, 25)}
_BODY = {"username": "bench", "password": PASSWORD}


def run() -> None:
    env = {**os.environ, **_service_env(_prepare_database()), "PYTHONHASHSEED": "0"}
    jobs = [
        (design, variant, count)
        for variant, counts in COUNTS.items()
        for design in DESIGNS
        for count in counts
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = dict(zip(jobs, pool.map(lambda job: _count(env, *job), jobs), strict=True))
    per_login = {
        variant: {
            design: (counts[design, variant, many] - counts[design, variant, few]) / (many - few)
            for design in DESIGNS
        }
        for variant, (few, many) in COUNTS.items()
    }
    lines = [
        "Instructions per successful login, in-process, under callgrind:",
        "",
        "| | service | flask | service − flask | service vs flask |",
        "| --- | --- | --- | --- | --- |",
    ]
    for variant, row in per_login.items():
        service, flask = row["service"], row["flask"]
        lines.append(
            f"| {variant} | {service:,.0f} | {flask:,.0f} | {service - flask:+,.0f} "
            f"| {(service / flask - 1) * 100:+.1f} % |"
        )
    write("login", {"instructions_per_login": per_login, "counts": COUNTS}, "\n".join(lines) + "\n")


def _count(env: dict[str, str], design: str, variant: str, logins: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            sys.executable, "-m", "bench.login_instructions", "--serve", design, str(logins),
        ]  # fmt: skip
        if variant == "without the hash":
            command.append("--without-hash")
        output = subprocess.run(
            command, env={**env, "DATA_DIR": tmp}, capture_output=True, text=True, check=True
        ).stderr
    return instructions_in(output)


def _serve_service(logins: int, without_hash: bool) -> None:
    import service.auth.passwords
    from service.app import create_app

    if without_hash:
        service.auth.passwords._verify = lambda _hash, _password: True  # type: ignore[assignment]

    async def serve() -> None:
        app = create_app()
        async with app.test_app() as test_app:
            client = test_app.test_client()
            for _ in range(logins):
                response = await client.post("/api/auth/login", json=_BODY)
                if response.status_code != 200:
                    raise SystemExit(f"login answered {response.status_code}")

    asyncio.run(serve())


def _serve_flask(logins: int, without_hash: bool) -> None:
    from bench.reference_flask import app as reference

    if without_hash:
        reference.hasher = types.SimpleNamespace(verify=lambda _hash, _password: True)  # type: ignore[assignment]
    client = reference.app.test_client()
    for _ in range(logins):
        response = client.post("/api/auth/login", json=_BODY)
        if response.status_code != 200:
            raise SystemExit(f"login answered {response.status_code}")


def _main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", nargs=2, metavar=("DESIGN", "LOGINS"), required=True)
    parser.add_argument("--without-hash", action="store_true")
    args = parser.parse_args(argv)
    design, logins = args.serve[0], int(args.serve[1])
    serve = _serve_service if design == "service" else _serve_flask
    serve(logins, args.without_hash)


if __name__ == "__main__":
    _main()
