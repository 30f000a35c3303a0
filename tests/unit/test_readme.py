"""README's tables mirror the code: every setting, endpoint and metric is documented."""

from __future__ import annotations

import re
from pathlib import Path

from service.app import create_app
from service.auth import sessions
from service.observability.families import FAMILIES
from service.settings import Settings, load_settings
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.MULTILINE | re.DOTALL)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def _table_cells(section: str) -> str:
    """The first column of every table row in a section."""
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return "\n".join(_CELL_BORDER.split(row)[1] for row in rows)


_CELL_BORDER = re.compile(r"(?<!\\)\|")  # a pipe, unless escaped inside a cell


def test_every_setting_is_in_the_settings_table() -> None:
    documented = _table_cells(_section("Settings"))
    missing = [
        name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in documented
    ]
    assert not missing, f"settings missing from README: {missing}"


def test_the_settings_table_gives_each_plain_default() -> None:
    """Numbers, flags and words: the default column says what Settings says."""
    rows = [line for line in _section("Settings").splitlines() if line.startswith("| `")]
    wrong = []
    for name, field in Settings.model_fields.items():
        default = field.default
        if default is None or not isinstance(default, int | float | str):
            continue
        if isinstance(default, bool):
            text = "true" if default else "false"
        else:
            text = f"{default:g}" if isinstance(default, float) else str(default)
        (row,) = [row for row in rows if f"`{name.upper()}`" in _CELL_BORDER.split(row)[1]]
        if f"`{text}`" not in _CELL_BORDER.split(row)[2]:
            wrong.append(f"{name.upper()}: README does not say `{text}`")
    assert not wrong, wrong


def test_every_endpoint_is_in_the_endpoints_table(tmp_path: Path) -> None:
    documented = _table_cells(_section("Endpoints"))
    app = create_app(load_settings(data_dir=tmp_path, database_url="", redis_url=""))
    missing = [
        rule.rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and not re.search(rf"[ `|]{re.escape(rule.rule)}`", documented)
    ]
    assert not missing, f"endpoints missing from README: {missing}"


def test_every_metric_is_in_the_metrics_table_with_its_kind_and_labels() -> None:
    """From the one declaration (service/observability/families.py): each family's row names
    it, gives its kind, and every label it declares."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in _section("Metrics").splitlines()
        if line.startswith("| `")
    ]
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


def test_the_session_constants_readme_names_have_the_values_it_gives() -> None:
    # README writes these two in minutes.
    assert (sessions._TOMBSTONE_SECONDS, sessions.PURGE_INTERVAL_SECONDS) == (300, 600)
    for text in (
        f"`SESSION_CACHE_SECONDS` ({sessions.SESSION_CACHE_SECONDS} s)",
        f"`COUNT_INTERVAL_SECONDS` ({sessions.COUNT_INTERVAL_SECONDS} s)",
        "`_TOMBSTONE_SECONDS`, 5 minutes",
        "`PURGE_INTERVAL_SECONDS` (10 minutes)",
        "`PURGE_BATCH` rows",
        "`SESSION_COOKIE_SALT`",
    ):
        assert text in " ".join(README.split()), f"README no longer says {text!r}"
