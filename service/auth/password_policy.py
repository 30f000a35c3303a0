"""Which new passwords are accepted, in the spirit of NIST SP 800-63B.

A length floor (`PASSWORD_MIN_LENGTH`, 12 by default) and the 256-character ceiling, counted after
NFKC normalisation; no composition rules; never the username or a password containing it; never
one that is common or in a breach corpus. That last judgement is zxcvbn's (Dropbox's estimator,
maintained on PyPI): its ranked lists of leaked passwords, words and names, keyboard walks,
repeats, sequences and dates, scored as the guesses an attacker would need. Fewer than 10^8
guesses (zxcvbn score below 3, where "safely unguessable" begins) is refused.

zxcvbn is pure Python and holds the GIL. Its l33t matcher tries every combination of the
substitutions a password's symbols and digits allow, so its time grows with how many distinct
such characters there are: 2.4 s for 72 characters of 20 of them (docs/benchmarks.md). A
password with more than `_FULL_ANALYSIS_MAX_LEET` distinct ones is therefore judged on its first
`_CAPPED_WINDOW` characters, each further character counted as zxcvbn counts an unmatched one (ten
guesses): such a password is a jumble of symbols, not a word in disguise. A password that is one
piece repeated is judged by its piece, as zxcvbn itself would.
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from dataclasses import dataclass
from functools import cache
from typing import Literal

WeaknessReason = Literal["too_short", "contains_username", "guessable"]
MIN_GUESSES_LOG10 = 8.0  # zxcvbn's score 3
# zxcvbn refuses longer input; what lies beyond can only make a password harder to guess.
_WINDOW = 72
_FULL_ANALYSIS_MAX_LEET = 4
_CAPPED_WINDOW = 16
# A username this short is an ordinary syllable ("ann" in "planning"): only equality counts.
_MIN_USERNAME_TO_SEARCH = 4
# Words an attacker would try first against this service in particular.
_SERVICE_WORDS = ("scene", "packer", "scenepacker", "ebook")
_REPEATED = re.compile(r"(.+?)\1+", re.DOTALL)
# zxcvbn() writes the caller's words into a module-level dictionary: one call at a time.
_ZXCVBN_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class Weakness:
    reason: WeaknessReason
    message: str  # safe to show: never contains the password


def password_weakness(password: str, username: str, min_length: int) -> Weakness | None:
    """Why a new password is refused, or None if it is accepted. CPU-bound (tens of
    milliseconds at most): call it off the event loop."""
    password = unicodedata.normalize("NFKC", password)
    if len(password) < min_length:
        return Weakness("too_short", f"Use at least {min_length} characters.")
    lowered, name = password.lower(), username.lower()
    if lowered == name or (len(name) >= _MIN_USERNAME_TO_SEARCH and name in lowered):
        return Weakness("contains_username", "The password must not contain the username.")
    guesses_log10, warning = _estimate(password[:_WINDOW], [username, *_SERVICE_WORDS])
    if guesses_log10 < MIN_GUESSES_LOG10:
        hint = warning or "This password is too easy to guess."
        return Weakness("guessable", f"{hint} Try a longer phrase of unrelated words.")
    return None


def _estimate(text: str, words: list[str]) -> tuple[float, str]:
    """log10 of the guesses zxcvbn estimates for `text`, and its warning, in bounded time."""
    repeated = _REPEATED.fullmatch(text)
    if repeated is not None:
        piece = repeated.group(1)
        guesses_log10, warning = _estimate(piece, words)
        return guesses_log10 + math.log10(len(text) // len(piece)), warning
    leet = len(set(text) & _leet_characters())
    if leet <= _FULL_ANALYSIS_MAX_LEET or len(text) <= _CAPPED_WINDOW:
        return _zxcvbn(text, words)
    guesses_log10, warning = _zxcvbn(text[:_CAPPED_WINDOW], words)
    return guesses_log10 + len(text) - _CAPPED_WINDOW, warning


def _zxcvbn(text: str, words: list[str]) -> tuple[float, str]:
    from zxcvbn import zxcvbn  # see _leet_characters

    with _ZXCVBN_LOCK:
        result = zxcvbn(text, user_inputs=words)
    return float(result["guesses_log10"]), str(result["feedback"]["warning"])


@cache
def _leet_characters() -> frozenset[str]:
    # zxcvbn is imported on the first registration, not with the service: its word lists are
    # hundreds of thousands of objects that every full garbage collection of a worker would
    # walk (measured: +1.6 % instructions on every request, docs/benchmarks.md).
    from zxcvbn.matching import L33T_TABLE

    return frozenset(char for subs in L33T_TABLE.values() for char in subs)
