"""Which new passwords are accepted, in the spirit of NIST SP 800-63B.

A length floor (`PASSWORD_MIN_LENGTH`, 12 by default) and the 256-character ceiling; no
composition rules; never the username or a password containing it; never one that is common or
in a breach corpus. That last judgement is zxcvbn's (Dropbox's estimator, maintained on PyPI):
its ranked lists of leaked passwords, words and names, keyboard walks, repeats, sequences and
dates, scored as the guesses an attacker would need. Fewer than 10^8 guesses (zxcvbn score below
3, "safely unguessable" begins there) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from zxcvbn import zxcvbn

WeaknessReason = Literal["too_short", "contains_username", "guessable"]
MIN_SCORE = 3
# zxcvbn refuses longer input, and its matching grows with length; what lies beyond its window
# can only make a password harder to guess.
_ZXCVBN_WINDOW = 72
# Words an attacker would try first against this service in particular.
_SERVICE_WORDS = ("scene", "packer", "scenepacker", "ebook")


@dataclass(frozen=True, slots=True)
class Weakness:
    reason: WeaknessReason
    message: str  # safe to show: never contains the password


def password_weakness(password: str, username: str, min_length: int) -> Weakness | None:
    """Why a new password is refused, or None if it is accepted. CPU-bound (up to tens of
    milliseconds): call it off the event loop."""
    if len(password) < min_length:
        return Weakness("too_short", f"Use at least {min_length} characters.")
    if username.lower() in password.lower():
        return Weakness("contains_username", "The password must not contain the username.")
    estimate = zxcvbn(password[:_ZXCVBN_WINDOW], user_inputs=[username, *_SERVICE_WORDS])
    if estimate["score"] < MIN_SCORE:
        warning = estimate["feedback"]["warning"] or "This password is too easy to guess."
        return Weakness("guessable", f"{warning} Try a longer phrase of unrelated words.")
    return None
