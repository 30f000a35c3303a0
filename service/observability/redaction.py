"""What never reaches a log line: secrets, found by the name of their key at any depth, by their
shape in any text (password hashes, JWTs), and by their context (a cookie header, credentials
after an auth scheme or a secret-sounding name, a password in a URL).

`redact` is a processor of the logging pipeline (logging.py), run on every line; `mask_secrets`
and `redact_url` also serve texts a client chose before they are logged (browser errors, paths).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from structlog.types import EventDict, WrappedLogger

REDACTED = "[REDACTED]"
SENSITIVE_KEY_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "cookie",
    "api_key",
    "apikey",
)
# Every pattern below starts only where a token can start (a lookbehind) and scans a bounded or
# delimited stretch from there, so masking stays linear in the text's length: the texts are
# partly chosen by clients (paths, browser error messages).
# The password runs to the last `@` of the authority (the host after it holds none): a raw `@`
# or a space in a password must not leave its tail in the line.
_URL_CREDENTIALS = re.compile(
    r"(?<![A-Za-z0-9+.-])(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,31}://)(?P<user>[^:/@\s]*)"
    r":[^/]*?@(?=[^@/\s]*(?:[/?#]|\s(?![^/\s]*@)|$))"
)
# Secrets by their shape, wherever they sit in a text (an exception message, a traceback, a
# browser's error). First whole tokens: password hashes in PHC/crypt form and JWTs.
_SECRET_TOKENS = re.compile(
    r"(?<![\w$])\$(?:argon2(?:id|i|d)|scrypt|pbkdf2[\w-]{0,16}|2[abxy]?|5|6)\$"
    r"[^\s'\"<>)\]}]{8,512}"
    r"|(?<![\w-])eyJ[\w-]{6,}\.[\w-]{6,}\.[\w-]*"
)
# Then credentials by context: a cookie header's whole value, the credentials after an auth
# scheme, and the value after a secret-sounding name (`token=…`, `"password": "…"`,
# `Authorization: Token …`, `x-api-key: …`), quoted values to their closing quote.
_SECRET_VALUES = re.compile(
    r"(?P<cookie>(?<![A-Za-z0-9])(?:set-)?cookie[ \t]*:[ \t]*)[^\r\n]+"
    r"|(?P<scheme>(?<![\w-])(?:bearer|basic|digest)[ \t]+)[\w.~+/=-]{6,}"
    r"|(?P<name>(?<![A-Za-z0-9])[\w-]{0,32}?"
    r"(?:token|password|passwd|pwd|secret|api[_-]?key|authorization|cookie|session(?!s))"
    r"[\w-]{0,32}['\"]?[ \t]*(?:[=:]|%3d)[ \t]*(?:(?:bearer|basic|digest|token)[ \t]+)?)"
    r"(?:\"[^\"\r\n]{0,1024}\"|'[^'\r\n]{0,1024}'|[^\s&'\",;()\[\]{}=]+)",
    re.IGNORECASE,
)


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Replace values of sensitive keys at any depth; mask passwords in URLs and DSNs and
    secret-shaped values (`mask_secrets`) in every text, tracebacks included."""
    # Runs on every line, so the common case is kept to a set lookup per key and a type check per
    # value: keys already judged harmless are remembered, numbers and None pass on their exact
    # type (isinstance against Mapping, an ABC, is slow), and only containers are walked.
    for key, value in event_dict.items():
        if key not in _HARMLESS_KEYS and _is_sensitive_key(key) and not _plain_flag(value):
            event_dict[key] = REDACTED
        elif type(value) is str:
            # An identifier (most event names) cannot hold a URL or a secret-shaped value.
            if not value.isidentifier():
                event_dict[key] = mask_secrets(value)
        elif type(value) not in _PLAIN_TYPES:
            event_dict[key] = _redact_value(None, value)
    return event_dict


_PLAIN_TYPES = frozenset({int, float, bool, type(None)})
_HARMLESS_KEYS: set[str] = set()
_MAX_HARMLESS_KEYS = 4096


def redact_url(text: str) -> str:
    if "://" not in text:
        return text
    return _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)


def mask_secrets(text: str) -> str:
    """`text` with URL passwords and secret-shaped values (hashes, tokens, credentials) masked."""
    # Every secret shape needs one of these: most short values (routes, names) are passed over
    # without running the expressions.
    if "$" in text or ":" in text or "=" in text or " " in text or "\t" in text or "eyJ" in text:
        text = _SECRET_TOKENS.sub(REDACTED, redact_url(text))
        return _SECRET_VALUES.sub(_mask, text)
    return text


def _mask(match: re.Match[str]) -> str:
    prefix = match.group("cookie") or match.group("scheme") or match.group("name") or ""
    return prefix + REDACTED


def _redact_value(key: Any, value: Any) -> Any:
    if isinstance(key, str) and _is_sensitive(key) and not _plain_flag(value):
        return REDACTED
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(None, item) for item in value]
    return value


def _plain_flag(value: Any) -> bool:
    """A yes, a no or nothing holds no secret, whatever its name (`SESSION_COOKIE_SECURE: false`,
    `METRICS_TOKEN: null` say how the service runs: the start-up line shows them)."""
    return value is None or type(value) is bool


def _is_sensitive_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    if _is_sensitive(key):
        return True
    if len(_HARMLESS_KEYS) < _MAX_HARMLESS_KEYS:
        _HARMLESS_KEYS.add(key)
    return False


@lru_cache(maxsize=4096)
def _is_sensitive(key: str) -> bool:
    lowered = key.lower().replace("-", "_")
    return any(part in lowered for part in SENSITIVE_KEY_PARTS)
