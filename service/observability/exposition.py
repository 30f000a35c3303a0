"""The Prometheus text format and OpenMetrics, written by us because aioprometheus does not
escape label values and knows neither OpenMetrics nor exemplars.

A registry is first copied into a `Snapshot` (cheap, on the event loop, so no metric changes under
the renderer's feet), then rendered to text (CPU work, done in a thread by the caller). Snapshots
are also what several worker processes exchange and merge.

Exemplars link a sample to one request that landed in it (its `request_id`, and `trace_id` when
the request carried one): one per histogram bucket and per chosen counter series, the latest,
also when several workers' snapshots merge. Only OpenMetrics shows them; the classic text format
is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import orjson
from aioprometheus.collectors import Counter, Gauge, Histogram, Registry

from service.observability.collectors import stored
from service.observability.families import Kind, Merge

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# OpenMetrics: an exemplar's label names and values together, in characters.
EXEMPLAR_LABELS_LIMIT = 128

LabelKey = tuple[tuple[str, str], ...]
# An exemplar: its labels, the observed value, and when (seconds since the epoch).
Exemplar = tuple[LabelKey, float, float]
# As recorded per request, cheaply: request id, trace id, value, time; labels are made on scrape.
RawExemplar = tuple[str, str | None, float, float]


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
    # By the sample's full label set: a counter's labels, or a bucket's labels with its `le`.
    exemplars: dict[LabelKey, Exemplar] = field(default_factory=dict)


Snapshot = dict[str, Family]


def snapshot(
    registry: Registry,
    gauge_merge: dict[str, Merge],
    counter_exemplars: dict[str, dict[LabelKey, RawExemplar]] | None = None,
) -> Snapshot:
    """Copy every collector's current values; runs on the loop, so nothing changes meanwhile.

    Every gauge needs its merge mode: summing a gauge that each worker reports whole (a global
    count) would multiply it by the number of workers, so there is no default. A histogram value
    that keeps `exemplars` (one per bucket, metrics.BucketCounts) has them copied too."""
    families: Snapshot = {}
    for collector in registry.get_all():
        kind = _kind(collector)
        if kind == "gauge" and collector.name not in gauge_merge:
            raise ValueError(f"gauge {collector.name} was declared without a merge mode")
        family = Family(collector.name, kind, collector.doc, gauge_merge.get(collector.name, "sum"))
        for raw_key, value in stored(collector):
            labels = _decode_labels(raw_key)
            if kind == "histogram":
                bounds = tuple(value.buckets)
                family.samples[labels] = HistogramValue(
                    bounds, list(value.buckets.values()), value.observations, value.sum
                )
                for bound, raw in zip(bounds, getattr(value, "exemplars", ()), strict=False):
                    example = _from_raw(raw)
                    if example is not None:
                        family.exemplars[(*labels, ("le", _format_bound(bound)))] = example
            else:
                family.samples[labels] = value
        for labels, raw in (counter_exemplars or {}).get(collector.name, {}).items():
            example = _from_raw(raw)
            if example is not None:
                family.exemplars[labels] = example
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
            for labels, exemplar in family.exemplars.items():
                seen = target.exemplars.get(labels)
                if seen is None or exemplar[2] > seen[2]:  # the latest, whichever worker
                    target.exemplars[labels] = exemplar
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
                "exemplars": [
                    [list(labels), list(exemplar[0]), exemplar[1], exemplar[2]]
                    for labels, exemplar in family.exemplars.items()
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
            for labels, exemplar_labels, value, at in body.get("exemplars", ()):
                key = tuple((str(k), str(v)) for k, v in labels)
                example = tuple((str(k), str(v)) for k, v in exemplar_labels)
                family.exemplars[key] = (example, float(value), float(at))
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


def render_openmetrics(families: Snapshot) -> bytes:
    """OpenMetrics 1.0.0: counters named without `_total` in their metadata, exemplars after
    their samples, `# EOF` last."""
    lines: list[str] = []
    for name in sorted(families):
        family = families[name]
        base = name.removesuffix("_total") if family.kind == "counter" else name
        lines.append(f"# TYPE {base} {family.kind}")
        lines.append(f"# HELP {base} {_escape_openmetrics_help(family.help)}")
        exemplars = family.exemplars
        for labels in sorted(family.samples):
            value = family.samples[labels]
            if isinstance(value, HistogramValue):
                for bound, count in zip(value.bounds, value.cumulative, strict=True):
                    bucket = (*labels, ("le", _format_bound(bound)))
                    line = f"{name}_bucket{_labels(bucket)} {_number(count)}"
                    lines.append(line + _exemplar(exemplars.get(bucket)))
                lines.append(f"{name}_count{_labels(labels)} {_number(value.count)}")
                lines.append(f"{name}_sum{_labels(labels)} {_number(value.total)}")
            else:
                sample = f"{base}_total" if family.kind == "counter" else name
                line = f"{sample}{_labels(labels)} {_number(value)}"
                lines.append(line + (_exemplar(exemplars.get(labels)) if exemplars else ""))
    lines.append("# EOF")
    lines.append("")
    return "\n".join(lines).encode()


def exemplar_labels(request_id: str, trace_id: str | None) -> LabelKey | None:
    """An exemplar's labels within OpenMetrics' 128-character limit: the trace id (which links
    to a trace) is kept first, an over-long request id is left out; None if nothing fits."""
    labels: LabelKey = (("trace_id", trace_id),) if trace_id is not None else ()
    size = sum(len(k) + len(v) for k, v in labels)
    if size + len("request_id") + len(request_id) <= EXEMPLAR_LABELS_LIMIT:
        labels = (("request_id", request_id), *labels)
    return labels or None


def _from_raw(raw: RawExemplar | None) -> Exemplar | None:
    """An exemplar as recorded per request, with its labels made."""
    if raw is None:
        return None
    request_id, trace_id, value, at = raw
    labels = exemplar_labels(request_id, trace_id)
    return None if labels is None else (labels, value, at)


def _exemplar(exemplar: Exemplar | None) -> str:
    if exemplar is None:
        return ""
    labels, value, at = exemplar
    return f" # {_labels(labels) or '{}'} {_number(value)} {at:.3f}"


def _escape_openmetrics_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


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
