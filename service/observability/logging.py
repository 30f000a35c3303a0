"""The single logging pipeline: structlog's processor chain, shared with stdlib logging.

`configure_logging` builds one chain. structlog events are rendered by it directly; records from
stdlib loggers (SQLAlchemy, alembic, asyncio, Quart, hypercorn) reach the same chain through
`ProcessorFormatter`, so production emits nothing but one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import orjson
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from service.observability.context import add_request_context
from service.observability.redaction import redact
from service.settings import Environment, Settings, SettingsError

HYPERCORN_LOGGERS = ("hypercorn.error", "hypercorn.access")
# C0 and C1 controls and the Unicode line and paragraph separators: each ends a line for some
# reader (Python's str.splitlines, JavaScript, many log shippers).
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


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


def escape_control_characters(
    _logger: WrappedLogger, _method: str, event_dict: EventDict
) -> EventDict:
    """Console output: a value cannot start a new, forged line."""
    for key, value in event_dict.items():
        if isinstance(value, str) and _CONTROL_CHARACTERS.search(value) and key != "exception":
            event_dict[key] = value.encode("unicode_escape").decode("ascii")
    return event_dict


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
    try:
        line = orjson.dumps(obj, **kwargs)
    except orjson.JSONEncodeError:
        # A value orjson cannot write (an integer beyond 64 bits): the standard library's JSON
        # writes it, every non-ASCII character escaped, rather than the line being lost.
        return json.dumps(obj, default=kwargs.get("default", repr)).encode()
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
