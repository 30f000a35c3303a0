"""The Grafana side of monitoring/: the dashboard's panels and variables, and the exemplar links
the datasource provisions, read as Grafana reads them."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import yaml

from tests.support.stack import MONITORING

DASHBOARD = MONITORING / "grafana" / "dashboards" / "scene-packer.json"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
GRAFANA_VARIABLE = re.compile(r"\$\{([^}:]+)(?::([^}]*))?\}")


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def exemplar_destinations() -> dict[str, dict[str, str]]:
    """The datasource's exemplar links by label name, read as Grafana's provisioning reads
    them: `$$` is a literal `$`, any other `$` would expand an environment variable."""
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    destinations = {}
    for destination in datasource["jsonData"]["exemplarTraceIdDestinations"]:
        parts = destination["url"].split("$$")
        assert not any("$" in part for part in parts), destination["url"]
        destinations[destination["name"]] = {**destination, "url": "$".join(parts)}
    return destinations


def dashboard_variables() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {
        v["name"]: v["query"] for v in dashboard["templating"]["list"] if v["type"] == "constant"
    }


def log_search(value: str, variables: Mapping[str, str]) -> str:
    """An exemplar's link as Grafana builds it: one pass over the URL, `__value.raw`
    percent-encoded (Grafana's default for data links), `:raw` variables as they are."""

    def expand(match: re.Match[str]) -> str:
        name, format_ = match.group(1), match.group(2)
        if name == "__value.raw":
            return quote(value, safe="")
        assert format_ == "raw"
        return variables[name]

    url = exemplar_destinations()["request_id"]["url"]
    return GRAFANA_VARIABLE.sub(expand, url)
