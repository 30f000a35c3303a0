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


def snapshot(registry: Registry, gauge_merge: dict[str, Merge]) -> Snapshot:
    """Copy every collector's current values; runs on the loop, so nothing changes meanwhile.

    Every gauge needs its merge mode: summing a gauge that each worker reports whole (a global
    count) would multiply it by the number of workers, so there is no default."""
    families: Snapshot = {}
    for collector in registry.get_all():
        kind = _kind(collector)
        if kind == "gauge" and collector.name not in gauge_merge:
            raise ValueError(f"gauge {collector.name} was declared without a merge mode")
        family = Family(collector.name, kind, collector.doc, gauge_merge.get(collector.name, "sum"))
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


def merge(parts: list[Snapshot], *, gauges: bool = True) -> Snapshot:
    """Combine several processes' snapshots: counters and histograms are summed, each gauge by
    its family's `merge` mode. `gauges=False` keeps only what outlives a process (the archive)."""
    merged: Snapshot = {}
    for part in parts:
        for name, family in part.items():
            if family.kind == "gauge" and not gauges:
                continue
            target = merged.get(name)
            if target is None:
                target = merged[name] = Family(name, family.kind, family.help, family.merge)
            for labels, value in family.samples.items():
                current = target.samples.get(labels)
                target.samples[labels] = (
                    _copy(value) if current is None else _combine(current, value, family)
                )
    return merged


def to_json(families: Snapshot) -> bytes:
    return orjson.dumps(
        {
            name: {
                "kind": family.kind,
                "help": family.help,
                "merge": family.merge,
                "samples": [
                    [list(labels), _value_to_json(value)]
                    for labels, value in family.samples.items()
                ],
            }
            for name, family in families.items()
        }
    )


def from_json(data: bytes) -> Snapshot:
    """Parse a snapshot written by `to_json`; raises ValueError on anything malformed."""
    try:
        raw = orjson.loads(data)
        families: Snapshot = {}
        for name, body in raw.items():
            kind, merge_mode = body["kind"], body["merge"]
            if kind not in ("counter", "gauge", "histogram") or merge_mode not in (
                "sum",
                "max",
                "min",
            ):
                raise ValueError(f"bad family {name}")
            family = Family(name, kind, str(body["help"]), merge_mode)
            for labels, value in body["samples"]:
                key = tuple((str(k), str(v)) for k, v in labels)
                family.samples[key] = _value_from_json(value, kind)
            families[name] = family
        return families
    except (KeyError, TypeError, IndexError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"malformed snapshot: {exc}") from None


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


def _copy(value: float | HistogramValue) -> float | HistogramValue:
    if isinstance(value, HistogramValue):
        return HistogramValue(value.bounds, list(value.cumulative), value.count, value.total)
    return value


def _combine(
    current: float | HistogramValue, value: float | HistogramValue, family: Family
) -> float | HistogramValue:
    if isinstance(current, HistogramValue) and isinstance(value, HistogramValue):
        if current.bounds != value.bounds:
            raise ValueError(f"{family.name}: bucket bounds differ between processes")
        return HistogramValue(
            current.bounds,
            [a + b for a, b in zip(current.cumulative, value.cumulative, strict=True)],
            current.count + value.count,
            current.total + value.total,
        )
    assert not isinstance(current, HistogramValue) and not isinstance(value, HistogramValue)
    if family.kind == "gauge" and family.merge == "max":
        return max(current, value)
    if family.kind == "gauge" and family.merge == "min":
        return min(current, value)
    return current + value


def _value_to_json(value: float | HistogramValue) -> object:
    if isinstance(value, HistogramValue):
        bounds = ["+Inf" if b == math.inf else b for b in value.bounds]
        return {"bounds": bounds, "cumulative": value.cumulative, "count": value.count,
                "sum": value.total}  # fmt: skip
    return value


def _value_from_json(value: object, kind: Kind) -> float | HistogramValue:
    if kind == "histogram":
        if not isinstance(value, dict):
            raise TypeError("histogram sample is not an object")
        bounds = tuple(math.inf if b == "+Inf" else float(b) for b in value["bounds"])
        cumulative = [float(c) for c in value["cumulative"]]
        if len(bounds) != len(cumulative):
            raise TypeError("histogram buckets and counts differ in length")
        return HistogramValue(bounds, cumulative, float(value["count"]), float(value["sum"]))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("sample value is not a number")
    return value


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
