"""Pictures of the dashboard's rows, drawn from a real Prometheus: each panel's queries as Grafana
sends them, over the last minutes, as SVG in Grafana's grid (24 columns).

No Grafana is needed (Debian does not package it): the layout, the titles, the units and the
legends come from monitoring/grafana/dashboards/scene-packer.json, the values from Prometheus.
`docs/dashboards.md` shows them; tests/system/test_monitoring.py draws them on every run and,
with UPDATE_DASHBOARD_PICTURES=1, writes them to docs/images/dashboards/.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from html import escape
from typing import Any

import httpx

COLUMN_PX, ROW_PX = 50, 30
COLOURS = ("#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0")
MAX_SERIES = 8


@dataclass
class Row:
    title: str
    panels: list[dict[str, Any]]


def rows(dashboard: dict[str, Any]) -> list[Row]:
    """The dashboard's rows, each with the panels under it (Grafana's flat list, split)."""
    found: list[Row] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.append(Row(panel["title"], []))
        elif found:
            found[-1].panels.append(panel)
    return found


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def grafana_query(expr: str, job: str) -> str:
    """A panel's query as Grafana sends it, for one job and every instance."""
    return expr.replace("$__rate_interval", "30s").replace("$instance", ".*").replace("$job", job)


def render_row(row: Row, prometheus: str, job: str, minutes: float) -> str:
    """One row as an SVG document."""
    top = min(p["gridPos"]["y"] for p in row.panels)
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in row.panels)
    width, height = 24 * COLUMN_PX, (bottom - top) * ROW_PX + 34
    end = time.time()
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="#f4f5f5"/>',
        f'<text x="8" y="22" font-size="15" font-weight="bold">{escape(row.title)}</text>',
    ]
    with httpx.Client(base_url=prometheus, timeout=30) as client:
        for panel in row.panels:
            grid = panel["gridPos"]
            box = (
                grid["x"] * COLUMN_PX + 4,
                (grid["y"] - top) * ROW_PX + 34,
                grid["w"] * COLUMN_PX - 8,
                grid["h"] * ROW_PX - 8,
            )
            draw = _stat if panel["type"] == "stat" else _timeseries
            parts.append(draw(panel, box, client, job, end - minutes * 60, end))
    parts.append("</svg>")
    return "\n".join(parts)


def _frame(panel: dict[str, Any], box: tuple[float, float, float, float]) -> str:
    x, y, w, h = box
    return (
        f'<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="#fff" stroke="#d8d9da"/>'
        f'<text x="{x + 8}" y="{y + 16}" font-weight="bold">{escape(panel["title"])}</text>'
    )


def _unit(panel: dict[str, Any]) -> str:
    return str(panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short"))


def _stat(
    panel: dict[str, Any], box: tuple[float, float, float, float], client: httpx.Client,
    job: str, _start: float, end: float,
) -> str:  # fmt: skip
    x, y, w, h = box
    (target,) = panel["targets"]
    answer = _query(client, "/api/v1/query", query=grafana_query(target["expr"], job), time=end)
    text = format_value(float(answer[0]["value"][1]), _unit(panel)) if answer else "No data"
    return _frame(panel, box) + (
        f'<text x="{x + w / 2}" y="{y + h / 2 + 14}" font-size="32" text-anchor="middle" '
        f'fill="#3274d9">{escape(text)}</text>'
    )


def _timeseries(
    panel: dict[str, Any], box: tuple[float, float, float, float], client: httpx.Client,
    job: str, start: float, end: float,
) -> str:  # fmt: skip
    x, y, w, h = box
    step = max(1.0, (end - start) / 120)
    series: list[tuple[str, list[tuple[float, float]]]] = []
    for target in panel["targets"]:
        expr = grafana_query(target["expr"], job)
        for result in _query(
            client, "/api/v1/query_range", query=expr, start=start, end=end, step=step
        ):
            points = [(float(t), float(v)) for t, v in result["values"] if _finite(v)]
            if points:
                series.append((_legend(target.get("legendFormat", ""), result["metric"]), points))
    parts = [_frame(panel, box)]
    if not series:
        parts.append(f'<text x="{x + w / 2}" y="{y + h / 2}" text-anchor="middle">No data</text>')
        return "".join(parts)
    # Grafana draws them all; a picture keeps the ones that say most (the highest peaks).
    series = sorted(series, key=lambda item: -max(v for _, v in item[1]))[:MAX_SERIES]
    values = [v for _, points in series for _, v in points]
    low, high = min(0.0, min(values)), max(values)
    high = high if high > low else low + 1
    plot_x, plot_y, plot_w = x + 58, y + 26, w - 68
    plot_h = h - 26 - 18 - 14 * ((len(series) + 2) // 3)
    for fraction in (0.0, 0.5, 1.0):
        tick_y = plot_y + plot_h * (1 - fraction)
        label = format_value(low + (high - low) * fraction, _unit(panel))
        parts.append(
            f'<line x1="{plot_x}" y1="{tick_y:.1f}" x2="{plot_x + plot_w}" y2="{tick_y:.1f}" '
            f'stroke="#e9e9e9"/><text x="{plot_x - 4}" y="{tick_y + 4:.1f}" text-anchor="end" '
            f'fill="#555">{escape(label)}</text>'
        )
    fits = max(8, int(((w - 16) / 3 - 16) / 6.2))  # characters of a legend's column
    for index, (name, points) in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        path = " ".join(
            f"{plot_x + plot_w * (t - start) / (end - start):.1f},"
            f"{plot_y + plot_h * (1 - (v - low) / (high - low)):.1f}"
            for t, v in points
        )
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
        )
        legend_x = x + 8 + (index % 3) * (w - 16) / 3
        legend_y = plot_y + plot_h + 18 + 14 * (index // 3)
        label = escape(_cut(name, fits))
        parts.append(
            f'<rect x="{legend_x}" y="{legend_y - 8}" width="10" height="3" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="{legend_y - 3}" fill="#333">{label}</text>'
        )
    return "".join(parts)


def _cut(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def _query(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    answer = client.get(path, params=params)
    answer.raise_for_status()
    result: list[dict[str, Any]] = answer.json()["data"]["result"]
    return result


def _finite(value: str) -> bool:
    return value not in ("NaN", "+Inf", "-Inf")


def _legend(template: str, labels: dict[str, str]) -> str:
    if not template:
        shown = {k: v for k, v in labels.items() if k not in ("job", "instance", "__name__")}
        return ", ".join(f"{k}={v}" for k, v in shown.items()) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def format_value(value: float, unit: str) -> str:
    """As Grafana writes the units this dashboard uses."""
    if unit == "percentunit":
        percent = value * 100
        return f"{percent:,.0f} %" if abs(percent) >= 1000 else f"{percent:.3g} %"
    if unit == "s":
        return f"{value * 1000:.3g} ms" if abs(value) < 1 else f"{value:.3g} s"
    if unit == "bytes":
        return f"{value / 2**20:.3g} MiB"
    suffix = {"reqps": " req/s", "ops": " /s"}.get(unit, "")
    if abs(value) >= 1000:
        return f"{value / 1000:.3g}k{suffix}"
    return f"{value:.3g}{suffix}"
