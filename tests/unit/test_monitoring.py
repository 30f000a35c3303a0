"""monitoring/ against real Prometheus, Alertmanager and the running service."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

import yaml

from service.observability.exposition import exemplar_labels
from service.observability.families import VITAL_THRESHOLDS
from service.settings import Settings
from tests.support import ROOT
from tests.support.grafana import (
    DASHBOARD,
    DATASOURCES,
    GRAFANA_VARIABLE,
    dashboard_variables,
    exemplar_destinations,
    log_search,
    panels,
)
from tests.support.stack import (
    MONITORING,
)

PROMETHEUS_DIR = MONITORING / "prometheus"
# A variable in a Grafana data link: `${name}` or `${name:format}`.
# The monitoring pages of the documentation site (mkdocs.yml); alerts.md holds the runbooks.
DOCS = ROOT / "docs"
MONITORING_PAGES = ("monitoring.md", "alerts.md", "dashboards.md")
RUNBOOK_URL = '{{{{ or $externalLabels.runbook_base "docs/alerts.md" }}}}#{anchor}'


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "rules" / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _heading_ids(markdown: str) -> set[str]:
    """The ids MkDocs gives a page's headings: Python-Markdown's toc slugify. A repeated slug
    gets a `_1` suffix, so it is left out: a link to it would land on the first one."""
    markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    slugs = []
    for heading in re.findall(r"^#{1,6} (.+?)[ #]*$", markdown, re.MULTILINE):
        text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode("ascii")
        text = re.sub(r"[^\w\s-]", "", text).strip().lower()
        slugs.append(re.sub(r"[-\s]+", "-", text))
    return {slug for slug in slugs if slugs.count(slug) == 1}


def test_every_alert_is_documented_and_unit_tested() -> None:
    runbooks = (DOCS / "alerts.md").read_text()
    anchors = _heading_ids(runbooks)
    unit_tests = (PROMETHEUS_DIR / "tests" / "alerts_test.yml").read_text()
    for rule in _alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "none"}, name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        assert rule["annotations"]["runbook_url"] == RUNBOOK_URL.format(anchor=name.lower())
        assert f"## {name}\n" in runbooks, f"{name} has no section in docs/alerts.md"
        assert name.lower() in anchors, f"#{name.lower()} is no heading's id in docs/alerts.md"
        assert f"alertname: {name}" in unit_tests, f"{name} has no promtool unit test"
    p95 = [
        rule["labels"]["severity"] for rule in _alert_rules() if rule["alert"] == "HighLatencyP95"
    ]
    assert sorted(p95) == ["critical", "warning"]
    assert "histogram_quantile(0.95" in (PROMETHEUS_DIR / "rules" / "recording.yml").read_text()


def test_every_recording_rule_is_used() -> None:
    """A recorded series that no alert, panel, other rule or runbook reads is cost without use."""
    rules = yaml.safe_load((MONITORING / "prometheus/rules/recording.yml").read_text())
    recorded = [rule for group in rules["groups"] for rule in group["rules"] if "record" in rule]
    readers = (MONITORING / "prometheus/rules/alerts.yml").read_text()
    readers += (MONITORING / "grafana/dashboards/scene-packer.json").read_text()
    readers += "".join((DOCS / page).read_text() for page in MONITORING_PAGES)
    readers += " ".join(rule["expr"] for rule in recorded)
    unused = [rule["record"] for rule in recorded if readers.count(rule["record"]) == 0]
    assert not unused, unused


def test_resource_alerts_use_the_health_check_thresholds() -> None:
    """The disk alert fires where the health check starts to warn; the memory alert earlier, at
    its own setting (two facts: an early warning, then a degraded check)."""
    rules = yaml.safe_load((MONITORING / "prometheus/rules/alerts.yml").read_text())
    alerts = {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}
    defaults = Settings.model_fields
    disk_free = defaults["disk_warning_free_percent"].default / 100
    memory_used = defaults["memory_alert_percent"].default / 100
    assert memory_used < defaults["memory_warning_percent"].default / 100
    assert alerts["DiskSpaceLow"].endswith(f"(system_disk_free_ratio) < {disk_free:.2f}")
    assert alerts["MemoryHigh"].endswith(f"(system_memory_used_ratio) >= {memory_used:.2f}")


def test_vital_panels_draw_the_thresholds_the_service_rates_with() -> None:
    """Each vital's p75 panel draws its good and poor lines, and the good-share panel cuts at
    the good threshold, both from the one definition the receiver and the buckets use."""
    every_panel = panels(json.loads(DASHBOARD.read_text()))
    for name, thresholds in VITAL_THRESHOLDS.items():
        series = "frontend_cls_bucket" if name == "CLS" else f'metric="{name}"'
        (panel,) = [
            p for p in every_panel
            if p["targets"][0]["expr"].startswith("histogram_quantile(0.75")
            and series in p["targets"][0]["expr"]
        ]  # fmt: skip
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert tuple(step["value"] for step in steps[1:]) == thresholds, panel["title"]
        assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"
        (good,) = [
            t["expr"] for p in every_panel for t in p["targets"]
            if t.get("legendFormat") == name and "le=" in t["expr"]
        ]  # fmt: skip
        assert f'le="{thresholds[0]}"' in good and series.replace("_bucket", "") in good


def test_dashboard_is_plain_provisionable_json() -> None:
    text = DASHBOARD.read_text()
    dashboard = json.loads(text)
    assert dashboard["uid"] == "scene-packer-service"
    assert "__inputs" not in dashboard and "${DS_" not in text
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= set(variables)
    assert variables["datasource"]["current"]["value"] == "scene-packer-prometheus"
    provisioned = yaml.safe_load(DATASOURCES.read_text())
    assert provisioned["datasources"][0]["uid"] == "scene-packer-prometheus"
    for panel in panels(dashboard):
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            windows = re.findall(r"\[([^\]]+)\]", target["expr"])
            assert all(window == "$__rate_interval" for window in windows), target["expr"]


def test_exemplar_links_are_written_as_grafana_reads_them() -> None:
    """Grafana expands environment variables in provisioning files (only `$$` is a literal `$`),
    and expands a data link's variables once, percent-encoding them unless written `:raw`. The
    link is built only from Grafana's `__value.raw` and the dashboard's constant variables, which
    a provisioning `$` would have emptied, and only for a label every exemplar has: Grafana links
    a label an exemplar lacks too, with an empty value (a search for nothing)."""
    destinations = exemplar_destinations()
    untraced = exemplar_labels("r" * 16, None)
    assert untraced is not None
    assert set(destinations) == {name for name, _ in untraced} == {"request_id"}
    dashboard = json.loads(DASHBOARD.read_text())
    constants = {v["name"]: v for v in dashboard["templating"]["list"] if v["type"] == "constant"}
    for destination in destinations.values():
        assert "datasourceUid" not in destination  # an internal link sends `query`, not `expr`
        references = GRAFANA_VARIABLE.findall(destination["url"])
        assert ("__value.raw", "") in references
        for name, format_ in references:
            if name != "__value.raw":
                assert name in constants and format_ == "raw", (name, format_)
                assert constants[name]["hide"] == 2
    assert log_search("1a2b3c4d-request", dashboard_variables()) == (
        "https://logs.example.invalid/search?q=1a2b3c4d-request"
    )


def _seconds(duration: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)", duration).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def test_an_alertmanager_restart_gets_every_cause_back_before_a_symptom_is_sent() -> None:
    """Alertmanager forgets the alerts it held when it restarts; Prometheus sends each firing
    alert again within its resend delay plus one evaluation, each rule group on its own
    schedule. A symptom (HighErrorRate, ErrorBudgetBurn: other groups than the causes) back
    first would be sent before its cause could inhibit it, unless every route that carries
    symptoms waits longer than that (tests/system/test_monitoring.py shows both sides)."""
    run = (MONITORING / "run").read_text()
    (resend,) = re.findall(r"--rules\.alert\.resend-delay=(\w+)", run)
    evaluation = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["global"][
        "evaluation_interval"
    ]
    route = yaml.safe_load((MONITORING / "alertmanager" / "alertmanager.yml").read_text())["route"]
    symptom_routes = [
        r for r in route["routes"] if not any("Watchdog" in m or "Notifications" in m
                                              for m in r["matchers"])
    ]  # fmt: skip
    assert symptom_routes
    for symptom_route in symptom_routes:
        group_wait = _seconds(symptom_route.get("group_wait", route["group_wait"]))
        assert _seconds(resend) + _seconds(evaluation) < group_wait, symptom_route
