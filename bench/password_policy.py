"""The password policy's worst case: zxcvbn alone against the policy's bounded use of it.

zxcvbn's l33t matcher tries every combination of substitutions that a password's digits and
symbols allow. Passwords of 72 characters drawn from k of those characters (k = 2 … 20; random
draws, the k characters repeated, and mixed with six letters; a fixed seed) are timed through
`zxcvbn` directly and through `service.auth.password_policy.password_weakness`, in this process.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from zxcvbn import zxcvbn
from zxcvbn.matching import L33T_TABLE

from bench.machine import write
from service.auth.password_policy import password_weakness

LENGTH = 72
TRIALS = 4
SEED = 5


def run() -> None:
    symbols = sorted({char for subs in L33T_TABLE.values() for char in subs})
    generator = random.Random(SEED)
    rows: dict[str, Any] = {}
    for k in (2, 4, 6, 8, 10, 12, 16, 20):
        passwords = []
        for _ in range(TRIALS):
            chosen = generator.sample(symbols, k)
            passwords.append("".join(generator.choice(chosen) for _ in range(LENGTH)))
            passwords.append(("".join(chosen) * LENGTH)[:LENGTH])
            passwords.append("".join(generator.choice([*chosen, *"abcdef"]) for _ in range(LENGTH)))
        raw = [_ms(lambda p=p: zxcvbn(p)) for p in passwords]
        bounded = [_ms(lambda p=p: password_weakness(p, "someone", 12)) for p in passwords]
        rows[str(k)] = {
            "zxcvbn_ms": {"median": statistics.median(raw), "max": max(raw)},
            "policy_ms": {"median": statistics.median(bounded), "max": max(bounded)},
            "passwords": len(passwords),
        }
        print(k, rows[str(k)], flush=True)
    write("password_policy", rows, _table(rows))


def _ms(call: Any) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def _table(rows: dict[str, Any]) -> str:
    lines = [
        f"| distinct digits/symbols in {LENGTH} characters | passwords | zxcvbn median ms "
        "| zxcvbn max ms | policy median ms | policy max ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for k, row in rows.items():
        lines.append(
            f"| {k} | {row['passwords']} | {row['zxcvbn_ms']['median']:.0f} "
            f"| {row['zxcvbn_ms']['max']:.0f} | {row['policy_ms']['median']:.0f} "
            f"| {row['policy_ms']['max']:.0f} |"
        )
    return "\n".join(lines) + "\n"
