"""The single logging pipeline: structlog's processor chain, shared with stdlib logging.

`configure_logging` builds one chain. structlog events are rendered by it directly; records from
stdlib loggers (SQLAlchemy, alembic, asyncio, Quart, hypercorn) reach the same chain through
`ProcessorFormatter`, so production emits nothing but one JSON object per line.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, TextIO

import orjson
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from service.observability.context import add_request_context
from service.settings import Environment, Settings, SettingsError

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
HYPERCORN_LOGGERS = ("hypercorn.error", "hypercorn.access")
# Every pattern below starts only where a token can start (a lookbehind) and scans a bounded or
# delimited stretch from there, so masking stays linear in the text's length: the texts are
# partly chosen by clients (paths, browser error messages).
_URL_CREDENTIALS = re.compile(
    r"(?<![A-Za-z0-9+.-])(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,31}://)(?P<user>[^:/@\s]*):[^@\s/]*@"
)
# C0 and C1 controls and the Unicode line and paragraph separators: each ends a line for some
# reader (Python's str.splitlines, JavaScript, many log shippers).
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
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


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Build the processor chain for structlog and route every stdlib logger through it."""
    stream = stream if stream is not None else sys.stdout
    level = logging.getLevelNamesMapping()[settings.effective_log_level]

    binary = hasattr(stream, "buffer")
    if settings.is_production:
        # Tracebacks become text before redaction, so a DSN in an error message is masked too.
        prepare: list[Processor] = [render_exception_and_stack, redact]
        text_renderer: list[Processor] = [structlog.processors.JSONRenderer(serializer=_dumps_text)]
        # Straight to bytes where the stream allows it: orjson's output needs no decoding.
        native_renderer: list[Processor] = [
            structlog.processors.JSONRenderer(serializer=_dumps if binary else _dumps_text)
        ]
        factory: Any = _NamedLoggerFactory(stream, binary=binary)
    else:
        # Tracebacks become text before redaction here too (the console renderer prints that
        # text as it is), so a secret in an exception message is masked in development as well.
        prepare = [render_exception_and_stack, redact]
        colors = stream.isatty()
        text_renderer = [escape_control_characters, structlog.dev.ConsoleRenderer(colors=colors)]
        native_renderer = text_renderer
        factory = _NamedLoggerFactory(stream, binary=False)

    structlog.reset_defaults()
    structlog.configure(
        # The request context and logger, level and timestamp are added after `redact`: they are
        # the pipeline's own values, made safe where they are made (the middleware masks
        # credentials in the path), so redaction only walks what the caller logged.
        processors=[*prepare, add_request_context, add_log_fields, *native_renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        # Cached loggers are fastest but ignore later reconfiguration (tests reconfigure).
        cache_logger_on_first_use=settings.is_production,
    )

    handler = logging.StreamHandler(stream)
    # Loggers that set their own level (hypercorn's) still obey LOG_LEVEL here.
    handler.setLevel(level)
    handler.addFilter(_allow_listed_access_fields)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # The logger's name comes from the record, which only the pre-chain sees.
            foreign_pre_chain=[_add_access_fields, add_request_context, add_log_fields],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *prepare,
                *text_renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in HYPERCORN_LOGGERS:
        server_logger = logging.getLogger(name)
        server_logger.handlers = []
        server_logger.propagate = True
    # SQL statements carry user data; only problems are worth a line.
    logging.getLogger("sqlalchemy").setLevel(max(level, logging.WARNING))
    # One line per SQLite call is noise even in development.
    logging.getLogger("aiosqlite").setLevel(max(level, logging.INFO))
    logging.getLogger("alembic.runtime.plugins").setLevel(max(level, logging.WARNING))
    # A record that fails to format must vanish, not be dumped with its arguments to stderr.
    logging.raiseExceptions = False
    logging.captureWarnings(True)


def log_bad_configuration(error: SettingsError) -> None:
    """A bad setting, on stderr through the same pipeline as every other line (JSON in
    production, read from ENVIRONMENT alone since the settings as a whole are invalid)."""
    production = os.environ.get("ENVIRONMENT", "").strip().lower() == Environment.PRODUCTION
    environment = Environment.PRODUCTION if production else Environment.DEVELOPMENT
    configure_logging(Settings.model_construct(environment=environment), stream=sys.stderr)
    structlog.get_logger("service.settings").error(
        "configuration_invalid",
        problems=[{"setting": name, "problem": problem} for name, problem in error.problems],
    )


def render_exception_and_stack(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """structlog's `format_exc_info` and `StackInfoRenderer`, called only for the lines that carry
    `exc_info` or `stack_info`: two processor calls fewer on every other line."""
    if "exc_info" in event_dict:
        event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
    if "stack_info" in event_dict:
        event_dict = _render_stack(logger, method_name, event_dict)
    return event_dict


_render_stack = structlog.processors.StackInfoRenderer()


def add_log_fields(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """`logger`, `level` and `timestamp` (ISO-8601 UTC with microseconds,
    `2026-11-27T15:51:51.123456Z`).

    What structlog's `add_logger_name`, `add_log_level` and `TimeStamper(fmt="iso", utc=True)`
    write, in one call instead of three on every line, with the date and time formatted once a
    second.
    """
    global _stamped_second
    record = event_dict.get("_record")
    event_dict["logger"] = logger.name if record is None else record.name
    event_dict["level"] = _LEVEL_NAMES.get(method_name, method_name)
    second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    cached, prefix = _stamped_second
    if second != cached:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamped_second = (second, prefix)
    event_dict["timestamp"] = f"{prefix}.{nanoseconds // 1000:06d}Z"
    return event_dict


# structlog's own mapping of method names to level names (`add_log_level`).
_LEVEL_NAMES = {"warn": "warning", "exception": "error"}
_stamped_second: tuple[int, str] = (-1, "")


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


def escape_control_characters(
    _logger: WrappedLogger, _method: str, event_dict: EventDict
) -> EventDict:
    """Console output: a value cannot start a new, forged line."""
    for key, value in event_dict.items():
        if isinstance(value, str) and _CONTROL_CHARACTERS.search(value) and key != "exception":
            event_dict[key] = value.encode("unicode_escape").decode("ascii")
    return event_dict


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


# hypercorn's access record carries every request header and the whole process environment as its
# arguments; only these fields, by name, leave the record.
_ACCESS_ATOMS = {
    "m": "method",
    "U": "path",
    "s": "status",
    "H": "protocol",
    "h": "peer",
    "D": "duration_us",
    "{x-request-id}o": "request_id",
    "{content-length}o": "response_bytes",
}


_NUMERIC_ACCESS_FIELDS = {"status", "duration_us", "response_bytes"}


def _allow_listed_access_fields(record: logging.LogRecord) -> bool:
    if record.name == "hypercorn.access" and isinstance(record.args, Mapping):
        atoms: Mapping[str, Any] = record.args
        fields: dict[str, Any] = {}
        for atom, name in _ACCESS_ATOMS.items():
            value = atoms.get(atom)
            if value is None or value == "-":
                continue
            if name in _NUMERIC_ACCESS_FIELDS:
                try:
                    value = int(value)
                except (TypeError, ValueError):
                    continue
            fields[name] = value
        record.msg, record.args = "http_access", None
        record.access_fields = fields
    return True


def _add_access_fields(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    fields = getattr(record, "access_fields", None)
    if fields:
        event_dict.update(fields)
    return event_dict


def _dumps(obj: Any, **kwargs: Any) -> bytes:
    """One JSON line: orjson writes U+0085, U+2028 and U+2029 as they are (valid JSON), which
    line-oriented readers split on; they are escaped here."""
    line = orjson.dumps(obj, **kwargs)
    if b"\xc2\x85" in line or b"\xe2\x80\xa8" in line or b"\xe2\x80\xa9" in line:
        for raw, escaped in _LINE_BREAKS:
            line = line.replace(raw, escaped)
    return line


_LINE_BREAKS = (
    (b"\xc2\x85", b"\\u0085"),
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
)  # in UTF-8 each sequence is that character alone: nothing else is touched


def _dumps_text(obj: Any, **kwargs: Any) -> str:
    return _dumps(obj, **kwargs).decode()


class _NamedLogger(structlog.BytesLogger):
    def __init__(self, name: str, stream: TextIO) -> None:
        super().__init__(stream.buffer)
        self.name = name


class _NamedTextLogger(structlog.PrintLogger):
    def __init__(self, name: str, stream: TextIO) -> None:
        super().__init__(stream)
        self.name = name


class _NamedLoggerFactory:
    """structlog's own fast loggers, with a `name` for `add_logger_name`."""

    def __init__(self, stream: TextIO, *, binary: bool) -> None:
        self._stream = stream
        self._binary = binary

    def __call__(self, *args: Any) -> WrappedLogger:
        name = args[0] if args and isinstance(args[0], str) else "service"
        if self._binary:
            return _NamedLogger(name, self._stream)
        return _NamedTextLogger(name, self._stream)
