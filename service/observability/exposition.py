"""The Prometheus text format, written by us because aioprometheus does not escape label values.

A registry is first copied into a `Snapshot` (cheap, on the event loop, so no metric changes under
the renderer's feet), then rendered to text (CPU work, done in a thread by the caller). Snapshots
are also what several worker processes exchange and merge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import orjson
from aioprometheus.collectors import Counter, Gauge, Histogram, Registry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Kind = Literal["counter", "gauge", "histogram"]
Merge = Literal["sum", "max", "min"]
LabelKey = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class HistogramValue:
    bounds: tuple[float, ...]
    cumulative: list[float]
    count: float
    total: float


@dataclass(slots=True)
class Family:
    name: str
    kind: Kind
    help: str
    merge: Merge = "sum"
    samples: dict[LabelKey, float | HistogramValue] = field(default_factory=dict)


Snapshot = dict[str, Family]


def snapshot(registry: Registry, merge: dict[str, Merge] | None = None) -> Snapshot:
    """Copy every collector's current values; runs on the loop, so nothing changes meanwhile."""
    merge = merge or {}
    families: Snapshot = {}
    for collector in registry.get_all():
        kind = _kind(collector)
        family = Family(collector.name, kind, collector.doc, merge.get(collector.name, "sum"))
        for raw_key, value in list(collector.values.store.items()):
            labels = _decode_labels(raw_key)
            if kind == "histogram":
                bounds = tuple(value.buckets)
                family.samples[labels] = HistogramValue(
                    bounds, list(value.buckets.values()), value.observations, value.sum
                )
            else:
                family.samples[labels] = value
        families[collector.name] = family
    return families


def render(families: Snapshot) -> bytes:
    lines: list[str] = []
    for name in sorted(families):
        family = families[name]
        lines.append(f"# HELP {name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {name} {family.kind}")
        for labels in sorted(family.samples):
            value = family.samples[labels]
            if isinstance(value, HistogramValue):
                for bound, count in zip(value.bounds, value.cumulative, strict=True):
                    le = (("le", _format_bound(bound)),)
                    lines.append(f"{name}_bucket{_labels(labels + le)} {_number(count)}")
                lines.append(f"{name}_sum{_labels(labels)} {_number(value.total)}")
                lines.append(f"{name}_count{_labels(labels)} {_number(value.count)}")
            else:
                lines.append(f"{name}{_labels(labels)} {_number(value)}")
    lines.append("")
    return "\n".join(lines).encode()


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: LabelKey) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels) + "}"


def _format_bound(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(float(bound))


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


_decoded: dict[object, LabelKey] = {}


def _decode_labels(raw_key: object) -> LabelKey:
    cached = _decoded.get(raw_key)
    if cached is not None:
        return cached
    if isinstance(raw_key, bytes):
        labels: LabelKey = tuple(sorted((str(k), str(v)) for k, v in orjson.loads(raw_key).items()))
    else:  # aioprometheus's key for "no labels"
        labels = ()
    if len(_decoded) < 1_000_000:
        _decoded[raw_key] = labels
    return labels


def _kind(collector: object) -> Kind:
    if isinstance(collector, Counter):
        return "counter"
    if isinstance(collector, Histogram):
        return "histogram"
    if isinstance(collector, Gauge):
        return "gauge"
    raise TypeError(f"unsupported collector {collector!r}")
