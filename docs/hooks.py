"""The documentation site's generated parts (an MkDocs hook, `mkdocs.yml`).

A page asks for one with a line `<!-- generated: NAME -->`; the hook puts the part there when the
site is built, from the code itself, so the page cannot drift from it:

- `settings`: every field of `Settings` (service/settings.py), its default and its description;
- `api`: every operation of the OpenAPI document, by tag, with its summary and answers;
- `log-events`: every event the service logs, read from its source with `ast`: level, the fields
  each call adds, the module.

tests/unit/test_docs.py calls these functions too.
"""

from __future__ import annotations

import ast
import logging
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return _MARKER.sub(lambda match: _PARTS[match.group(1)](), markdown)


# ---- settings


def settings_table() -> str:
    from service.settings import documented

    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    rows += [
        f"| `{name}` | {default} | {_cell(meaning)} |" for name, default, meaning in documented()
    ]
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


# ---- the HTTP API


def openapi_document() -> dict[str, Any]:
    """The document `GET /openapi.json` answers, from an app made with the default settings."""
    from service.app import create_app
    from service.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            environment="development", data_dir=Path(tmp), database_url="", redis_url=""
        )
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            app = create_app(settings)  # it takes over logging, as the service's entry point
        finally:
            root.handlers[:], root.level = handlers, level  # MkDocs' own, back
        document: dict[str, Any] = app.extensions["QUART_SCHEMA"].openapi_provider.schema()
        return document


def api_reference() -> str:
    document = openapi_document()
    by_tag: dict[str, list[str]] = defaultdict(list)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            answers = ", ".join(sorted(str(status) for status in operation.get("responses", {})))
            line = (
                f"| `{method.upper()} {path}` | {_cell(operation.get('summary', ''))} | {answers} |"
            )
            by_tag[(operation.get("tags") or ["untagged"])[0]].append(line)
    parts = []
    for tag in document.get("tags", []):
        parts.append(f"### {tag['name'].capitalize()}\n\n{tag.get('description', '')}\n")
        parts.append("| Operation | Summary | Answers |\n| --- | --- | --- |")
        parts.append("\n".join(by_tag.pop(tag["name"], [])) + "\n")
    assert not by_tag, f"operations under undeclared tags: {sorted(by_tag)}"
    return "\n".join(parts)


# ---- log events


@dataclass
class LogEvent:
    levels: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)


_LEVELS = {"debug", "info", "warning", "error", "critical", "exception"}


def log_events(package: Path = ROOT / "service") -> dict[str, LogEvent]:
    """Every `<logger>.<level>("event", field=…)` and `<logger>.log(LEVEL, "event", …)` call."""
    events: dict[str, LogEvent] = defaultdict(LogEvent)
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            call = _log_call(node)
            if call is None:
                continue
            name, level, keywords = call
            event = events[name]
            event.levels.add(level)
            event.modules.add(path.relative_to(ROOT).as_posix())
            event.fields.update(k.arg for k in keywords if k.arg and k.arg != "exc_info")
            if any(k.arg is None for k in keywords):  # `**values`: named on the event's page
                event.fields.add("…")
            if any(k.arg == "exc_info" for k in keywords) or _method(node) == "exception":
                event.fields.add("exception")  # the traceback, rendered and redacted
    return dict(events)


def _log_call(node: ast.AST) -> tuple[str, str, list[ast.keyword]] | None:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return None
    receiver = ast.unparse(node.func.value).lower()
    if "log" not in receiver:
        return None
    method, args = node.func.attr, node.args
    if method == "log" and len(args) >= 2:  # logger.log(INFO if … else ERROR, "event")
        choices = [args[0].body, args[0].orelse] if isinstance(args[0], ast.IfExp) else [args[0]]
        level = " or ".join(c.attr for c in choices if isinstance(c, ast.Attribute))
        args = args[1:]
    elif method in _LEVELS and args:
        level = "error" if method == "exception" else method
    else:
        return None
    if not (isinstance(args[0], ast.Constant) and isinstance(args[0].value, str)):
        return None
    return args[0].value, level.lower(), node.keywords


def _method(node: ast.AST) -> str:
    return (
        node.func.attr
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        else ""
    )


def log_events_table() -> str:
    rows = ["| Event | Level | Fields it adds | Written by |", "| --- | --- | --- | --- |"]
    for name, event in sorted(log_events().items()):
        fields = ", ".join(f if f == "…" else f"`{f}`" for f in sorted(event.fields)) or "—"
        modules = ", ".join(f"`{m}`" for m in sorted(event.modules))
        rows.append(f"| `{name}` | {' / '.join(sorted(event.levels))} | {fields} | {modules} |")
    return "\n".join(rows) + "\n"


_PARTS = {"settings": settings_table, "api": api_reference, "log-events": log_events_table}
