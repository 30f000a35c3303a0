"""The documentation cannot drift from the code: the generated parts cover everything, the
hand-written tables name every endpoint, metric and log event, and README stays a front door."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from service.app import create_app
from service.auth import sessions
from service.observability.families import FAMILIES
from service.settings import Settings, load_settings
from tests.support import ROOT

DOCS = ROOT / "docs"


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


hooks = _hooks()


def _page(name: str) -> str:
    return (DOCS / name).read_text()


def _rows(text: str) -> list[list[str]]:
    """The cells of every table row that starts with a code span."""
    return [
        [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        for line in text.splitlines()
        if line.startswith("| `")
    ]


def test_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 10 * 1024
    for page in re.findall(r"`docs/([a-z-]+\.md)`", readme):
        assert (DOCS / page).is_file(), f"README names docs/{page}, which does not exist"


def test_every_setting_documents_itself() -> None:
    """`docs/configuration.md` is generated from these descriptions."""
    undocumented = [n.upper() for n, f in Settings.model_fields.items() if not f.description]
    assert not undocumented, f"settings without a description: {undocumented}"
    table = hooks.settings_table()
    for name, field in Settings.model_fields.items():
        (row,) = [row for row in _rows(table) if row[0] == f"`{name.upper()}`"]
        default = field.get_default(call_default_factory=True)
        if isinstance(default, int | float) and not isinstance(default, bool):
            assert row[1] == f"`{default:g}`", row
    assert "<!-- generated: settings -->" in _page("configuration.md")


def test_every_endpoint_is_in_the_api_page(tmp_path: Path) -> None:
    documented = "\n".join(row[0] for row in _rows(_page("api.md")))
    app = create_app(load_settings(data_dir=tmp_path, database_url="", redis_url=""))
    missing = [
        rule.rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and not re.search(rf"[ `|]{re.escape(rule.rule)}`", documented)
    ]
    assert not missing, f"endpoints missing from docs/api.md: {missing}"


def test_every_operation_has_a_resource_tag_and_a_whole_summary() -> None:
    document = hooks.openapi_document()
    declared = {tag["name"] for tag in document["tags"]}
    wrong = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            summary = operation.get("summary", "")
            if not (summary.endswith(".") and len(summary) <= 80 and summary[:1].isupper()):
                wrong.append(f"{method.upper()} {path}: summary {summary!r}")
            if len(operation.get("tags", [])) != 1 or operation["tags"][0] not in declared:
                wrong.append(f"{method.upper()} {path}: tags {operation.get('tags')}")
    assert not wrong, wrong
    assert "<!-- generated: api -->" in _page("api.md")


def test_every_metric_is_in_the_metrics_page_with_its_kind_and_labels() -> None:
    """From the one declaration (service/observability/families.py)."""
    rows = _rows(_page("metrics.md"))
    wrong = []
    for family in FAMILIES:
        row = next((row for row in rows if f"`{family.name}`" in row[0]), None)
        if row is None:
            wrong.append(f"{family.name}: no row")
        elif family.kind not in row[1]:
            wrong.append(f"{family.name}: not a {family.kind} in {row[1]!r}")
        else:
            wrong += [
                f"{family.name}: label {label} not in {row[2]!r}"
                for label in family.labels
                if f"`{label}`" not in row[2]
            ]
    assert not wrong, wrong


def test_every_log_event_is_explained_on_the_logs_page() -> None:
    """The page's table is generated from the code; the meaning of each event is written by
    hand, and this finds the event the prose forgot."""
    events = hooks.log_events()
    assert {"request_finished", "login_failed", "server_started"} <= set(events)
    assert events["request_finished"].fields >= {"status", "duration_ms", "route"}
    prose = _page("logs.md")
    missing = [name for name in events if f"`{name}`" not in prose]
    assert not missing, f"log events without a word in docs/logs.md: {missing}"
    assert "<!-- generated: log-events -->" in prose


def test_the_session_constants_the_docs_name_have_the_values_they_give() -> None:
    text = " ".join(_page("sign-in.md").split())
    assert (sessions._TOMBSTONE_SECONDS, sessions.PURGE_INTERVAL_SECONDS) == (300, 600)
    for phrase in (
        f"`SESSION_CACHE_SECONDS` ({sessions.SESSION_CACHE_SECONDS} s)",
        "`_TOMBSTONE_SECONDS`, 5 minutes",
        "`PURGE_INTERVAL_SECONDS` (10 minutes)",
        "`PURGE_BATCH` rows",
        "`SESSION_COOKIE_SALT`",
    ):
        assert phrase in text, f"docs/sign-in.md no longer says {phrase!r}"
    metrics = " ".join(_page("metrics.md").split())
    assert f"`COUNT_INTERVAL_SECONDS` ({sessions.COUNT_INTERVAL_SECONDS} s)" in metrics


def test_every_page_is_in_the_site() -> None:
    site = (ROOT / "mkdocs.yml").read_text()
    pages = {path.name for path in DOCS.glob("*.md")}
    listed = set(re.findall(r": ([a-z-]+\.md)$", site, re.MULTILINE))
    assert pages == listed
