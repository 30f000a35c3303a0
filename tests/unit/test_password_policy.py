"""The password policy on its own: what it refuses, and that its cost stays bounded."""

from __future__ import annotations

import pytest

from service.auth import password_policy
from service.auth.password_policy import password_weakness


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("passwordpasswordpassword", "guessable"),  # a repeated piece is judged by the piece
        ("12345678901234567890", "guessable"),
        ("1234567!1234567!1234567!", "guessable"),  # repeated, and symbol-heavy
        ("p@$$w0rd1234", "guessable"),  # a common password in disguise
        ("!@#$%^&*()_+!@#$", "guessable"),  # a keyboard walk
        ("ｐａｓｓｗｏｒｄ１２３４", "guessable"),  # full-width: NFKC makes it "password1234"
        ("Planning-Evenings-Quietly", None),  # "ann" is too short a username to search for
        ("ann", "too_short"),
        ("correct horse battery", None),
        ("a1!b2@c3#d4$e5%f6^g7&h8*", None),
    ],
)
def test_policy_verdicts(password: str, reason: str | None) -> None:
    weakness = password_weakness(password, "ann", 12)
    assert (weakness.reason if weakness else None) == reason


def test_symbol_heavy_passwords_are_judged_on_a_bounded_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """zxcvbn's l33t matcher is exponential in distinct symbols (3 s for this password in
    full, docs/benchmarks.md): such a password is judged on its first characters only."""
    seen: list[str] = []
    real = password_policy._zxcvbn

    def recording(text: str, words: list[str]) -> tuple[float, str]:
        seen.append(text)
        return real(text, words)

    monkeypatch.setattr(password_policy, "_zxcvbn", recording)
    adversarial = ("4@8({[<3610!|1+7$5%2" * 4)[:72] + "zq"
    assert password_weakness(adversarial, "alice", 12) is None  # long and random: accepted
    assert seen and max(len(text) for text in seen) <= 16
    seen.clear()
    assert password_weakness("p@$$w0rd-Lantern-Meridian", "alice", 12) is None
    assert seen == ["p@$$w0rd-Lantern-Meridian"]  # few symbols: the whole password
